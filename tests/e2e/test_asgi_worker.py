"""The ASGI worker keeps the WSGI worker's contract with the master and its clients.

Detection (ASGI 3, ASGI 2, --interface / TOML `interface`, an app that is neither),
lifespan (optional; shutdown runs on retirement), parking with open WebSockets, retirement
with long-lived connections (1001 Going Away, an event stream ended cleanly), --max-requests,
--timeout against an app that blocks its loop, http.disconnect, and backpressure on a
request body the app does not read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from asgi_rig import install_fastapp
from support import REPO_ROOT, free_port, get, wait_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

RAW = REPO_ROOT / "tests" / "apps" / "rawasgi.py"


def serve_raw(masters, tmp_path: Path, spec: str, *args: str, **kwargs):
    shutil.copy(RAW, tmp_path / "rawasgi.py")
    port = free_port()
    master = masters(spec, "--bind", f"127.0.0.1:{port}", *args, cwd=tmp_path, **kwargs)
    return master, f"http://127.0.0.1:{port}", port


def start_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "hotswap", "start", *args, "--bind",
                           f"127.0.0.1:{free_port()}", "--workers", "1"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


# -- detection ------------------------------------------------------------------------------


def test_asgi3_app_without_lifespan_is_served(masters, tmp_path) -> None:
    master, base, _ = serve_raw(masters, tmp_path, "rawasgi:app")
    answer = get(base + "/who")
    assert answer.status_code == 200 and answer.json()["path"] == "/who"
    assert "ASGI lifespan not supported by the app; serving without it" in master.log()


def test_asgi2_double_callable_is_served(masters, tmp_path) -> None:
    _, base, _ = serve_raw(masters, tmp_path, "rawasgi:Asgi2App")
    assert get(base + "/").json()["asgi"] == 2


def test_interface_from_the_config_file(masters, tmp_path) -> None:
    """A sync callable returning a coroutine is not recognisable: `interface = "asgi"`."""
    (tmp_path / "hotswap.toml").write_text('interface = "asgi"\n')
    _, base, _ = serve_raw(masters, tmp_path, "rawasgi:returns_coroutine", "--config",
                           str(tmp_path / "hotswap.toml"))
    assert get(base + "/x").json()["path"] == "/x"


def test_neither_wsgi_nor_asgi_is_one_line(tmp_path) -> None:
    shutil.copy(RAW, tmp_path / "rawasgi.py")
    done = start_run(tmp_path, "rawasgi:neither")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("hotswap: error: APP 'rawasgi:neither' is neither a WSGI app (environ, "
                    "start_response) nor an ASGI app (async scope, receive, send): it takes ()")


def test_bad_interface_value_in_the_config_file(tmp_path) -> None:
    (tmp_path / "bad.toml").write_text('interface = "rsgi"\n')
    done = start_run(tmp_path, "--config", str(tmp_path / "bad.toml"))
    assert done.returncode == 1
    assert done.stderr.strip() == ("hotswap: error: invalid configuration: interface must be "
                                   "auto, wsgi or asgi")


# -- parking, retirement, recycling -----------------------------------------------------


def test_parked_worker_with_websockets_says_empty_and_keeps_them(masters, tmp_path) -> None:
    """WINCH with a WebSocket open: `P` at once (the handover does not wait for it), the
    WebSocket keeps working, new connections go elsewhere; HUP resumes."""
    app = install_fastapp(tmp_path)
    port = free_port()
    master = masters(app, "--bind", f"127.0.0.1:{port}", "--workers", "1",
                     "--log-level", "debug", cwd=tmp_path)
    (worker,) = master.workers()
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        ws.recv(timeout=10)
        os.kill(worker, signal.SIGWINCH)
        wait_for(lambda: f"[{worker}] [DEBUG] parked and holding no HTTP request" in master.log(),
                 10, what="the parked worker to say it holds no HTTP request")
        ws.send("while parked")
        assert ws.recv(timeout=10) == "echo while parked"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as waiting:
            waiting.sendall(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            waiting.settimeout(0.5)
            with pytest.raises(TimeoutError):  # nobody accepts it: it waits in the queue
                waiting.recv(100)
            os.kill(worker, signal.SIGHUP)
            wait_for(lambda: f"[{worker}] [INFO] resumed: accepting again" in master.log(), 10)
            waiting.settimeout(10)
            assert waiting.recv(100).startswith(b"HTTP/1.1 200 OK")  # answered after HUP
        ws.send("after resume")
        assert ws.recv(timeout=10) == "echo after resume"


@pytest.mark.timeout(60)
def test_retirement_drains_websockets_and_streams_then_runs_lifespan_shutdown(
        masters, tmp_path) -> None:
    """TERM with a WebSocket and an event stream open: both last until shortly before the
    graceful timeout, then the WebSocket gets 1001 and the stream its last chunk (a clean
    end); lifespan shutdown runs; the master exits 0."""
    app = install_fastapp(tmp_path)
    port = free_port()
    marker = tmp_path / "shutdown.txt"
    master = masters(app, "--bind", f"127.0.0.1:{port}", "--workers", "1",
                     "--graceful-timeout", "3", cwd=tmp_path,
                     env={"FASTAPP_SHUTDOWN_FILE": str(marker)})
    (worker,) = master.workers()
    stream = requests.get(f"http://127.0.0.1:{port}/sse?n=100000&every=0.05", stream=True,
                          timeout=10)
    lines = stream.iter_lines()
    assert next(lines) == b"data: event 0"
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        ws.recv(timeout=10)
        master.signal(signal.SIGTERM)
        wait_for(lambda: f"[{worker}] [INFO] retiring" in master.log(), 10)
        for i in range(5):  # still served while retiring
            ws.send(f"retiring {i}")
            assert ws.recv(timeout=10) == f"echo retiring {i}"
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(200):
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    events = [line for line in lines if line]  # ends without a ChunkedEncodingError
    assert len(events) > 5 and events[-1].startswith(b"data: event ")
    assert master.wait_exit(15) == 0
    assert marker.read_text().split() == [str(worker)]
    assert "drain deadline near: closing 1 WebSocket(s) with 1001 and 1 stream(s)" in master.log()


def test_max_requests_recycles_the_worker(masters, tmp_path) -> None:
    _, base, _ = serve_raw(masters, tmp_path, "rawasgi:app", "--workers", "1",
                           "--max-requests", "10")
    with requests.Session() as session:
        workers = [session.get(base + "/who", timeout=10).json()["worker"] for _ in range(35)]
    assert len(set(workers)) >= 3


def test_an_app_blocking_its_loop_is_killed_after_timeout(masters, tmp_path) -> None:
    master, base, _ = serve_raw(masters, tmp_path, "rawasgi:app", "--workers", "1",
                                "--timeout", "2")
    (worker,) = master.workers()
    with pytest.raises(requests.RequestException):
        requests.get(base + "/block/30", timeout=20)
    wait_for(lambda: "timed out (no heartbeat" in master.log(), 10)
    answer = wait_for(lambda: _who(base), 10, what="a new worker to answer")
    assert answer["worker"] != worker


def _who(base: str) -> dict | None:
    try:
        return requests.get(base + "/who", timeout=2).json()
    except requests.RequestException:
        return None


# -- the connection -------------------------------------------------------------------------


def test_http_disconnect_reaches_the_app(masters, tmp_path) -> None:
    master, _, port = serve_raw(masters, tmp_path, "rawasgi:app", "--workers", "1")
    (worker,) = master.workers()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)  # not synchronisation: the test holds nothing on it (see below)
    wait_for(lambda: (tmp_path / f"disconnected-{worker}").exists(), 10,
             what="the app to receive http.disconnect")


def test_a_body_the_app_does_not_read_is_not_buffered_without_bound(masters, tmp_path) -> None:
    """Backpressure: /stall reads one piece, then nothing; a client pushing 64 MB gets
    stuck once the kernel buffers and the worker's bounded buffer are full."""
    _, _, port = serve_raw(masters, tmp_path, "rawasgi:app", "--workers", "1",
                           "--graceful-timeout", "1")
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        sock.sendall(b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 67108864\r\n\r\n")
        sock.settimeout(2)
        piece = b"x" * 65536
        try:
            while sent < 64 << 20:
                sent += sock.send(piece)
        except TimeoutError:
            pass
    assert sent < 16 << 20, f"the server took {sent} bytes of a body nobody reads"


def test_a_half_closed_client_still_gets_its_answers(masters, tmp_path) -> None:
    """Two pipelined requests then shutdown(SHUT_WR): both answered, then the close."""
    _, _, port = serve_raw(masters, tmp_path, "rawasgi:app", "--workers", "1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2 and b'"/a"' in data and b'"/b"' in data


def test_a_client_that_reads_nothing_is_cut(masters, tmp_path) -> None:
    """A response stuck on a client that reads nothing for 0.75 x --timeout is cut (the
    worker's memory is not filled with what the app keeps sending); others are served."""
    master, base, port = serve_raw(masters, tmp_path, "rawasgi:app", "--workers", "1",
                                   "--timeout", "2")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.sendall(b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: "client read nothing for 1.5 s; connection cut" in master.log(), 15,
                 what="the stalled response to be cut")
        assert get(base + "/who").status_code == 200


@pytest.mark.timeout(60)
def test_reload_drains_websockets_to_the_new_workers(masters, tmp_path) -> None:
    """HUP: new workers boot, the old ones retire; an open WebSocket on an old worker is
    closed with 1001 before the graceful timeout, and its reconnect reaches a new worker."""
    app = install_fastapp(tmp_path)
    port = free_port()
    master = masters(app, "--bind", f"127.0.0.1:{port}", "--workers", "1",
                     "--graceful-timeout", "2", cwd=tmp_path)
    (old,) = master.workers()
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["worker"] == old
        master.signal(signal.SIGHUP)
        with pytest.raises(ConnectionClosed) as closed:
            for i in range(400):
                ws.send(f"m{i}")
                ws.recv(timeout=10)
                time.sleep(0.02)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["worker"] not in (old,)


def test_an_event_stream_may_outlast_the_timeout(masters, tmp_path) -> None:
    """No deadline on a whole ASGI response: an event stream read by its client goes on
    past --timeout (unlike a WSGI response, cut at 0.75 x --timeout)."""
    _, base, _ = serve_raw(masters, tmp_path, "rawasgi:app", "--workers", "1", "--timeout", "1")
    with requests.get(base + "/sse", stream=True, timeout=10) as stream:
        lines = stream.iter_lines()
        # 60 events, 50 ms apart on the server: the response lasts ~3 s, thrice --timeout
        events = [line for line in (next(lines) for _ in range(120)) if line]
    assert events == [b"data: %d" % i for i in range(60)]
