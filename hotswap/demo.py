"""The built-in demo app: `hotswap start` with no APP serves this page.

It shows which process answered, so an operator can watch an upgrade or a reload move
requests from one generation to the next with nothing but a browser or curl.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

_BOOTED = time.time()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A plain WSGI callable: the master and worker pids, the generation and when it booted."""
    facts = {
        "master pid": environ.get("hotswap.master_pid", "?"),
        "worker pid": os.getpid(),
        "generation": environ.get("hotswap.generation", "?"),
        "worker started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_BOOTED)),
        "path": environ.get("PATH_INFO", "/"),
    }
    rows = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items()
    )
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>hotswap</title></head>"
        f"<body><h1>hotswap is serving</h1><table>\n{rows}\n</table></body></html>\n"
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
