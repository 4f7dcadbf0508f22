"""Health probe used by the upgrade orchestrator between "new master ready" and WINCH.

It lives apart from the orchestrator so that the one place that speaks HTTP is small
and uses only the standard library: the orchestrator runs on deploy hosts where we
cannot count on third-party HTTP clients being installed.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request

# One probe never waits longer than this, so a hung server cannot eat the whole step.
PROBE_TIMEOUT = 5.0
# Retrying faster than this only adds load on a server that is still warming up.
MIN_RETRY_INTERVAL = 0.05


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Return None when `url` answers 2xx, else a one-line reason.

    A reason rather than an exception because the caller retries until its
    deadline and only the last reason is worth showing to the operator.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return f"{url} unreachable: {exc.reason}"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return f"{url} failed: {type(exc).__name__}: {exc}".rstrip(": ")
    if 200 <= status < 300:
        return None
    return f"{url} answered HTTP {status}"


def wait_healthy(url: str, timeout: float, poll_interval: float = MIN_RETRY_INTERVAL) -> str | None:
    """Probe `url` until it answers 2xx or `timeout` seconds pass.

    Returns None on success, else the last failure reason. Retries because a
    freshly ready generation may still be finishing its warm-up, and a single
    refused probe should not roll back an otherwise good deploy.
    """
    deadline = time.monotonic() + timeout
    interval = max(poll_interval, MIN_RETRY_INTERVAL)
    reason = f"{url} not probed within {timeout:g} s"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return reason
        failure = probe(url, timeout=min(PROBE_TIMEOUT, max(remaining, 0.05)))
        if failure is None:
            return None
        reason = failure
        if deadline - time.monotonic() <= 0:
            return reason
        time.sleep(min(interval, max(deadline - time.monotonic(), 0)))
