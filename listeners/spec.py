"""Bind specs: the text an operator writes after ``--bind``.

Parsing is strict on purpose: a typo in a bind address should stop the
server at start with one clear line, not bind something unexpected.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal, NoReturn

# Host names and IPv4 literals; anything fancier (IPv6) must be in brackets.
_HOST_RE = re.compile(r"[A-Za-z0-9._-]+")
_FORMS = "use host:port, [ipv6]:port, unix:PATH or fd://N"


class BindError(ValueError):
    """A bind spec that cannot be understood; str() is one line for operators."""


@dataclass(frozen=True)
class BindSpec:
    """One place to listen on, as the operator asked for it (nothing resolved yet)."""

    kind: Literal["tcp", "unix", "fd"]
    host: str | None = None
    port: int | None = None
    path: str | None = None
    fd: int | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        host = self.host or ""
        if ":" in host:
            return f"[{host}]:{self.port}"
        return f"{host}:{self.port}"


def parse_bind(text: str) -> BindSpec:
    """Turn ``--bind`` text into a BindSpec, or raise BindError naming the problem."""
    if not text:
        raise BindError("invalid bind '': it is empty; " + _FORMS)
    if text.startswith("unix:"):
        return _parse_unix(text)
    if text.startswith("fd:"):
        return _parse_fd(text)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        _fail(text, f"unknown scheme '{scheme}://'; " + _FORMS)
    if text.startswith("["):
        return _parse_bracketed(text)
    return _parse_host_port(text)


def _fail(text: str, why: str) -> NoReturn:
    raise BindError(f"invalid bind {text!r}: {why}")


def _parse_unix(text: str) -> BindSpec:
    path = text[len("unix:"):]
    if not path:
        _fail(text, "the unix socket path is empty")
    if path.startswith("//"):
        # unix://x is a URL habit; refusing it avoids silently meaning "//x".
        _fail(text, "write unix:PATH, e.g. unix:/run/app.sock (not unix://)")
    if "\0" in path:
        _fail(text, "the unix socket path contains a NUL byte")
    return BindSpec(kind="unix", path=path)


def _parse_fd(text: str) -> BindSpec:
    if not text.startswith("fd://"):
        _fail(text, "write fd://N, e.g. fd://3")
    number = text[len("fd://"):]
    if not number:
        _fail(text, "the file descriptor number is missing")
    if not (number.isascii() and number.isdigit()):
        _fail(text, f"{number!r} is not a file descriptor number")
    fd = int(number)
    if fd < 3:
        _fail(text, "fd must be 3 or more (0, 1 and 2 are stdin, stdout and stderr)")
    return BindSpec(kind="fd", fd=fd)


def _parse_bracketed(text: str) -> BindSpec:
    close = text.find("]")
    if close < 0:
        _fail(text, "'[' without a matching ']'")
    host = text[1:close]
    rest = text[close + 1:]
    if not host:
        _fail(text, "the IPv6 address in brackets is empty")
    if "[" in host:
        _fail(text, "unbalanced brackets")
    if not rest:
        _fail(text, "missing port (write [ipv6]:port)")
    if not rest.startswith(":"):
        _fail(text, "expected ':port' right after ']'")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        _fail(text, f"{host!r} in brackets is not an IPv6 address")
    return BindSpec(kind="tcp", host=host, port=_parse_port(text, rest[1:]))


def _parse_host_port(text: str) -> BindSpec:
    if "[" in text or "]" in text:
        _fail(text, "brackets must enclose the whole IPv6 address, as in [::1]:8000")
    if ":" not in text:
        if text.isascii() and text.isdigit():
            _fail(text, f"missing host (write 127.0.0.1:{text} or 0.0.0.0:{text})")
        _fail(text, "missing port (write host:port)")
    host, _, port = text.rpartition(":")
    if not host:
        _fail(text, f"missing host (write 127.0.0.1:{port} or 0.0.0.0:{port})")
    if ":" in host:
        _fail(text, "IPv6 addresses must be written in brackets, as in [::1]:8000")
    if not _HOST_RE.fullmatch(host):
        _fail(text, f"{host!r} is not a valid host name or IPv4 address")
    return BindSpec(kind="tcp", host=host, port=_parse_port(text, port))


def _parse_port(text: str, port: str) -> int:
    if not port:
        _fail(text, "missing port (write host:port)")
    if not (port.isascii() and port.isdigit()):
        _fail(text, f"port must be a number, not {port!r}")
    value = int(port)
    if value > 65535:
        _fail(text, f"port {value} is out of range 0-65535")
    return value
