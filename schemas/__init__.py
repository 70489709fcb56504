"""Contracts of the do-not-call pipeline: events, state, topics, the Redis view layout, settings."""
