"""TLS: real `requests` clients verifying a test CA, client certificates, bad input, and a
renewed certificate going live with `hotswap upgrade` (and HUP) under load."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from certs import TestCA
from load import ClientSpec, LoadGenerator, app_source, failure_report, run_upgrade_tool
from support import free_port, python_env, wait_for, write_app

from hotswap import __version__

ECHO_APP = '''
import hashlib, json, os
from wsgiref.util import FileWrapper

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/file":
        f = open(os.path.join(os.path.dirname(__file__), "payload.bin"), "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f)
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"x" * 10000 for _ in range(50))
    body = json.dumps({
        "remote_addr": environ["REMOTE_ADDR"], "remote_port": environ.get("REMOTE_PORT"),
        "scheme": environ["wsgi.url_scheme"], "software": environ["SERVER_SOFTWARE"],
        "pid": os.getpid(),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def start_tls(masters, tmp_path: Path, ca: TestCA, *args: str, serial: int = 1001):
    """A master serving ECHO_APP over TLS; returns (master, base URL, port, server pair)."""
    write_app(tmp_path, "echoapp", ECHO_APP)
    (tmp_path / "payload.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    pair = ca.issue("server", serial)
    port = free_port()
    master = masters("echoapp:app", "--bind", f"127.0.0.1:{port}", "--certfile", str(pair.cert),
                     "--keyfile", str(pair.key), *args, cwd=tmp_path)
    return master, f"https://127.0.0.1:{port}", port, pair


def served_serial(port: int, ca: TestCA) -> int:
    """The serial number of the certificate a new TLS connection gets (verified)."""
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return int(tls.getpeercert()["serialNumber"], 16)



def assert_stalled_clients_never_block(master, base: str, port: int, ca: TestCA,
                                       count: int) -> None:
    """`count` clients that send nothing, half a ClientHello, a lone byte; one sending plain
    HTTP: the next https requests are answered, and the stalled ones are still open."""
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    try:
        stalled[1].sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a ClientHello
        stalled[2].sendall(b"\x16")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert plain.recv(1024) == b""  # closed, no answer in clear text
        for _ in range(3):
            response = requests.get(f"{base}/echo", verify=str(ca.ca), timeout=5)
            assert response.status_code == 200
        for sock in stalled:  # still open: nothing was closed to make room
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in stalled:
            sock.close()
    wait_for(lambda: "plain HTTP sent to a TLS port" in master.log(), 10, what="the log line")
    assert "Traceback" not in master.log()

@pytest.mark.timeout(60)
def test_requests_over_tls_verified_against_the_test_ca(masters, tmp_path, ca) -> None:
    _, base, port, _ = start_tls(masters, tmp_path, ca, "--workers", "1")
    with requests.Session() as session:
        first = session.get(f"{base}/echo", verify=str(ca.ca), timeout=10)
        again = session.get(f"{base}/echo", verify=str(ca.ca), timeout=10)  # kept alive
        data = first.json()
        assert (data["scheme"], data["remote_addr"]) == ("https", "127.0.0.1")
        assert data["software"] == first.headers["Server"] == f"hotswap/{__version__}"
        assert again.json()["remote_port"] == data["remote_port"]  # the same connection
        payload = (tmp_path / "payload.bin").read_bytes()
        got = session.get(f"{base}/file", verify=str(ca.ca), timeout=10)  # no sendfile on TLS
        assert hashlib.sha256(got.content).digest() == hashlib.sha256(payload).digest()
        streamed = session.get(f"{base}/stream", verify=str(ca.ca), timeout=10)
        assert streamed.headers["Transfer-Encoding"] == "chunked"
        assert streamed.content == b"x" * 500000
    with pytest.raises(requests.exceptions.SSLError):  # not the system's trust store
        requests.get(f"{base}/echo", timeout=10)
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", ["1", "3"])
def test_plain_http_and_stalled_handshakes_never_block_the_worker(masters, tmp_path, ca,
                                                                  threads) -> None:
    """One worker; clients that send nothing, half a ClientHello, or plain HTTP must not
    hold it: the next https request is answered at once (--timeout is 30 s, far beyond
    the client's 5 s, so a handshake that blocked the loop would fail it)."""
    master, base, port, _ = start_tls(masters, tmp_path, ca, "--workers", "1", "--threads", threads,
                                      "--timeout", "30")
    assert_stalled_clients_never_block(master, base, port, ca, 4)


@pytest.mark.timeout(60)
def test_a_stalled_handshake_is_closed_after_the_timeout(masters, tmp_path, ca) -> None:
    _, base, port, _ = start_tls(masters, tmp_path, ca, "--workers", "1", "--timeout", "1.5")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(b"\x16\x03\x01")
        assert stalled.recv(1024) == b""  # the worker's sweep closed it
    assert requests.get(f"{base}/echo", verify=str(ca.ca), timeout=5).status_code == 200


def _tls_exchange(port: int, ca: TestCA, data: bytes) -> bytes:
    """Send `data` over a verified TLS connection; all it gets until the server closes."""
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(data)
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except (ConnectionError, ssl.SSLError):
            pass
        return answer


@pytest.mark.timeout(60)
def test_refused_and_late_requests_over_tls(masters, tmp_path, ca) -> None:
    """The loop's own answers over TLS: a 400 (then a lingering close run by the loop,
    which must not stall it) and a 408 for a head not complete within --timeout."""
    master, base, port, _ = start_tls(masters, tmp_path, ca, "--workers", "1", "--timeout", "2")
    bad = _tls_exchange(port, ca, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET / HT")
    assert bad.startswith(b"HTTP/1.1 400 "), bad
    for _ in range(3):
        assert requests.get(f"{base}/echo", verify=str(ca.ca), timeout=1.5).status_code == 200
    late = _tls_exchange(port, ca, b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    assert late.startswith(b"HTTP/1.1 408 "), late
    assert requests.get(f"{base}/echo", verify=str(ca.ca), timeout=5).status_code == 200
    assert "Traceback" not in master.log()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threads", ["1", "2"])
def test_pipelined_requests_and_a_unix_socket_over_tls(masters, tmp_path, ca, threads) -> None:
    _, _, port, _ = start_tls(masters, tmp_path, ca, "--workers", "1", "--threads", threads,
                              "--bind", f"unix:{tmp_path / 'tls.sock'}")
    two = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = _tls_exchange(port, ca, two)
    assert answer.count(b"HTTP/1.1 200 OK") == 2 and b'"scheme": "https"' in answer
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(str(tmp_path / "tls.sock"))
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while chunk := tls.recv(65536):
                got += chunk
    assert got.startswith(b"HTTP/1.1 200 OK") and b'"scheme": "https"' in got


@pytest.mark.timeout(60)
def test_client_certificate_required(masters, tmp_path, ca) -> None:
    master, base, _, _ = start_tls(masters, tmp_path, ca, "--workers", "1", "--ca-certs",
                                   str(ca.ca), "--cert-reqs", "2")
    client = ca.issue("client", 3001, client=True)
    stranger = TestCA(tmp_path / "other-pki").issue("client", 4001, client=True)
    for cert in (None, (str(stranger.cert), str(stranger.key))):
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(f"{base}/echo", verify=str(ca.ca), cert=cert, timeout=5)
    response = requests.get(f"{base}/echo", verify=str(ca.ca), cert=(str(client.cert),
                                                                      str(client.key)), timeout=5)
    assert response.json()["scheme"] == "https"
    wait_for(lambda: master.log().count("TLS handshake failed") >= 2, 10, what="two refusals")


@pytest.mark.timeout(60)
def test_client_certificate_optional(masters, tmp_path, ca) -> None:
    _, base, _, _ = start_tls(masters, tmp_path, ca, "--workers", "1", "--ca-certs", str(ca.ca),
                              "--cert-reqs", "1")
    client = ca.issue("client", 3001, client=True)
    for cert in (None, (str(client.cert), str(client.key))):
        assert requests.get(f"{base}/echo", verify=str(ca.ca), cert=cert,
                            timeout=5).status_code == 200


def _start_fails(tmp_path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "hotswap", "start", "--bind",
                           f"127.0.0.1:{free_port()}", *args], cwd=tmp_path, env=python_env(),
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.timeout(60)
def test_bad_certificate_files_are_one_line_and_exit_1(tmp_path, ca) -> None:
    pair = ca.issue("server", 1001)
    other = ca.issue("other", 1002)
    assert "certfile" in _start_fails(tmp_path, "--certfile", str(tmp_path / "missing.pem"))
    assert "does not match" in _start_fails(tmp_path, "--certfile", str(pair.cert),
                                            "--keyfile", str(other.key))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert "PEM" in _start_fails(tmp_path, "--certfile", str(tmp_path / "junk.pem"))
    assert "ca-certs" in _start_fails(tmp_path, "--certfile", str(pair.cert), "--keyfile",
                                      str(pair.key), "--ca-certs", str(tmp_path / "nope.pem"),
                                      "--cert-reqs", "2")
    assert "cert-reqs" in _start_fails(tmp_path, "--certfile", str(pair.cert), "--keyfile",
                                       str(pair.key), "--cert-reqs", "2")


@pytest.mark.timeout(90)
def test_upgrade_with_a_broken_certificate_keeps_the_old_generation(masters, tmp_path, ca) -> None:
    master, base, port, pair = start_tls(masters, tmp_path, ca, "--workers", "1")
    shutil.copy(ca.issue("other", 1002).key, pair.key)  # a key that does not match
    run = run_upgrade_tool("cli", master.pidfile, timeout=30)
    assert run.returncode == 1, run.explain()
    assert "does not match the certificate" in run.stdout + run.stderr, run.explain()
    assert master.current_pid() == master.pid
    assert served_serial(port, ca) == 1001
    assert requests.get(f"{base}/echo", verify=str(ca.ca), timeout=5).status_code == 200
    workers = master.workers()
    master.signal(signal.SIGHUP)  # a HUP with the same broken files: the running workers stay
    wait_for(lambda: "HUP: certfile" in master.log(), 10, what="the HUP refusal")
    assert "keeping the running configuration" in master.log()
    assert master.workers() == workers
    assert served_serial(port, ca) == 1001


@pytest.mark.timeout(120)
def test_renewed_certificate_goes_live_with_upgrade_and_hup_under_load(masters, tmp_path,
                                                                        ca) -> None:
    """The files are replaced in place (as certbot does), then `hotswap upgrade`: new
    connections get the new certificate, and not one request fails meanwhile."""
    write_app(tmp_path, "app", app_source("v1"))
    pair = ca.issue("server", 1001)
    port = free_port()
    master = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                     "--certfile", str(pair.cert), "--keyfile", str(pair.key),
                     "--watch-window", "1", cwd=tmp_path)
    clients = [ClientSpec(f"tls-keepalive-{i}") for i in range(3)]
    clients += [ClientSpec(f"tls-close-{i}", keepalive=False) for i in range(2)]
    clients += [ClientSpec("tls-slow-0", kind="slow"), ClientSpec("tls-pauser-0", kind="pauser")]
    load = LoadGenerator(f"https://127.0.0.1:{port}", None, clients, max_seconds=80,
                         verify=str(ca.ca))
    with load:
        wait_for(lambda: len(load.records) >= 20, 20, what="load to start")
        renewed = ca.issue("renewed", 2002)
        shutil.copy(renewed.cert, pair.cert)
        shutil.copy(renewed.key, pair.key)
        assert served_serial(port, ca) == 1001  # the running workers keep what they loaded
        run = run_upgrade_tool("cli", master.pidfile, timeout=30)
        assert run.returncode == 0, run.explain()
        assert served_serial(port, ca) == 2002
        new_master = master.current_pid()
        assert new_master and new_master != master.pid
        third = ca.issue("third", 3003)
        shutil.copy(third.cert, pair.cert)
        shutil.copy(third.key, pair.key)
        master.extra_pids.add(new_master)
        master.signal(signal.SIGHUP, new_master)
        wait_for(lambda: served_serial(port, ca) == 3003, 20, what="HUP to load the third cert")
        settle = time.monotonic()
        wait_for(lambda: load.finished_since(settle) >= 20, 20, what="load after the HUP")
    summary = load.summary()
    print("TLS upgrade+HUP load:", summary)
    assert not load.crashed, load.crashed
    assert summary["failures"] == 0, failure_report(load.records)
    assert summary["requests"] >= 100
