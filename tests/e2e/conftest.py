"""Fixtures of the end-to-end tests: `served` (see rig.py)."""

from rig import served  # noqa: F401  (a fixture, found by pytest through this module)
