"""Worker hooks of a Python config file with an ASGI app: post_worker_init after the lifespan
startup, pre_request/post_request per HTTP request (a streamed response: post_request once
its last body message is out; WebSocket sessions: neither), worker_int on QUIT, worker_exit
after the lifespan shutdown, worker_abort for a worker whose loop is blocked past --timeout."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from asgi_rig import loop_env
from support import MasterFactory, free_port, get, wait_for, workers_of, write_app
from websockets.sync.client import connect

HOOKS = '''
import os
OUT = {out!r}

def _line(name, *detail):
    with open(OUT, "a") as fh:
        fh.write(" ".join(str(part) for part in (name, os.getpid(), *detail)) + "\\n")

def post_fork(server, worker): _line("post_fork")
def post_worker_init(worker): _line("post_worker_init", worker.master_pid)
def worker_int(worker): _line("worker_int")
def worker_abort(worker): _line("worker_abort")
def pre_request(worker, req): _line("pre_request", req.method, req.path, req.query or "-", req.remote_addr)
def post_request(worker, req, environ, resp):
    _line("post_request", req.path, resp.status_code, resp.sent, environ["type"])
def worker_exit(server, worker): _line("worker_exit", server.pid)
'''

APP = '''
import asyncio, os, time
OUT = {out!r}

def _line(name):
    with open(OUT, "a") as fh:
        fh.write(f"{{name}} {{os.getpid()}}\\n")

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep(0.2)  # post_worker_init must wait for it
                _line("lifespan_startup")
                await send({{"type": "lifespan.startup.complete"}})
            else:
                _line("lifespan_shutdown")
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({{"type": "websocket.accept"}})
        message = await receive()
        await send({{"type": "websocket.send", "text": message["text"]}})
        await receive()
        return
    path = scope["path"]
    if path == "/hang":
        time.sleep(60)  # a bug: blocks the loop
    if path == "/stream":
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        for _ in range(3):
            await send({{"type": "http.response.body", "body": b"x" * 1000, "more_body": True}})
        await send({{"type": "http.response.body", "body": b""}})
        return
    if path == "/boom":
        raise RuntimeError("boom")
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]}})
    await send({{"type": "http.response.body", "body": b"ok"}})
'''


def lines_of(out: Path, pid: int) -> list[list[str]]:
    if not out.exists():
        return []
    rows = [line.split(" ") for line in out.read_text().splitlines()]
    return [[row[0], *row[2:]] for row in rows if int(row[1]) == pid]


def names_of(out: Path, pid: int) -> list[str]:
    return [row[0] for row in lines_of(out, pid)]


def start(masters: MasterFactory, tmp_path: Path, *args: str):
    out = tmp_path / "hooks.out"
    conf = tmp_path / "hooks.conf.py"
    conf.write_text(HOOKS.format(out=str(out)))
    write_app(tmp_path, "hookapp", APP.format(out=str(out)))
    port = free_port()
    master = masters("hookapp:app", "--config", str(conf), "--bind", f"127.0.0.1:{port}",
                     "--workers", "1", *args, cwd=tmp_path)
    return master, port, out


@pytest.mark.timeout(90)
def test_asgi_worker_hooks_in_order(masters: MasterFactory, tmp_path: Path) -> None:
    m, port, out = start(masters, tmp_path)
    [w1] = workers_of(m.pid)
    assert names_of(out, w1) == ["post_fork", "lifespan_startup", "post_worker_init"]
    assert lines_of(out, w1)[2] == ["post_worker_init", str(m.pid)]
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/a?x=1").text == "ok"
    assert get(f"{base}/stream").content == b"x" * 3000
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10, close_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
    assert get(f"{base}/boom").status_code == 500
    wait_for(lambda: names_of(out, w1).count("post_request") == 3, what="three post_request")
    assert lines_of(out, w1)[3:] == [
        ["pre_request", "GET", "/a", "x=1", "127.0.0.1"],
        ["post_request", "/a", "200", "2", "http"],
        ["pre_request", "GET", "/stream", "-", "127.0.0.1"],
        ["post_request", "/stream", "200", "3000", "http"],  # the whole stream, once
        ["pre_request", "GET", "/boom", "-", "127.0.0.1"],  # none for the WebSocket session
        ["post_request", "/boom", "500", "0", "http"],
    ]
    m.signal(signal.SIGQUIT, w1)
    wait_for(lambda: "worker_exit" in names_of(out, w1), what="worker_exit after QUIT")
    assert names_of(out, w1)[-2:] == ["worker_int", "worker_exit"]
    w2 = wait_for(lambda: [p for p in workers_of(m.pid) if p != w1], what="a new worker")[0]
    wait_for(lambda: "post_worker_init" in names_of(out, w2), what="the new worker's init")
    m.signal(signal.SIGTERM)
    assert m.wait_exit(30) == 0
    assert names_of(out, w2) == ["post_fork", "lifespan_startup", "post_worker_init",
                                 "lifespan_shutdown", "worker_exit"]  # TERM: no worker_int
    assert lines_of(out, w2)[-1] == ["worker_exit", str(m.pid)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_blocked_asgi_worker_gets_sigabrt_and_its_worker_abort_hook_runs(
        masters: MasterFactory, tmp_path: Path, loop: str) -> None:
    out = tmp_path / "hooks.out"
    conf = tmp_path / "hooks.conf.py"
    conf.write_text(HOOKS.format(out=str(out)))
    write_app(tmp_path, "hookapp", APP.format(out=str(out)))
    port = free_port()
    env = loop_env(tmp_path, loop)
    m = masters("hookapp:app", "--config", str(conf), "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--timeout", "2", cwd=tmp_path, env=env)
    [hung] = workers_of(m.pid)
    try:
        get(f"http://127.0.0.1:{port}/hang", timeout=20)
    except OSError:
        pass  # the worker left without answering
    wait_for(lambda: "worker_exit" in names_of(out, hung), 20, what="the aborted worker's exit")
    # the abort unwinds the request (its post_request says no response: status 0)
    assert lines_of(out, hung)[3:] == [["pre_request", "GET", "/hang", "-", "127.0.0.1"],
                                       ["worker_abort"], ["post_request", "/hang", "0", "0", "http"],
                                       ["worker_exit", str(m.pid)]]
    wait_for(lambda: f"worker {hung} exited with status 1; replacing it" in m.log(),
             what="the aborted worker to be reaped and replaced")
    wait_for(lambda: [p for p in workers_of(m.pid) if p != hung], what="a new worker")
    assert get(f"http://127.0.0.1:{port}/").text == "ok"
