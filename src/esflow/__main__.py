"""`python -m esflow` runs the CLI."""

from esflow.cli import main

main()
