"""The ASGI lifespan protocol: the app's startup before the worker says `B`, its shutdown
when the worker retires.

Startup is part of booting: a worker reports itself booted only once
`lifespan.startup.complete` came, so in a live upgrade the new master's READY (which
waits for every worker's `B`) includes every worker's lifespan startup. A
`lifespan.startup.failed`, or an exception raised after the app took the startup
message, is a boot failure whose reason (the message, or the exception's last line)
travels the same `E` path as an import error: the first generation exits with it, and an
upgrade's new master reports it to the old one, which rolls back and keeps serving.

An app that does not speak lifespan (it raises, or returns, before taking the startup
message) is served without it, as the ASGI spec asks and as uvicorn's `--lifespan auto`
does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .asgi_scope import ASGI_VERSION


class Lifespan:
    """One `lifespan` scope, kept open from startup to shutdown."""

    def __init__(self, app: Any, state: dict[str, Any], log: Any) -> None:
        self.app = app
        self.log = log
        self.scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": state}
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True
        self.took_startup = False
        self.error: str | None = None

    async def startup(self) -> str | None:
        """Run the app's startup; None when done (or unsupported), else the reason."""
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self.inbox.put({"type": "lifespan.startup"})
        message = await self._reply()
        if message is None:
            if self.took_startup and self.error is not None:
                return f"lifespan startup failed: {self.error}"
            self.supported = False
            self.log.info("ASGI lifespan not supported by the app; serving without it")
            return None
        if message["type"] == "lifespan.startup.failed":
            return f"lifespan startup failed: {_last_line(message.get('message', ''))}"
        return None

    async def shutdown(self, timeout: float) -> None:
        """Tell the app to shut down and wait for it, at most `timeout` seconds."""
        if not self.supported or self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        try:
            message = await asyncio.wait_for(self._reply(), timeout)
        except TimeoutError:
            self.log.warning("lifespan shutdown not complete after %g s", timeout)
            return
        if message is not None and message["type"] == "lifespan.shutdown.failed":
            self.log.error("lifespan shutdown failed: %s", _last_line(message.get("message", "")))

    async def _reply(self) -> dict[str, Any] | None:
        """The app's next message, or None once its lifespan task has ended."""
        assert self.task is not None
        getter = asyncio.ensure_future(self.outbox.get())
        done, _ = await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        return None

    async def _main(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except BaseException as exc:  # noqa: BLE001 - the app's own failure, reported
            self.error = f"{type(exc).__name__}: {exc}"
            if self.took_startup:
                self.log.error("lifespan: %s", self.error, exc_info=exc)
            else:
                self.log.debug("lifespan: %s", self.error)

    async def _receive(self) -> dict[str, Any]:
        message = await self.inbox.get()
        if message["type"] == "lifespan.startup":
            self.took_startup = True
        return message

    async def _send(self, message: dict[str, Any]) -> None:
        await self.outbox.put(message)


def _last_line(text: str) -> str:
    """Starlette sends a whole traceback as the message: its last line says what failed."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"
