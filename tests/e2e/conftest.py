"""Fixtures of the end-to-end tests: `served` (see rig.py), `udp` (see udpsink.py)."""

from rig import served  # noqa: F401  (a fixture, found by pytest through this module)
from udpsink import udp  # noqa: F401  (a UDP socket for syslog and statsd tests)
