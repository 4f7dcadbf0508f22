"""What wakes the master up: the self-pipe, each worker's status pipe, and a few fds that
come and go by role (the readiness pipe of an upgrade, the pipe to the previous master,
a running health probe)."""

from __future__ import annotations

import selectors
from collections.abc import Mapping
from typing import Any


class Wakeups:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.roles: dict[str, int] = {}

    def add(self, fd: int, data: Any) -> None:
        self.selector.register(fd, selectors.EVENT_READ, data)

    def remove(self, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def sync(self, wanted: Mapping[str, int | None]) -> None:
        """Watch exactly these fds for their roles (None: that role has no fd now)."""
        for role, fd in wanted.items():
            if self.roles.get(role) != fd:
                self.forget(role)
                if fd is not None:
                    self.add(fd, role)
                    self.roles[role] = fd

    def forget(self, role: str) -> None:
        """Call before the role's fd is closed: its number may be reused at once, and a
        stale registration would refuse the newcomer."""
        fd = self.roles.pop(role, None)
        if fd is not None:
            self.remove(fd)

    def wait(self, timeout: float) -> list[Any]:
        """The data of every registered fd that is readable (or in error)."""
        return [key.data for key, _ in self.selector.select(max(0.0, timeout))]

    def close(self) -> None:
        self.selector.close()
