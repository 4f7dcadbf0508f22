"""hotswap.interface: WSGI, ASGI 3 or ASGI 2 from the app's signature, or one line why not."""

from __future__ import annotations

import asyncio
import functools

import pytest

from hotswap.errors import StartupError
from hotswap.interface import resolve

pytestmark = pytest.mark.timeout(10)


def wsgi_app(environ, start_response):
    return [b""]


class WsgiClass:  # PEP 3333's AppClass: instantiated per request
    def __init__(self, environ, start_response):
        self.environ = environ

    def __iter__(self):
        yield b""


class WsgiObject:
    def __call__(self, environ, start_response, extra=None):
        return [b""]


async def asgi_app(scope, receive, send):
    return None


class AsgiObject:  # Starlette, FastAPI, Django's ASGIHandler
    async def __call__(self, scope, receive, send):
        return None


class Asgi2:  # ASGI 2: instantiated with the scope, the instance awaited with (receive, send)
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await send({"type": "seen", "scope": self.scope})


@pytest.mark.parametrize("app", [wsgi_app, WsgiClass, WsgiObject(), print,
                                 lambda *args: None, functools.partial(wsgi_app)])
def test_wsgi_apps_stay_wsgi(app) -> None:
    assert resolve(app, "auto", "m:app") == ("wsgi", app)


@pytest.mark.parametrize("app", [asgi_app, AsgiObject()])
def test_asgi3_apps(app) -> None:
    assert resolve(app, "auto", "m:app") == ("asgi", app)


def test_asgi2_apps_are_adapted_to_asgi3() -> None:
    kind, app = resolve(Asgi2, "auto", "m:app")
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http"}, None, send))
    assert kind == "asgi" and sent == [{"type": "seen", "scope": {"type": "http"}}]


@pytest.mark.parametrize("app,shown", [(lambda: None, "()"), (lambda a, b, c: None, "(a, b, c)"),
                                       (lambda a, b, c, d: None, "(a, b, c, d)")])
def test_neither_is_one_line(app, shown: str) -> None:
    with pytest.raises(StartupError) as info:
        resolve(app, "auto", "m:app")
    text = str(info.value)
    assert "\n" not in text and "neither a WSGI app" in text and shown in text
    assert text.startswith("APP 'm:app' ")


def test_forced_interfaces() -> None:
    def returns_a_coroutine(scope, receive, send):  # sync, but an ASGI app all the same
        return asgi_app(scope, receive, send)

    assert resolve(returns_a_coroutine, "asgi", "m:app") == ("asgi", returns_a_coroutine)
    assert resolve(asgi_app, "wsgi", "m:app") == ("wsgi", asgi_app)  # the operator said so
    assert resolve(wsgi_app, "asgi", "m:app") == ("asgi", wsgi_app)
