"""The benchmark's app plus a resident ballast per worker, for scripts/bench/surge.py.

A real app's imports (Django, pandas, a model) make each worker tens of MB; the hello app
alone would hide what doubling the workers costs. The ballast is written, not only
allocated, so its pages are resident.
"""

from __future__ import annotations

import os

from apps import app  # noqa: F401  (served as surgeapp:app)

BALLAST = b"x" * (int(os.environ.get("SURGE_BALLAST_MB", "40")) * 1024 * 1024)
