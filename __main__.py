"""`python -m vqgen ...`: the same commands as `vqgen ...` and `python cli.py ...`."""

from vqgen.cli import main

main()
