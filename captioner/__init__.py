"""CNN-encoder → RNN-decoder image captioning: the logic behind the DVC stages in ``stages/``."""
