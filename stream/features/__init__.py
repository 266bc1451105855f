"""The features role: events and items into the online store, and the read side of it."""
