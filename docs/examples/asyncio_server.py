"""A plain `asyncio.start_server` HTTP/1.1 server that upgrades in place.

    PIDFILE=/tmp/asyncio.pid BIND=127.0.0.1:8000 python docs/examples/asyncio_server.py

GET / answers {"version": <the VERSION file next to this script>, "pid": ...};
GET /slow/SECONDS sleeps first. Connections are kept alive (HTTP/1.1) until the client
says `Connection: close` or stays idle for 5 s. install_signals() inside the loop routes
USR2 (upgrade_async(), never blocking the loop) and TERM/INT/QUIT through the loop;
`await up.wait_exit()` returns once a newer process serves (or a stop signal came). Then
the server stops accepting, each connection answers what it is given with
`Connection: close` and ends (idle ones at their keep-alive timeout), and only when every
connection is done does close() tell the upgrade client `committed`.

Stopping to accept is `loop.remove_reader(sock)`, not `server.close()`: asyncio (3.11)
accepts a whole batch of connections in one loop turn and attaches each to its server a
turn or two later; one that finds the server closed by then is dropped without a word
(its client gets a reset). After remove_reader() nothing new is accepted, and what was
accepted just before still reaches handle().
"""

import asyncio
import json
import os
from pathlib import Path

from upgrade import Upgrader

VERSION = Path(__file__).with_name("VERSION").read_text().strip()  # what a deploy changes
up = Upgrader(pidfile=os.environ.get("PIDFILE", "/tmp/asyncio_server.pid"))
connections: set[asyncio.Task] = set()  # what must finish before this process leaves


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    connections.add(task := asyncio.current_task())
    try:
        while True:  # one request per turn; idle for 5 s (keep-alive timeout): close
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            await asyncio.sleep(float(head.split()[1][6:]) if head.startswith(b"GET /slow/") else 0)
            close = b"connection: close" in head.lower() or up.exit.is_set()
            body = json.dumps({"version": VERSION, "pid": os.getpid()}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
                         % (len(body), b"close" if close else b"keep-alive", body))
            await writer.drain()
            if close:
                break
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass  # the client left, stayed idle too long, or sent nonsense
    finally:
        writer.close()
        connections.discard(task)


async def main() -> None:
    sock = up.listen(os.environ.get("BIND", "127.0.0.1:8000"))
    await asyncio.start_server(handle, sock=sock)
    up.install_signals()  # in the loop: USR2 runs upgrade_async(), TERM/INT/QUIT set up.exit
    up.ready()
    await up.wait_exit()
    asyncio.get_running_loop().remove_reader(sock)  # stop accepting (not server.close(): see above)
    for _ in range(5):  # connections accepted just before start their handler (3 loop turns)
        await asyncio.sleep(0)
    await asyncio.gather(*connections)  # in-flight requests finish, kept-alive ones close
    up.close()


if __name__ == "__main__":
    asyncio.run(main())
