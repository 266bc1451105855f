"""The ML parts of streamrank: the world, the ranker, interests, bandits and drift monitors."""
