"""Ad slots: the bandit's glue on the serving path, its learner, and offline evaluation."""
