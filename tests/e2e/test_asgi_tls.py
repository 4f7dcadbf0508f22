"""TLS for ASGI apps: `requests` and a `websockets` client verifying a test CA, on uvloop and
on asyncio's own loop (uvloop shadowed), plain HTTP and stalled handshakes that must not
hurt the worker, client certificates, and a renewed certificate after `hotswap upgrade`."""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from pathlib import Path

import pytest
import requests
from asgi_rig import install_fastapp, loop_env
from certs import TestCA
from load import ClientSpec, LoadGenerator, failure_report, run_upgrade_tool
from support import free_port, wait_for, write_app
from test_tls import assert_stalled_clients_never_block
from websockets.sync.client import connect

APP = '''
import json, os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send",
                        "text": scope["scheme"] + ":" + message["text"]})
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(50):
            await send({"type": "http.response.body", "body": b"x" * 10000, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    import asyncio, sys
    body = json.dumps({"scheme": scope["scheme"], "client": scope["client"],
                       "uvloop": "uvloop" in type(asyncio.get_running_loop()).__module__,
                       "pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''
LOOPS = ["uvloop", "asyncio"]


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def start_tls(masters, tmp_path: Path, ca: TestCA, loop: str, *args: str, serial: int = 1001):
    """A master serving APP over TLS on `loop`; returns (master, base URL, port, pair)."""
    write_app(tmp_path, "tlsapp", APP)
    env = loop_env(tmp_path, loop)
    pair = ca.issue("server", serial)
    port = free_port()
    master = masters("tlsapp:app", "--bind", f"127.0.0.1:{port}", "--certfile", str(pair.cert),
                     "--keyfile", str(pair.key), *args, cwd=tmp_path, env=env)
    return master, f"https://127.0.0.1:{port}", port, pair


def served_serial(port: int, ca: TestCA) -> int:
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return int(tls.getpeercert()["serialNumber"], 16)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_https_and_wss_verified_against_the_test_ca(masters, tmp_path, ca, loop) -> None:
    _, base, port, _ = start_tls(masters, tmp_path, ca, loop, "--workers", "1")
    with requests.Session() as session:
        first = session.get(f"{base}/echo", verify=str(ca.ca), timeout=10)
        again = session.get(f"{base}/echo", verify=str(ca.ca), timeout=10)  # kept alive
        data = first.json()
        assert (data["scheme"], data["client"][0], data["uvloop"]) == (
            "https", "127.0.0.1", loop == "uvloop")
        assert again.json()["client"] == data["client"]  # the same connection
        streamed = session.get(f"{base}/stream", verify=str(ca.ca), timeout=10)
        assert streamed.headers["Transfer-Encoding"] == "chunked"
        assert streamed.content == b"x" * 500000
    with pytest.raises(requests.exceptions.SSLError):  # not the system's trust store
        requests.get(f"{base}/echo", timeout=10)
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    with connect(f"wss://127.0.0.1:{port}/ws", ssl=ctx, open_timeout=10, close_timeout=5) as ws:
        for text in ("one", "two"):
            ws.send(text)
            assert ws.recv(timeout=10) == f"wss:{text}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_plain_http_and_stalled_handshakes_never_block_the_worker(masters, tmp_path, ca,
                                                                  loop) -> None:
    """One worker; clients that send nothing, half a ClientHello, or plain HTTP must not
    hold it (--timeout 30 s is far beyond the client's 5 s)."""
    master, base, port, _ = start_tls(masters, tmp_path, ca, loop, "--workers", "1",
                                      "--timeout", "30")
    assert_stalled_clients_never_block(master, base, port, ca, 3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_a_stalled_handshake_is_closed_after_the_timeout(masters, tmp_path, ca, loop) -> None:
    _, base, port, _ = start_tls(masters, tmp_path, ca, loop, "--workers", "1", "--timeout", "1.5")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(b"\x16\x03\x01")
        assert stalled.recv(1024) == b""  # ssl_handshake_timeout closed it
    assert requests.get(f"{base}/echo", verify=str(ca.ca), timeout=5).status_code == 200


@pytest.mark.timeout(60)
def test_client_certificate_required(masters, tmp_path, ca) -> None:
    master, base, port, _ = start_tls(masters, tmp_path, ca, "uvloop", "--workers", "1",
                                      "--ca-certs", str(ca.ca), "--cert-reqs", "2")
    client = ca.issue("client", 3001, client=True)
    stranger = TestCA(tmp_path / "other-pki").issue("client", 4001, client=True)
    for cert in (None, (str(stranger.cert), str(stranger.key))):
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(f"{base}/echo", verify=str(ca.ca), cert=cert, timeout=5)
    response = requests.get(f"{base}/echo", verify=str(ca.ca),
                            cert=(str(client.cert), str(client.key)), timeout=5)
    assert response.json()["scheme"] == "https"
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    ctx.load_cert_chain(str(client.cert), str(client.key))
    with connect(f"wss://127.0.0.1:{port}/ws", ssl=ctx, open_timeout=10, close_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "wss:hi"
    wait_for(lambda: master.log().count("TLS handshake failed") >= 2, 10, what="two refusals")


@pytest.mark.timeout(90)
def test_a_renewed_certificate_is_served_after_an_upgrade(masters, tmp_path, ca) -> None:
    master, base, port, pair = start_tls(masters, tmp_path, ca, "uvloop", "--workers", "2",
                                         "--watch-window", "1")
    assert served_serial(port, ca) == 1001
    renewed = ca.issue("renewed", 2002)
    shutil.copy(renewed.cert, pair.cert)  # replaced in place, as certbot does
    shutil.copy(renewed.key, pair.key)
    assert served_serial(port, ca) == 1001  # the running workers keep what they loaded
    run = run_upgrade_tool("cli", master.pidfile, timeout=30)
    assert run.returncode == 0, run.explain()
    new_master = master.current_pid()
    assert new_master and new_master != master.pid
    master.extra_pids.add(new_master)
    assert served_serial(port, ca) == 2002
    data = requests.get(f"{base}/echo", verify=str(ca.ca), timeout=5).json()
    assert data["scheme"] == "https"
    assert data["pid"] not in (master.pid, new_master)  # a worker of the new generation


@pytest.mark.timeout(150)
def test_renewed_certificates_under_https_load_across_two_upgrades(masters, tmp_path, ca) -> None:
    """A FastAPI app over TLS, certificates renewed in place before each of two upgrades:
    new connections get the new certificate, and not one request fails meanwhile (TLS
    handshakes in progress in a retiring worker are finished, never cut)."""
    app = install_fastapp(tmp_path, "v1")
    pair = ca.issue("server", 1001)
    port = free_port()
    master = masters(app, "--bind", f"127.0.0.1:{port}", "--workers", "2", "--certfile",
                     str(pair.cert), "--keyfile", str(pair.key), "--watch-window", "0.5",
                     "--graceful-timeout", "4", cwd=tmp_path)
    clients = [ClientSpec(f"tls-keepalive-{i}") for i in range(3)]
    clients += [ClientSpec(f"tls-close-{i}", keepalive=False) for i in range(3)]
    clients += [ClientSpec("tls-slow-0", kind="slow"), ClientSpec("tls-pauser-0", kind="pauser")]
    load = LoadGenerator(f"https://127.0.0.1:{port}", None, clients, max_seconds=120,
                         verify=str(ca.ca))
    with load:
        wait_for(lambda: len(load.records) >= 20, 20, what="load to start")
        for n, serial in ((2, 2002), (3, 3003)):
            renewed = ca.issue(f"renewed{serial}", serial)
            shutil.copy(renewed.cert, pair.cert)
            shutil.copy(renewed.key, pair.key)
            install_fastapp(tmp_path, f"v{n}")
            run = run_upgrade_tool("cli", master.pidfile, timeout=30)
            assert run.returncode == 0, run.explain() + master.log()[-3000:]
            master.extra_pids.add(master.current_pid())
            assert served_serial(port, ca) == serial
            settle = time.monotonic()
            wait_for(lambda: load.finished_since(settle) >= 20, 20,  # noqa: B023
                     what="load after the upgrade")
    summary = load.summary()
    print("ASGI TLS upgrades under load:", summary)
    assert not load.crashed, load.crashed
    assert summary["failures"] == 0, failure_report(load.records) + master.log()[-4000:]
    assert summary["requests"] >= 100
    assert {r.version for r in load.records} >= {"v1", "v3"}


@pytest.mark.timeout(120)
def test_workers_retiring_at_max_requests_finish_handshakes_in_progress(masters, tmp_path,
                                                                        ca) -> None:
    """--max-requests retires workers while they accept (no park first): a connection
    still in its TLS handshake at that moment is finished by the retiring worker, so new
    TLS connections never fail while workers come and go."""
    app = install_fastapp(tmp_path, "v1")
    pair = ca.issue("server", 1001)
    port = free_port()
    masters(app, "--bind", f"127.0.0.1:{port}", "--workers", "2", "--certfile", str(pair.cert),
            "--keyfile", str(pair.key), "--max-requests", "25", "--graceful-timeout", "4",
            cwd=tmp_path)
    clients = [ClientSpec(f"tls-close-{i}", keepalive=False) for i in range(6)]
    load = LoadGenerator(f"https://127.0.0.1:{port}", None, clients, max_seconds=60,
                         max_requests=120, think=0.0, verify=str(ca.ca))
    with load:
        wait_for(lambda: len(load.records) >= 600, 90, what="600 requests")
    summary = load.summary()
    print("ASGI TLS under --max-requests:", summary)
    assert not load.crashed, load.crashed
    assert summary["failures"] == 0, failure_report(load.records)
    assert len({r.worker for r in load.records}) >= 10  # workers did retire and come back
