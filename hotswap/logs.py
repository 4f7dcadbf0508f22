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
        self._error_file: TextIO | None = None
        self.reopen()

    def reopen(self) -> None:
        """Close and open every log file again (USR1).

        fds 1 and 2 that were on the old error log file (a daemon's, see redirect_stdio)
        move to the new one: app print()s, wsgi.errors and crash tracebacks write there,
        and would otherwise go to the rotated file forever."""
        old = self._streams
        old_error = self._error_file
        self._streams = []
        stream = self._open(self.error_path, sys.stderr)
        self._error_file = stream if self.error_path != "-" else None
        _set_handler(self.error, stream, logging.Formatter(ERROR_FORMAT, DATE_FORMAT))
        if old_error is not None and self._error_file is not None:
            _follow_stdio(old_error, self._error_file)
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


def log_app_traceback(summary: str, exc: BaseException) -> None:
    """The full traceback of an app that could not be loaded, for the operator to fix it.

    In an error log file it is an ERROR; on the terminal (`--error-log -`) only a DEBUG
    record, since there the one-line summary is what an operator mistake shows."""
    log = logging.getLogger("hotswap.error")
    to_file = any(getattr(h, "stream", None) not in (None, sys.stderr, sys.stdout)
                  for h in log.handlers)
    log.log(logging.ERROR if to_file else logging.DEBUG, "%s", summary,
            exc_info=(type(exc), exc, exc.__traceback__))


def _follow_stdio(old: TextIO, new: TextIO) -> None:
    """dup2 `new` onto whichever of fds 1 and 2 is the same file as `old`."""
    try:
        before = os.fstat(old.fileno())
    except (OSError, ValueError):
        return
    for fd in (1, 2):
        try:
            here = os.fstat(fd)
        except OSError:
            continue
        if (here.st_dev, here.st_ino) == (before.st_dev, before.st_ino):
            for std in (sys.stdout, sys.stderr):
                _flush(std)
            os.dup2(new.fileno(), fd)


def _flush(stream: TextIO | None) -> None:
    try:
        if stream is not None:
            stream.flush()
    except (OSError, ValueError):
        pass


def _set_handler(logger: logging.Logger, stream: TextIO, formatter: logging.Formatter) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger.addHandler(handler)


def redirect_stdio(error_path: str) -> None:
    """For a daemon: stdin from /dev/null, stdout/stderr to the error log (or /dev/null).

    The log is opened first: if that fails, nothing was redirected yet and the OSError
    says why."""
    target = None
    if error_path != "-":
        target = os.open(error_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    if target is None:
        target = null
    os.dup2(target, 1)
    os.dup2(target, 2)
    for fd in {null, target}:
        if fd > 2:
            os.close(fd)
