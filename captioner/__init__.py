"""CNN-encoder → RNN-decoder image captioning: the logic behind the DVC stages in ``stages/``."""

from captioner import kernels
from captioner.console import quiet_tensorflow

quiet_tensorflow()  # first, before any module here imports TensorFlow
kernels.pin()  # the same bytes on every CPU


class CaptionerError(Exception):
    """A problem with the user's input, params or files, reported as one line (``error: …``) by every stage
    and the caption command, never as a traceback."""
