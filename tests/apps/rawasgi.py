"""Plain ASGI apps (no framework) for the ASGI worker tests.

`app`: ASGI 3 without lifespan support (it refuses any scope but http and websocket, as
many hand-written apps do). Paths: /who (worker pid), /block/SECONDS (blocks the event
loop: a stuck app), /hold (reads one body piece, then waits for http.disconnect and
leaves a file `disconnected-PID` in the working directory), /stall (reads one body
piece, then nothing for 10 s), /flood (1 GB in 1 MB pieces), /sse (events every 50 ms
until the client or the server ends the stream).
`Asgi2App`: the same /who as an ASGI 2 double callable.
`returns_coroutine`: a sync callable returning the coroutine (ASGI only by --interface).
"""

import asyncio
import json
import os
import time


async def send_text(send, status, text, content_type=b"text/plain"):
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    assert scope["type"] in ("http", "websocket"), "no lifespan here"
    path = scope["path"]
    if path.startswith("/block/"):
        time.sleep(float(path.rsplit("/", 1)[1]))  # a bug: blocks the loop
    if path == "/hold":
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        open(f"disconnected-{os.getpid()}", "w").close()
        return
    if path == "/stall":  # reads one body piece, then nothing for a while
        await receive()
        await asyncio.sleep(10)
        await send_text(send, 200, "late")
        return
    if path == "/flood":  # 1 MB pieces for as long as they are taken
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"x" * (1 << 20)
        for _ in range(1000):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/sse":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        i = 0
        while True:
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % i,
                        "more_body": True})
            i += 1
            await asyncio.sleep(0.05)
    await send_text(send, 200, json.dumps({"worker": os.getpid(), "path": path}),
                    b"application/json")


class Asgi2App:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await send_text(send, 200, json.dumps({"worker": os.getpid(), "asgi": 2}))


def returns_coroutine(scope, receive, send):
    return app(scope, receive, send)


def neither():
    return None
