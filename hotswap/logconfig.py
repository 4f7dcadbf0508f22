"""Logging the operator configures beyond the two files: a --log-config file and syslog.

Both are checked when the master starts (a mistake is a one-line error there, not a
traceback in every worker) and applied again on USR1, which re-creates their handlers:
files named in a log-config file are reopened, and a syslog socket reconnects.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.config
import logging.handlers
import socket
import tomllib
from typing import Any

from .errors import StartupError

SYSLOG_DEFAULT = "udp://localhost:514"  # gunicorn's default on Linux
FACILITIES = tuple(sorted(logging.handlers.SysLogHandler.facility_names))


class LogConfigFile:
    """A logging dictConfig file (JSON or TOML), or a fileConfig file (.ini, as gunicorn's
    --log-config), read once and applied at startup and on every USR1."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.kind = _kind(path)
        self.data: dict[str, Any] | None = None
        if self.kind != "ini":
            self.data = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise StartupError(f"log-config {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw) if self.kind == "json" else tomllib.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise StartupError(f"log-config {self.path} is not valid {self.kind.upper()}: {exc}") from None
        if not isinstance(data, dict):
            raise StartupError(f"log-config {self.path} must hold a dictConfig table/object")
        data.setdefault("version", 1)
        # Loggers the file does not name (hotswap.error among them) keep working.
        data.setdefault("disable_existing_loggers", False)
        return data

    def apply(self) -> None:
        """Configure logging from the file; StartupError with the reason if it is wrong."""
        try:
            if self.data is None:
                logging.config.fileConfig(self.path, disable_existing_loggers=False)
            else:
                logging.config.dictConfig(copy.deepcopy(self.data))
        except Exception as exc:  # dictConfig raises whatever the handler classes raise
            raise StartupError(f"log-config {self.path}: {_reason(exc)}") from None


def _kind(path: str) -> str:
    lowered = path.lower()
    for suffix, kind in ((".json", "json"), (".toml", "toml"), (".ini", "ini"), (".conf", "ini"),
                         (".cfg", "ini")):
        if lowered.endswith(suffix):
            return kind
    raise StartupError(f"log-config {path}: name a .json or .toml dictConfig file "
                       "(or an .ini/.conf fileConfig file)")


def _reason(exc: BaseException) -> str:
    """dictConfig wraps the real error ("Unable to configure handler 'x'"): show both."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) not in text:
        text += f": {' '.join(str(cause).split()) or type(cause).__name__}"
    return text


class Syslog:
    """Where --log-syslog sends: `udp://HOST:PORT`, `tcp://HOST:PORT` or `unix:///dev/log`."""

    def __init__(self, to: str | None, facility: str = "user", prefix: str | None = None) -> None:
        self.to = to or SYSLOG_DEFAULT
        if facility.lower() not in logging.handlers.SysLogHandler.facility_names:
            raise StartupError(f"log-syslog-facility must be one of {', '.join(FACILITIES)}, "
                               f"got {facility!r}")
        self.facility = logging.handlers.SysLogHandler.facility_names[facility.lower()]
        self.program = prefix or "hotswap"
        self.address, self.socktype = self._parse()
        self.handler().close()  # resolves and, for tcp, connects: fail now, in one line

    def _parse(self) -> tuple[Any, int | None]:
        scheme, sep, rest = self.to.partition("://")
        if scheme == "unix" and sep and rest:
            return rest, None  # datagram, else stream, as the logging module tries them
        if scheme in ("udp", "tcp") and sep:
            host, _, port = rest.rpartition(":")
            host = host.strip("[]")
            if host and port.isdigit() and 0 < int(port) < 65536:
                return (host, int(port)), socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
        raise StartupError(f"log-syslog-to must be udp://HOST:PORT, tcp://HOST:PORT or "
                           f"unix:///PATH, got {self.to!r}")

    def _resolved(self) -> Any:
        """A numeric address, so logging a line never waits on DNS."""
        if isinstance(self.address, str):
            return self.address
        host, port = self.address
        try:
            info = socket.getaddrinfo(host, port, 0, self.socktype)
        except (socket.gaierror, UnicodeError) as exc:
            raise StartupError(f"log-syslog-to {self.to}: cannot resolve {host!r} "
                               f"({getattr(exc, 'strerror', None) or exc})") from None
        return info[0][4][:2]

    def handler(self) -> logging.Handler:
        """A new handler (USR1 makes a new one: a restarted syslog daemon is found again)."""
        try:
            handler = logging.handlers.SysLogHandler(self._resolved(), self.facility, self.socktype)
        except OSError as exc:
            raise StartupError(f"log-syslog-to {self.to}: {exc.strerror or exc}") from None
        # BSD syslog's TAG[PID]: so syslog daemons file the lines under the program name
        handler.setFormatter(logging.Formatter(f"{self.program}[%(process)d]: [%(levelname)s] %(message)s"))
        return handler
