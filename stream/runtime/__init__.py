"""The backbone every role shares: supervised consumers, producers, health, versioned state."""
