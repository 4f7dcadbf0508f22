"""A ThreadingHTTPServer that upgrades in place: `kill -USR2 $(cat $PIDFILE)`.

    PIDFILE=/tmp/threaded.pid BIND=127.0.0.1:8000 python docs/examples/threaded_server.py

GET / answers {"version": <the VERSION file next to this script>, "pid": ...};
GET /slow/SECONDS sleeps first (something in flight to drain). On USR2 the Upgrader starts
this script again from the code on disk; once the new process said READY, `up.exit` is set
here: serve_forever() stops accepting, every response after that says `Connection: close`
(so kept-alive clients reconnect to the new process), server_close() waits for the handler
threads (daemon_threads = False), each of which ends after its current request or after
5 s idle (the keep-alive timeout), and close() writes `committed` for the upgrade client.
A new version that raises before ready() leaves this one serving: the upgrade fails.
"""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from upgrade import Upgrader

VERSION = Path(__file__).with_name("VERSION").read_text().strip()  # what a deploy changes


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 5.0  # an idle kept-alive connection closes after this

    def do_GET(self) -> None:
        if self.path.startswith("/slow/"):
            time.sleep(float(self.path[len("/slow/"):]))
        body = json.dumps({"version": VERSION, "pid": os.getpid()}).encode()
        self.close_connection = self.close_connection or up.exit.is_set()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close" if self.close_connection else "keep-alive")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


up = Upgrader(pidfile=os.environ.get("PIDFILE", "/tmp/threaded_server.pid"))
server = ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = up.listen(os.environ.get("BIND", "127.0.0.1:8000"))
server.daemon_threads = False  # server_close() waits for the requests in flight
threading.Thread(target=server.serve_forever, daemon=True).start()
up.install_signals()  # before ready(): a USR2 must never find the default action
up.ready()
up.exit.wait()
server.shutdown()
server.server_close()
up.close()
