"""Relative paths mean "relative to where `hotswap start` was run", whatever --chdir says.

--chdir only says where the app is imported from. Log files, the pidfile, the config
file and unix socket paths given relative to the operator's shell are resolved before
the master changes folder, so USR1 reopens the same files, HUP finds the same config and
`hotswap status -p PIDFILE` (run from that same shell) finds the pidfile.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .config import Config

FILE_KEYS = ("pidfile", "error_log", "access_log", "config", "certfile", "keyfile", "ca_certs")


def absolute(path: str, base: str) -> str:
    """`path` joined to `base` when relative; `-` (a standard stream) stays as it is."""
    if path == "-" or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base, path))


def absolute_bind(spec: str, base: str) -> str:
    """`unix:rel/sock` -> `unix:/base/rel/sock`; other binds are not paths."""
    path = spec[len("unix:"):]
    if spec.startswith("unix:") and path:
        return "unix:" + absolute(path, base)
    return spec


def resolve_flags(flags: dict[str, Any], base: str) -> dict[str, Any]:
    """A copy of the command-line flags with every path made absolute (HUP re-reads them)."""
    resolved = dict(flags)
    for key in FILE_KEYS:
        if isinstance(resolved.get(key), str) and resolved[key]:
            resolved[key] = absolute(resolved[key], base)
    if resolved.get("bind"):
        resolved["bind"] = [absolute_bind(spec, base) for spec in resolved["bind"]]
    return resolved


def resolve_config(cfg: Config, base: str) -> Config:
    """The same for values that came from the TOML file."""
    changes: dict[str, Any] = {}
    for key in FILE_KEYS:
        value = getattr(cfg, key)
        if isinstance(value, str) and value:
            changes[key] = absolute(value, base)
    changes["bind"] = [absolute_bind(spec, base) for spec in cfg.bind]
    return dataclasses.replace(cfg, **changes)
