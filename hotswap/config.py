"""The server's settings: one typed record, filled from defaults, a TOML file, then flags.

Keeping every setting in one dataclass with its type and default lets the TOML loader
reject a misspelt key or a wrong type with a precise one-line message, and lets HUP
re-read the file and rebuild the same record without any global state.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .errors import StartupError

DEMO_APP = "hotswap.demo:app"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class Config:
    """Every option of `hotswap start`. Field names are the long option names with '_'."""

    app: str = DEMO_APP
    bind: list[str] = field(default_factory=list)  # empty: inherited sockets, else 127.0.0.1:8000
    workers: int = field(default_factory=_cpu_count)
    threads: int = 1
    timeout: float = 30.0
    graceful_timeout: float = 30.0
    keepalive: float = 5.0
    max_requests: int = 0
    max_requests_jitter: int = 0
    pidfile: str | None = None
    daemon: bool = False
    chdir: str | None = None
    preload: bool = False
    access_log: str | None = None
    error_log: str = "-"
    log_level: str = "info"
    name: str | None = None
    limit_request_line: int = 4094
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190
    forwarded_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    backlog: int = 2048
    upgrade_timeout: float = 60.0
    upgrade_mode: str = "auto"  # auto: USR2 alone finishes or rolls back; manual: WINCH/QUIT by hand
    watch_window: float = 10.0  # seconds after the handover during which a failure rolls back
    upgrade_surge: int = 0  # rolling handover: at most workers + this many during an upgrade; 0: off
    health_path: str | None = None  # each new worker GETs this from the app in-process at boot
    health_url: str | None = None  # probed on the new generation only, before it goes live
    config: str | None = None
    # -- TLS, PROXY protocol, sockets (issue 12) --
    certfile: str | None = None  # PEM certificate (chain); TLS on every --bind when set
    keyfile: str | None = None  # PEM private key; none: the key is in certfile
    ca_certs: str | None = None  # CA bundle client certificates are verified against
    cert_reqs: int = 0  # gunicorn's values: 0 no client certificate, 1 optional, 2 required
    ciphers: str | None = None  # OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites: OpenSSL's)
    proxy_protocol: bool = False  # PROXY v1/v2 header required from --proxy-allow-from peers
    proxy_allow_from: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    reuse_port: bool = False  # SO_REUSEPORT on the TCP listeners this server opens
    server_header: bool = True  # send `Server: hotswap/VERSION`

    def validate(self) -> Config:
        """Reject values that would only fail later, deep in a worker, with a worse message."""
        _check(self.workers >= 1, "workers must be at least 1")
        _check(self.threads >= 1, "threads must be at least 1")
        _check(self.timeout > 0, "timeout must be positive")
        _check(self.graceful_timeout >= 0, "graceful-timeout must not be negative")
        _check(self.keepalive >= 0, "keepalive must not be negative")
        _check(self.max_requests >= 0, "max-requests must not be negative")
        _check(self.max_requests_jitter >= 0, "max-requests-jitter must not be negative")
        _check(self.upgrade_timeout > 0, "upgrade-timeout must be positive")
        _check(self.upgrade_mode in ("auto", "manual"), "upgrade-mode must be auto or manual")
        _check(self.watch_window >= 0, "watch-window must not be negative")
        _check(self.upgrade_surge >= 0, "upgrade-surge must not be negative")
        for option, value in (("health-path", self.health_path), ("health-url", self.health_url)):
            _check(value is None or value.strip() == value and value != "",
                   f"{option} must not be empty or padded with spaces")
        _check(self.health_path is None or self.health_path.startswith("/"),
               "health-path must start with /, e.g. /healthz")
        _check(self.health_url is None or self.health_url.startswith(("http://", "/")),
               "health-url must be http://HOST[:PORT]/PATH or a /PATH")
        _check(self.backlog >= 1, "backlog must be at least 1")
        for limit in ("limit_request_line", "limit_request_fields", "limit_request_field_size"):
            _check(getattr(self, limit) >= 1, f"{limit.replace('_', '-')} must be at least 1")
        levels = ("debug", "info", "warning", "error", "critical")
        _check(self.log_level.lower() in levels, f"log-level must be one of {', '.join(levels)}")
        _check(":" in self.app, f"APP must look like module:callable, got {self.app!r}")
        self._validate_issue12()
        return self

    def _validate_issue12(self) -> None:
        """TLS and PROXY options (issue 12); the files themselves are loaded by hotswap.tls."""
        _check(self.cert_reqs in (0, 1, 2), "cert-reqs must be 0 (none), 1 (optional) or 2 (required)")
        for option in ("certfile", "keyfile", "ca_certs", "ciphers"):
            value = getattr(self, option)
            _check(value is None or (value != "" and value.strip() == value),
                   f"{option.replace('_', '-')} must not be empty or padded with spaces")
        _check(self.certfile is not None or (self.keyfile is None and self.ca_certs is None
                                             and self.ciphers is None and not self.cert_reqs),
               "keyfile, ca-certs, cert-reqs and ciphers need a certfile")
        _check(not self.cert_reqs or self.ca_certs is not None,
               "cert-reqs 1 or 2 needs ca-certs (the CA client certificates are checked against)")
        for entry in self.proxy_allow_from:
            _check(entry == "*" or _is_network(entry),
                   f"proxy-allow-from: {entry!r} is not an address, a network or *")


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise StartupError(f"invalid configuration: {message}")


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_LIST_FIELDS = {"bind", "forwarded_allow_ips", "proxy_allow_from"}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Accept the TOML types a person would write, refuse anything else by name."""
    kind = FIELDS[name].type
    where = f"{source}: '{name.replace('_', '-')}'"
    if name in _LIST_FIELDS:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if name != "bind" else [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise StartupError(f"{where} must be a string or a list of strings")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise StartupError(f"{where} must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise StartupError(f"{where} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StartupError(f"{where} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise StartupError(f"{where} must be a string, got {value!r}")
    return value


def read_toml(path: str) -> dict[str, Any]:
    """Load a config file into field values, naming the file in every error."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise StartupError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise StartupError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StartupError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS or name == "config":
            raise StartupError(f"config file {path}: unknown key '{key}'")
        values[name] = _coerce(name, value, f"config file {path}")
    return values


def build(flags: dict[str, Any]) -> Config:
    """Defaults, then the TOML file named by --config, then the flags given on the command line.

    `flags` holds only the options the operator actually typed, so a file value is never
    overridden by a flag's default.
    """
    values: dict[str, Any] = {}
    path = flags.get("config")
    if path:
        values.update(read_toml(path))
    values.update({k: v for k, v in flags.items() if v is not None})
    return Config(**values).validate()
