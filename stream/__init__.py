"""The streamrank runtime: Faust worker, feature store, simulator and CLI."""
