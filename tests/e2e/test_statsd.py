"""statsd over UDP, received on a socket the test opens: gunicorn's request, worker and log
metrics under `hotswap.`, and the upgrade metrics the old master sends from its record
(a committed upgrade with its four timers, a rolled-back one, a failed one); a statsd port
nobody listens on changes nothing for requests; a name that does not resolve is a one-line
startup error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import free_port, python_env, write_app
from udpsink import UdpSink

APP = '''\
def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    status = "404 Not Found" if environ["PATH_INFO"] == "/missing" else "200 OK"
    start_response(status, [("Content-Length", "2")])
    return [b"ok"]
'''


def _metrics(datagrams: list[bytes]) -> list[str]:
    """Every metric line (a datagram may carry several, one per line)."""
    return [line for d in datagrams for line in d.decode().split("\n") if line]


def _count(datagrams: list[bytes], line: str) -> int:
    return _metrics(datagrams).count(line)


def _timers(datagrams: list[bytes], name: str) -> list[float]:
    return [float(m.split(":")[1].split("|")[0]) for m in _metrics(datagrams)
            if m.startswith(name + ":") and m.endswith("|ms")]


@pytest.mark.timeout(60)
def test_request_worker_and_log_metrics(masters, tmp_path: Path, udp: UdpSink) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2",
            "--statsd-host", f"127.0.0.1:{udp.port}", "--statsd-prefix", "shop")
    udp.wait(lambda got: "shop.hotswap.workers:2|g" in _metrics(got), "the workers gauge")
    assert "shop.hotswap.generation:1|g" in _metrics(udp.drain())
    with requests.Session() as session:
        for path in ("/", "/", "/", "/missing", "/boom"):
            session.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    udp.wait(lambda got: _count(got, "shop.hotswap.requests:1|c") == 5, "five requests counted")
    got = udp.drain()
    assert _count(got, "shop.hotswap.request.status.200:1|c") == 3
    assert _count(got, "shop.hotswap.request.status.404:1|c") == 1
    assert _count(got, "shop.hotswap.request.status.500:1|c") == 1
    assert len(_timers(got, "shop.hotswap.request.duration")) == 5
    # the app's exception is logged with its traceback: gunicorn's log.exception counter
    udp.wait(lambda got: _count(got, "shop.hotswap.log.exception:1|c") == 1, "the exception counter")


def _upgrade(m, sink: UdpSink, outcome: str) -> list[bytes]:  # noqa: ANN001
    m.signal(signal.SIGUSR2)
    return sink.wait(lambda got: f"hotswap.upgrade.{outcome}:1|c" in _metrics(got),
                    f"hotswap.upgrade.{outcome}", timeout=40)


@pytest.mark.timeout(90)
def test_committed_upgrade_metrics(masters, tmp_path: Path, udp: UdpSink) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--watch-window", "0.5",
                "--statsd-host", f"127.0.0.1:{udp.port}")
    old = m.pid
    got = _upgrade(m, udp, "committed")
    m.extra_pids.add(m.current_pid() or old)
    assert _count(got, "hotswap.upgrade.started:1|c") == 1
    assert _count(got, "hotswap.upgrade.committed:1|c") == 1
    timers = {step: _timers(got, f"hotswap.upgrade.{step}") for step in ("ready", "drain", "handover",
                                                                       "commit")}
    assert all(len(values) == 1 for values in timers.values()), timers
    # the record's order: ready <= handover <= commit (all ms since USR2); commit waited the window
    assert timers["ready"][0] <= timers["handover"][0] <= timers["commit"][0]
    assert timers["commit"][0] >= 500
    assert "hotswap.generation:2|g" in _metrics(got)
    assert not any("rolled_back" in line or "failed" in line for line in _metrics(got))
    # the new generation's workers report requests too
    before = len(udp.drain())
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    udp.wait(lambda got: "hotswap.requests:1|c" in _metrics(got[before:]), "a request after the upgrade")


@pytest.mark.timeout(90)
def test_failed_upgrade_metrics(masters, tmp_path: Path, udp: UdpSink) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--statsd-host", f"127.0.0.1:{udp.port}")
    write_app(tmp_path, "app", 'raise RuntimeError("v2 is broken")\n')
    got = _upgrade(m, udp, "failed")
    assert _count(got, "hotswap.upgrade.started:1|c") == 1
    assert not any(line.startswith(("hotswap.upgrade.committed", "hotswap.upgrade.ready"))
                   for line in _metrics(got))
    # sent at startup, and again once the failure left generation 1 serving
    udp.wait(lambda got: _count(got, "hotswap.generation:1|g") == 2, "the generation gauge again")
    assert m.proc.poll() is None
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200


@pytest.mark.timeout(90)
def test_rolled_back_upgrade_metrics(masters, tmp_path: Path, udp: UdpSink) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--watch-window", "60",
                "--statsd-host", f"127.0.0.1:{udp.port}")
    old = m.pid
    m.signal(signal.SIGUSR2)
    udp.wait(lambda got: _timers(got, "hotswap.upgrade.handover"), "the handover", timeout=40)
    new = m.current_pid()
    assert new not in (None, old)
    m.extra_pids.add(new)
    os.kill(new, signal.SIGKILL)  # in the watch window: the old master takes over again
    got = udp.wait(lambda got: "hotswap.upgrade.rolled_back:1|c" in _metrics(got), "the rollback")
    udp.wait(lambda got: _count(got, "hotswap.generation:1|g") == 2, "generation 1 serving again")
    assert not any(line.startswith(("hotswap.upgrade.committed", "hotswap.upgrade.commit:"))
                   for line in _metrics(got))
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200


@pytest.mark.timeout(60)
def test_statsd_port_nobody_listens_on_costs_nothing(masters, tmp_path: Path) -> None:
    write_app(tmp_path, "app", APP)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # closed below: nothing listens there (ICMP unreachable)
    port = free_port()
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--statsd-host", f"127.0.0.1:{dead}")
    codes = []
    with requests.Session() as session:
        for _ in range(200):
            codes.append(session.get(f"http://127.0.0.1:{port}/", timeout=10).status_code)
    assert codes == [200] * 200
    assert m.proc.poll() is None and len(m.workers()) == 1
    assert "ERROR" not in m.log() and "Traceback" not in m.log()


@pytest.mark.timeout(30)
def test_statsd_host_that_does_not_resolve_is_a_startup_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hotswap", "start", "--bind", "127.0.0.1:0",
                           "--statsd-host", "no-such-host.invalid:8125"], cwd=tmp_path,
                          env=python_env(), capture_output=True, text=True, timeout=25)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(
        "hotswap: error: statsd-host no-such-host.invalid:8125: cannot resolve"), done.stderr
