"""HUP: all-or-nothing reloads of the configuration, sockets included.

The new workers must all boot before the old ones retire; a socket the new
configuration drops is closed (and unlinked) only then, and an aborted reload closes
the sockets it opened instead, as if the HUP never came.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from listeners import Listener, ListenerError, close_listener, parse_bind, reconcile

from ..config import Config
from ..errors import StartupError


@dataclass
class PendingReload:
    """A HUP in progress: what to go back to if its workers cannot boot."""

    old_cfg: Config
    old_epoch: int
    old_listeners: list[Listener]


def listeners_for(serving: list[Listener], old: Config, new: Config) -> list[Listener]:
    """The sockets the new configuration serves; nothing is closed yet."""
    if new.bind == old.bind or not new.bind:
        return serving
    try:
        specs = [parse_bind(text) for text in new.bind]
        wanted, _unwanted = reconcile(serving, specs, new.backlog)
    except (ValueError, ListenerError) as exc:
        raise StartupError(str(exc)) from None
    return wanted


def close_unused(closing: list[Listener], keeping: list[Listener], unlink: bool,
                 log: logging.Logger) -> None:
    kept = {id(lst) for lst in keeping}
    for listener in closing:
        if id(listener) not in kept:
            try:
                close_listener(listener, unlink=unlink)
            except ListenerError as exc:
                log.warning("%s", exc)
