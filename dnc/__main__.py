"""`python -m dnc` is the `dnc` command."""

from dnc.entry import main

main()
