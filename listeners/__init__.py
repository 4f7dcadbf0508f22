"""Listening sockets that survive a live upgrade: bind specs, opening, adopting, handing over.

Standalone on purpose (imports nothing else of hotswap), so any prefork
server can reuse it.
"""

from .inherit import (
    ENV_FDS,
    InheritError,
    adopt_from_env,
    export_env,
    reconcile,
)
from .sockets import Listener, ListenerError, adopt_fd, close_listener, open_listener
from .spec import BindError, BindSpec, parse_bind

__all__ = [
    "ENV_FDS",
    "BindError",
    "BindSpec",
    "InheritError",
    "Listener",
    "ListenerError",
    "adopt_fd",
    "adopt_from_env",
    "close_listener",
    "export_env",
    "open_listener",
    "parse_bind",
    "reconcile",
]
