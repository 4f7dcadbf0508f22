"""Errors an operator can fix: each one is shown as a single line, never a traceback."""


class StartupError(Exception):
    """Something in the command line, configuration, app or environment keeps the master
    from starting. The message is the whole story: the CLI prints it and exits 1."""
