"""The command line: argv -> engine -> rendered output and an exit code.

The only layer that prints, and the only one that turns on-disk bytes into ``str``.
"""
