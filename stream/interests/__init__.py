"""Interests: the ANN index of items, the interests role and retrieval (PinnerSage)."""
