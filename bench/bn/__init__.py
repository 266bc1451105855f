"""``streamrank bench bn``: online BatchNorm statistics (AdaBN) against covariate shifts of the
synthetic world, scored against the world's true probabilities."""
