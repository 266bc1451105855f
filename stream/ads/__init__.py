"""Ad slots: the policy on the serving path, its learner role, and offline evaluation."""
