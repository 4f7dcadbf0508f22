"""Which calling convention an app speaks: WSGI, ASGI 3, or an ASGI 2 double callable.

Decided once per worker, after the app is loaded and before anything is served, from
the callable's own signature, so a FastAPI app is never called as WSGI (every request
a 500) and a typo'd object is one line at startup instead:

- a coroutine function, or an object whose `__call__` is one, taking three positional
  arguments is ASGI 3 (FastAPI, Starlette, Django's ASGIHandler, Quart);
- a class or a plain callable taking exactly one positional argument is ASGI 2: called
  with the scope, it returns the instance that is awaited with (receive, send);
- a callable (a class too, PEP 3333's AppClass) taking two positional arguments (or
  `*args`, or one Python cannot introspect, such as a C extension's) is WSGI, exactly
  as before this module existed;
- anything else is refused with what it takes.

`--interface wsgi|asgi` skips the guess (ASGI 2 or 3 is still told apart).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import StartupError

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]


def resolve(app: Any, interface: str, spec: str) -> tuple[str, Any]:
    """("wsgi", app) or ("asgi", an ASGI 3 callable); StartupError for anything else."""
    if interface == "wsgi":
        return "wsgi", app
    kind = _guess(app)
    if interface == "asgi" and kind in ("wsgi", "unknown"):
        kind = "asgi3"  # the operator said so: e.g. a sync object returning awaitables
    if kind == "asgi3":
        return "asgi", app
    if kind == "asgi2":
        return "asgi", _asgi2_adapter(app)
    if kind == "wsgi":
        return "wsgi", app
    raise StartupError(f"APP {spec!r} is neither a WSGI app (environ, start_response) nor an "
                       f"ASGI app (async scope, receive, send): it takes {_describe(app)}")


def _guess(app: Any) -> str:
    direct = inspect.isroutine(app) or inspect.isclass(app)  # else: an object, called via __call__
    call = app if direct else getattr(app, "__call__", app)  # noqa: B004
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call):
        return "asgi3"
    try:
        params = list(inspect.signature(app).parameters.values())
    except (TypeError, ValueError):
        return "wsgi"  # cannot tell (a builtin): what hotswap always did
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return "wsgi"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) <= 2 <= len(positional):
        return "wsgi"
    if len(required) <= 1 <= len(positional):
        return "asgi2"
    return "unknown"


def _describe(app: Any) -> str:
    try:
        return f"{inspect.signature(app)}"
    except (TypeError, ValueError):
        return "an unknown signature"


def _asgi2_adapter(app: Any) -> ASGIApp:
    """ASGI 2 spoken as ASGI 3: app(scope) gives an instance awaited with (receive, send)."""

    async def asgi3(scope: dict, receive: Any, send: Any) -> None:
        instance = app(scope)
        await instance(receive, send)

    return asgi3
