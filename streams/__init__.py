"""The Faust stream app: validate, apply to the table, write the Redis view, emit changes."""
