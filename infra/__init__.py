"""Local infrastructure helpers: real Kafka (KRaft) and Redis processes on loopback, no Docker."""
