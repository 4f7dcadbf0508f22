"""A flag that threads, signal handlers and asyncio tasks can all wait on."""

from __future__ import annotations

import asyncio
import threading
import time

MAIN_SLICE = 0.05  # longest the main thread waits without running pending signal handlers


class Flag:
    """`threading.Event` plus `await flag.wait_async()`, woken from any thread.

    `Upgrader.exit` is set from the thread that ran the upgrade (or a signal handler)
    while an asyncio server awaits it: a plain Event would need a thread parked in
    `wait()` per waiter, which also keeps `asyncio.run` from returning.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:
                pass  # that loop is closed: nobody waits there any more

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Like Event.wait(); in the main thread, in slices of MAIN_SLICE.

        A signal the kernel delivers to another thread (any thread may get a signal sent to
        the process) only marks the handler as due: Python runs it in the main thread when
        that next runs bytecode. A main thread parked in one unbroken wait, as in
        `up.exit.wait()`, would then never run the USR2 handler, and the upgrade never start.
        """
        if threading.current_thread() is not threading.main_thread():
            return self._event.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._event.is_set():
            left = MAIN_SLICE if deadline is None else min(MAIN_SLICE, deadline - time.monotonic())
            if left <= 0:
                return False
            self._event.wait(left)
        return True

    async def wait_async(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.append((loop, future))
        await future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
