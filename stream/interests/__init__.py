"""The interests role (PinnerSage medoids per user), the item index and retrieval."""
