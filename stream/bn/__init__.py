"""Online BatchNorm statistics: the BN role, and the ``bn_stats`` versions scorers install."""
