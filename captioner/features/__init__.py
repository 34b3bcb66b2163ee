"""Image features: the encoders, the images they read and the features file the pipeline caches."""
