"""`python -m hotswap` is the same command as `hotswap`."""

from .cli import main

main()
