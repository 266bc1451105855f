"""The drift role: monitors, alerts, subscriptions and their delivery."""
