"""The error log and the access log, both reopenable on USR1 for logrotate.

Files are opened in append mode so master and workers can share one file; reopening
after `mv` makes a new file at the configured path, which is what logrotate's
`postrotate kill -USR1` expects. Syslog, a --log-config file and statsd counters hang
off the same two loggers (`hotswap.error`, `hotswap.access`) and are re-applied on USR1
too; the access line's format is compiled once, here, before the workers fork.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from .accesslog import FormatError, Headers, compile_format
from .errors import StartupError
from .logconfig import LogConfigFile, Syslog
from .statsd import LogCounter, Metrics, Statsd

if TYPE_CHECKING:
    from .config import Config

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


class Logs:
    """Owns the handlers of the `hotswap.error` and `hotswap.access` loggers."""

    def __init__(self, error_log: str = "-", access_log: str | None = None,
                 level: str = "info", *, access_format: str | None = None,
                 access_json: bool = False, capture_output: bool = False,
                 log_config: str | None = None, syslog: Syslog | None = None,
                 statsd: Statsd | None = None) -> None:
        self.error_path = error_log
        self.access_path = access_log
        self.error = logging.getLogger("hotswap.error")
        self.error.setLevel(level.upper())
        self.error.propagate = False
        self._access = logging.getLogger("hotswap.access")
        self._access.setLevel(logging.INFO)
        self._access.propagate = False
        self.render = compile_format(access_format, access_json)
        self.capture_output = capture_output
        self.log_config = LogConfigFile(log_config) if log_config else None
        self.syslog = syslog
        self.metrics = Metrics(statsd)
        # Lines are rendered when something can receive them (as gunicorn: syslog and a
        # log-config file take access lines without --access-log).
        self._lines = bool(access_log or syslog or log_config)
        self._counter = LogCounter(statsd) if statsd is not None else None
        if self._counter is not None:
            self.error.addFilter(self._counter)
        self._ours: list[tuple[logging.Logger, logging.Handler]] = []
        self._streams: list[TextIO] = []
        self._error_file: TextIO | None = None
        self._reopen(strict=True)

    @classmethod
    def from_config(cls, cfg: Config) -> Logs:
        """Every logging option of `cfg`; StartupError (or OSError for a log file) if wrong."""
        try:
            compile_format(cfg.access_logformat, cfg.access_log_json)
        except FormatError as exc:
            raise StartupError(f"access-logformat: {exc}") from None
        syslog = (Syslog(cfg.log_syslog_to, cfg.log_syslog_facility, cfg.log_syslog_prefix)
                  if cfg.log_syslog else None)
        statsd = Statsd.connect(cfg.statsd_host, cfg.statsd_prefix) if cfg.statsd_host else None
        return cls(cfg.error_log, cfg.access_log, cfg.log_level,
                   access_format=cfg.access_logformat, access_json=cfg.access_log_json,
                   capture_output=cfg.capture_output, log_config=cfg.log_config,
                   syslog=syslog, statsd=statsd)

    def reopen(self) -> None:
        """Close and open every log file again (USR1); a failure is logged, never raised.

        fds 1 and 2 that were on the old error log file (a daemon's, see redirect_stdio,
        or a worker's with --capture-output) move to the new one: app print()s,
        wsgi.errors and crash tracebacks write there, and would otherwise go to the
        rotated file forever."""
        self._reopen(strict=False)

    def _reopen(self, strict: bool) -> None:
        old = self._streams
        old_error = self._error_file
        self._streams = []
        try:  # the new files first: if one cannot be opened, the old handlers stay
            error_stream = self._open(self.error_path, sys.stderr)
            access_stream = self._open(self.access_path, sys.stdout) if self.access_path else None
        except OSError:
            for stream in self._streams:
                stream.close()
            self._streams = old
            raise
        self._error_file = error_stream if self.error_path != "-" else None
        self._drop_ours()
        problems = self._apply_log_config(strict)
        # A logger the log-config file gave handlers to is the file's; the others get ours.
        if not self.error.handlers:
            self._add(self.error, logging.StreamHandler(error_stream),
                      logging.Formatter(ERROR_FORMAT, DATE_FORMAT))
        if access_stream is not None and not self._access.handlers:
            self._add(self._access, logging.StreamHandler(access_stream), logging.Formatter("%(message)s"))
        problems += self._add_syslog(strict)
        if old_error is not None and self._error_file is not None:
            _follow_stdio(old_error, self._error_file)
        for stream in old:
            stream.close()
        for problem in problems:
            self.error.error("USR1: %s", problem)

    def _apply_log_config(self, strict: bool) -> list[str]:
        if self.log_config is None:
            return []
        try:
            self.log_config.apply()
        except StartupError as exc:
            if strict:
                raise
            return [str(exc)]
        return []

    def _add_syslog(self, strict: bool) -> list[str]:
        if self.syslog is None:
            return []
        try:
            for logger in (self.error, self._access):
                self._add(logger, self.syslog.handler(), None)
        except StartupError as exc:
            if strict:
                raise
            return [str(exc)]
        return []

    def _add(self, logger: logging.Logger, handler: logging.Handler,
             formatter: logging.Formatter | None) -> None:
        if formatter is not None:
            handler.setFormatter(formatter)
        logger.addHandler(handler)
        self._ours.append((logger, handler))

    def _drop_ours(self) -> None:
        for logger, handler in self._ours:
            logger.removeHandler(handler)
            handler.close()  # a syslog socket; a StreamHandler leaves its stream to us
        self._ours = []
        if self.log_config is None:  # without a log-config file, the two loggers are all ours
            for logger in (self.error, self._access):
                for handler in list(logger.handlers):
                    logger.removeHandler(handler)

    def _open(self, path: str, dash: TextIO) -> TextIO:
        if path == "-":
            return dash
        stream = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
        self._streams.append(stream)
        return stream

    @property
    def access_enabled(self) -> bool:
        """Whether a request has anything to report (a line, or statsd metrics)."""
        return self._lines or self.metrics.enabled

    def access(self, environ: dict[str, Any], status: str, size: int | None,
               duration: float, headers: Headers = ()) -> None:
        """One access line (hotswap's combined+µs format unless --access-logformat or
        --access-log-json say otherwise) and the request's statsd metrics."""
        if self._lines:
            self._access.info(self.render(environ, status, size, duration, headers))
        if self.metrics.client is not None:
            self.metrics.request(status, duration)

    def capture_stdio(self) -> None:
        """--capture-output, in a worker: the app's stdout and stderr (print(), warnings,
        C libraries) go to the error log file, or to stderr when that is `-`.

        stdout becomes line-buffered, so a print() without flush is not lost when the
        worker exits with os._exit."""
        if not self.capture_output:
            return
        for std in (sys.stdout, sys.stderr):
            _flush(std)
        target = self._error_file.fileno() if self._error_file is not None else 2
        os.dup2(target, 1)
        if target != 2:
            os.dup2(target, 2)
        for std in (sys.stdout, sys.stderr):
            reconfigure = getattr(std, "reconfigure", None)
            if reconfigure is not None:
                try:
                    reconfigure(line_buffering=True)
                except (OSError, ValueError):
                    pass

    def close(self) -> None:
        self._drop_ours()
        for logger in (self.error, self._access):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
        if self._counter is not None:
            self.error.removeFilter(self._counter)
        for stream in self._streams:
            stream.close()
        self._streams = []
        self.metrics.close()


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
