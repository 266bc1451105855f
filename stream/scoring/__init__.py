"""The serving path: ranking requests in, results out, over Kafka and POST /rank."""
