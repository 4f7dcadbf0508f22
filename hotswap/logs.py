"""The error log and the access log, both reopenable on USR1 for logrotate.

Files are opened in append mode so master and workers can share one file; reopening
after `mv` makes a new file at the configured path, which is what logrotate's
`postrotate kill -USR1` expects.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


class Logs:
    """Owns the handlers of the `hotswap.error` and `hotswap.access` loggers."""

    def __init__(self, error_log: str = "-", access_log: str | None = None,
                 level: str = "info") -> None:
        self.error_path = error_log
        self.access_path = access_log
        self.error = logging.getLogger("hotswap.error")
        self.error.setLevel(level.upper())
        self.error.propagate = False
        self._access = logging.getLogger("hotswap.access")
        self._access.setLevel(logging.INFO)
        self._access.propagate = False
        self._streams: list[TextIO] = []
        self.reopen()

    def reopen(self) -> None:
        """Close and open every log file again (USR1); stdout/stderr are left as they are."""
        old = self._streams
        self._streams = []
        _set_handler(self.error, self._open(self.error_path, sys.stderr),
                     logging.Formatter(ERROR_FORMAT, DATE_FORMAT))
        if self.access_path:
            _set_handler(self._access, self._open(self.access_path, sys.stdout),
                         logging.Formatter("%(message)s"))
        for stream in old:
            stream.close()

    def _open(self, path: str, dash: TextIO) -> TextIO:
        if path == "-":
            return dash
        stream = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
        self._streams.append(stream)
        return stream

    @property
    def access_enabled(self) -> bool:
        return bool(self.access_path)

    def access(self, environ: dict[str, Any], status: str, size: int | None,
               duration: float) -> None:
        """One line in the combined log format, plus the request time in microseconds."""
        request_line = f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"
        self._access.info(
            '%s - - [%s] "%s" %s %s "%s" "%s" %d',
            environ.get("REMOTE_ADDR") or "-",
            time.strftime("%d/%b/%Y:%H:%M:%S %z"),
            request_line,
            status[:3],
            size if size is not None else "-",
            environ.get("HTTP_REFERER", "-"),
            environ.get("HTTP_USER_AGENT", "-"),
            int(duration * 1_000_000),
        )

    def close(self) -> None:
        for logger in (self.error, self._access):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
        for stream in self._streams:
            stream.close()
        self._streams = []


def _set_handler(logger: logging.Logger, stream: TextIO, formatter: logging.Formatter) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger.addHandler(handler)


def redirect_stdio(error_path: str) -> None:
    """For a daemon: stdin from /dev/null, stdout/stderr to the error log (or /dev/null)."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    target = null
    if error_path != "-":
        target = os.open(error_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    for fd in {null, target}:
        if fd > 2:
            os.close(fd)
