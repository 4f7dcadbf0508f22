"""Small statistics with no dependencies: medians and nearest-rank percentiles.

Nearest-rank (not interpolated) so a reported p99 is always a latency some request
really had.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of unsorted `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def ms(seconds: float | None, digits: int = 1) -> str:
    """Seconds as milliseconds for a table cell; '–' when unknown."""
    return "–" if seconds is None else f"{seconds * 1000:.{digits}f}"


def secs(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f}"


def ratio(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}×"
