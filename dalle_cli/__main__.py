"""`python -m dalle_cli` runs the `dalle` command line."""

from .cli import main

main()
