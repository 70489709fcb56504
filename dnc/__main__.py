"""`python -m dnc` is the `dnc` command."""

from dnc.cli import main

main()
