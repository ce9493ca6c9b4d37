"""``python3 -m cipherdump``: the same as the ``cipherdump`` command."""

from cipherdump.cli.main import main

main()
