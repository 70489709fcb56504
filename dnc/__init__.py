"""Composition root of the `dnc` command."""
