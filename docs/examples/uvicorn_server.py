"""A small ASGI app served by uvicorn (`uvicorn.Server(config).serve(sockets=[sock])`) that
upgrades in place: `kill -USR2 $(cat $PIDFILE)`.

    PIDFILE=/tmp/uvicorn.pid BIND=127.0.0.1:8000 python docs/examples/uvicorn_server.py

GET / answers {"version": <the VERSION file next to this script>, "pid": ...};
GET /slow/SECONDS sleeps first.

Signals. serve() replaces the handlers of TERM and INT with its own (which sets
`server.should_exit`) for as long as it runs, then restores them and raises the signal it
caught once more. So install_signals() is called inside the loop *before* serve():
- USR2 and QUIT, which uvicorn leaves alone, reach the Upgrader through the loop;
- TERM and INT run uvicorn's handler (a graceful stop); asyncio's wakeup fd still carries
  them to the loop, so `up.exit` is set as well, and the signal uvicorn raises again after
  serve() lands on asyncio's handler instead of killing the process before close().
No private uvicorn API is used: `started`, `server_state` and `should_exit` are plain
attributes of uvicorn.Server.

Drain. uvicorn's own shutdown closes idle kept-alive connections at once, which fails a
request a client is sending on one at that moment. So when a newer process serves, this
one first stops accepting, answers every request it still gets with `Connection: close`,
waits until no connection is left (idle ones end at uvicorn's keep-alive timeout, 5 s),
and only then sets `should_exit`. Stopping to accept is `loop.remove_reader(sock)`, not
closing the asyncio servers: asyncio (3.11) attaches a connection it accepted to its
server a loop turn or two later, and drops it without a word (the client gets a reset)
if the server was closed in between.
"""

import asyncio
import json
import os
from pathlib import Path

import uvicorn

from upgrade import Upgrader

VERSION = Path(__file__).with_name("VERSION").read_text().strip()  # what a deploy changes
up = Upgrader(pidfile=os.environ.get("PIDFILE", "/tmp/uvicorn_server.pid"))


async def app(scope: dict, receive: object, send: object) -> None:
    if scope["path"].startswith("/slow/"):
        await asyncio.sleep(float(scope["path"][len("/slow/"):]))
    headers = [(b"content-type", b"application/json")]
    if up.exit.is_set():  # a newer process serves: the client reconnects there
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body",
                "body": json.dumps({"version": VERSION, "pid": os.getpid()}).encode()})


async def main() -> None:
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    up.install_signals()  # before serve(), see the module docstring
    sock = up.listen(os.environ.get("BIND", "127.0.0.1:8000"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():  # uvicorn could not start: the previous generation goes on serving
            return serving.result()
        await asyncio.sleep(0.05)
    up.ready()
    await up.wait_exit()  # a newer process serves, or a stop signal came: drain, see above
    asyncio.get_running_loop().remove_reader(sock)  # stop accepting, see the module docstring
    for _ in range(5):  # connections accepted just before are registered (2-3 loop turns)
        await asyncio.sleep(0)
    while server.server_state.connections:
        await asyncio.sleep(0.05)
    server.should_exit = True
    await serving
    up.close()


if __name__ == "__main__":
    asyncio.run(main())
