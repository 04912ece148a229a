"""`python -m verbovision.cli`, as before the cli became a package (`python -m verbovision` is the same)."""

from . import program

program()
