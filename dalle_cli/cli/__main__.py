"""`python -m dalle_cli.cli` runs the `dalle` command line, as `python -m dalle_cli` does."""

from . import main

main()
