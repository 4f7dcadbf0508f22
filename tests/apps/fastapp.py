"""FastAPI test app of the ASGI tests: the same module is served by hotswap and by uvicorn.

`build(version)` makes an app; `app` is version "v1". Endpoints: JSON in and out, a form
with a file upload (python-multipart), a streaming response and an event stream, a
WebSocket echo (text and bytes, a subprotocol, a denial), a lifespan flag, and /who,
which says which generation served a request (version, master and worker pid), as do
`/` and `/slow/SECONDS` in the shape tests/e2e/load.py records.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, File, Form, HTTPException, Request, Response, UploadFile, WebSocket
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


def build(version: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if os.environ.get("FASTAPP_FAIL_STARTUP"):
            raise RuntimeError(os.environ["FASTAPP_FAIL_STARTUP"])
        await asyncio.sleep(0.01)
        yield {"started": True, "version": version}
        if os.environ.get("FASTAPP_SHUTDOWN_FILE"):  # shows that lifespan shutdown ran
            with open(os.environ["FASTAPP_SHUTDOWN_FILE"], "a") as fh:
                fh.write(f"{os.getpid()}\n")

    app = FastAPI(lifespan=lifespan)

    @app.get("/json")
    async def get_json(response: Response, q: str | None = None):
        response.headers["X-Test"] = "json"
        return {"hello": "world", "q": q, "numbers": [1, 2, 3], "unicode": "héllo ✓"}

    @app.post("/items")
    async def post_item(item: Item):
        return {"received": item.model_dump(), "total": item.price * 2}

    @app.get("/items/{item_id}")
    async def get_item(item_id: int):
        if item_id == 404:
            raise HTTPException(status_code=404, detail="no such item")
        return {"item_id": item_id}

    @app.post("/form")
    async def form(name: str = Form(...), upload: UploadFile = File(...)):  # noqa: B008
        data = await upload.read()
        return {"name": name, "filename": upload.filename, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}

    @app.post("/echo")
    async def echo(request: Request):
        body = await request.body()
        return Response(body, media_type=request.headers.get("content-type", "application/octet-stream"))

    @app.get("/stream")
    async def stream(n: int = 5):
        async def pieces():
            for i in range(n):
                yield f"piece {i}\n".encode()
                await asyncio.sleep(0)
        return StreamingResponse(pieces(), media_type="text/plain")

    @app.get("/sse")
    async def sse(n: int = 3, every: float = 0.01):
        async def events():
            for i in range(n):
                yield f"data: event {i}\n\n"
                await asyncio.sleep(every)
        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/lifespan")
    async def lifespan_flag(request: Request):
        return {"started": getattr(request.state, "started", False),
                "version": getattr(request.state, "version", None)}

    @app.get("/text", response_class=PlainTextResponse)
    async def text():
        return "plain text\n"

    @app.get("/who")
    async def who(request: Request, sleep: float = 0.0):
        if sleep:
            await asyncio.sleep(sleep)
        client = request.client
        return {"version": version, "master": os.getppid(), "worker": os.getpid(),
                "generation": os.environ.get("HOTSWAP_GENERATION"),
                "port": str(client.port) if client else None}

    @app.get("/boom")
    async def boom():
        raise RuntimeError("boom")

    @app.get("/")
    async def load_root(request: Request):
        return who_served(request)

    @app.get("/slow/{seconds}")
    async def load_slow(request: Request, seconds: float):
        await asyncio.sleep(seconds)
        return who_served(request)

    def who_served(request: Request) -> dict:
        """What tests/e2e/load.py's clients record (the WSGI load app's fields)."""
        t_in = time.time()
        client = request.client
        return {"version": version, "master": os.getppid(), "worker": os.getpid(),
                "generation": os.environ.get("HOTSWAP_GENERATION"),
                "port": str(client.port) if client else None, "t_in": t_in}

    @app.websocket("/ws")
    async def ws_echo(websocket: WebSocket):
        await websocket.accept()
        await websocket.send_json({"version": version, "worker": os.getpid(),
                                   "master": os.getppid()})
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await websocket.send_text("echo " + message["text"])
                else:
                    await websocket.send_bytes(b"echo " + message["bytes"])
        except WebSocketDisconnect:
            return

    @app.websocket("/ws-sub")
    async def ws_sub(websocket: WebSocket):
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol=offered[-1] if offered else None)
        await websocket.send_text(",".join(offered))
        await websocket.close(code=4000, reason="done")

    @app.websocket("/ws-deny")
    async def ws_deny(websocket: WebSocket):
        await websocket.close()

    return app


app = build("v1")
