"""Live upgrades of a FastAPI app under HTTP and WebSocket load (issue 11).

The promise for ASGI apps is the WSGI one plus long-lived connections: through five
upgrades, 16 HTTP clients (kept-alive and closing, TCP and unix) get every answer, and 8
WebSocket clients (a message every 50 ms) are only ever closed with 1001 Going Away by a
retiring generation (never a reset, never 1006), reconnect to the new generation and
lose no message (each resends what was not echoed). A lifespan startup that raises fails
the upgrade with its reason, and the old generation goes on serving.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
from asgi_rig import install_fastapp
from load import ClientSpec, LoadGenerator, failure_report, run_upgrade_tool, tool_env
from support import REPO_ROOT, free_port, wait_for
from wsload import WsLoad

from pidfiles import procs

UPGRADES = 5


def http_clients() -> list[ClientSpec]:
    specs = [ClientSpec(f"tcp-keepalive-{i}") for i in range(6)]
    specs += [ClientSpec(f"tcp-close-{i}", keepalive=False) for i in range(4)]
    specs += [ClientSpec(f"unix-keepalive-{i}", transport="unix") for i in range(2)]
    specs += [ClientSpec("unix-close-0", transport="unix", keepalive=False)]
    specs += [ClientSpec(f"tcp-slow-{i}", kind="slow") for i in range(2)]
    specs += [ClientSpec("tcp-pauser-0", kind="pauser")]
    assert len(specs) == 16
    return specs


def start(masters, tmp_path, *args: str):
    app = install_fastapp(tmp_path, "v1")
    port = free_port()
    sock = tmp_path / "hotswap.sock"
    master = masters(app, "--bind", f"127.0.0.1:{port}", "--bind", f"unix:{sock}",
                     "--workers", "2", *args, cwd=tmp_path)
    return master, port, sock


def gone(master, pid: int) -> bool:
    """The first master is our child (reaped by poll); later ones are reaped by init."""
    if pid == master.pid:
        return master.proc.poll() is not None
    return not procs.is_alive(pid)


@pytest.mark.timeout(300)
def test_five_upgrades_under_http_and_websocket_load(masters, tmp_path) -> None:
    master, port, sock = start(masters, tmp_path, "--graceful-timeout", "4",
                               "--watch-window", "0.5")
    # ~30 s on an idle 2-core machine; the clients' own bound is far above it, so a slow
    # machine makes the test slow, not a client that stopped by itself look like a failure
    http = LoadGenerator(f"http://127.0.0.1:{port}", sock, http_clients(), max_seconds=280)
    ws = WsLoad(f"ws://127.0.0.1:{port}/ws", 8, max_seconds=280)
    current = master.pid
    runs = []
    try:
        http.start()
        ws.start()
        wait_for(lambda: ws.connected_to(current) and http.all_served_by(current), 20,
                 what="every client served once")
        for n in range(2, 2 + UPGRADES):
            install_fastapp(tmp_path, f"v{n}")
            run = run_upgrade_tool("cli", master.pidfile, timeout=30)
            assert run.returncode == 0, run.explain() + master.log()[-3000:]
            runs.append(run)
            new = master.current_pid()
            assert new is not None and new != current
            old = current
            # the old master leaves once its WebSockets are drained (1001 before the deadline)
            wait_for(lambda: gone(master, old), 20,  # noqa: B023
                     what=f"old master {old} to exit; log:\n{master.log()[-3000:]}")
            wait_for(lambda: ws.connected_to(new), 15,  # noqa: B023
                     what=f"every WebSocket client reconnected to {new}:\n{ws.describe()}\n"
                          f"{master.log()[-4000:]}")
            current = new
    finally:
        http.stop()
        ws.stop()
    assert not http.crashed and not ws.crashed, (http.crashed, ws.crashed)
    records = http.records
    assert len(records) > 300
    assert not http.failures(), failure_report(records) + "\n" + master.log()[-6000:]
    versions = {r.version for r in records}
    assert versions == {f"v{n}" for n in range(1, 2 + UPGRADES)}
    failures = [f for client in ws.clients for f in client.failures]
    assert not failures, failures
    connections = ws.connections
    assert {(c.ended_by, c.code) for c in connections} <= {("server", 1001), ("client", 1000)}
    assert sum(1 for c in connections if c.code == 1001) >= 8 * UPGRADES
    for conn in connections:
        if conn.previous_master is not None:  # a reconnect after 1001: the next generation
            assert conn.master != conn.previous_master, conn
    lost = {client.name: list(client.pending)[:5] for client in ws.clients if client.pending}
    assert not lost, f"messages never echoed: {lost}"
    assert sum(client.sent for client in ws.clients) > 8 * 100
    print(f"\n{len(records)} HTTP requests, 0 failed; {len(connections)} WebSocket connections, "
          f"{sum(c.code == 1001 for c in connections)} closed with 1001, "
          f"{sum(cl.sent for cl in ws.clients)} messages sent, all echoed; upgrades:\n"
          + "\n".join(str((r.report or {}).get("line")) for r in runs))


def test_failing_lifespan_startup_rolls_the_upgrade_back(masters, tmp_path) -> None:
    """The new generation's lifespan startup raises: `hotswap upgrade` reports its reason,
    exits 1, and the old generation serves as before (its WebSockets stay open too)."""
    master, port, _sock = start(masters, tmp_path)
    base = f"http://127.0.0.1:{port}"
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        ws.recv(timeout=10)
        install_fastapp(tmp_path, "v2")
        (tmp_path / "app.py").write_text(
            "import os\nos.environ['FASTAPP_FAIL_STARTUP'] = 'database unreachable'\n"
            "from fastapp import build\napp = build('v2')\n")
        run = run_upgrade_tool("cli", master.pidfile, timeout=30)
        assert run.returncode == 1, run.explain()
        assert "lifespan startup failed" in run.stdout + run.stderr, run.explain()
        assert "database unreachable" in run.stdout + run.stderr, run.explain()
        assert master.current_pid() == master.pid
        answer = requests.get(base + "/who", timeout=10).json()
        assert answer["version"] == "v1" and answer["master"] == master.pid
        ws.send("still here")
        assert ws.recv(timeout=10) == "echo still here"


def test_first_start_with_a_failing_lifespan_is_one_line(tmp_path) -> None:
    """A first start whose lifespan startup fails: the reason on one line, exit status 1."""
    app = install_fastapp(tmp_path)
    env = {**tool_env(), "FASTAPP_FAIL_STARTUP": "no config"}
    env["PYTHONPATH"] = os.pathsep.join((str(REPO_ROOT), env.get("PYTHONPATH", "")))
    done = subprocess.run([sys.executable, "-m", "hotswap", "start", app, "--bind",
                           f"127.0.0.1:{free_port()}", "--workers", "1"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("hotswap: error:") and "lifespan startup failed" in last, done.stderr
    assert "RuntimeError: no config" in last


def test_health_checks_gate_an_asgi_upgrade(masters, tmp_path) -> None:
    """--health-path (in-process ASGI request, after the lifespan startup) and --health-url
    (probed through the new generation's private socket) work for ASGI workers: a healthy
    upgrade commits; a version whose health path answers 404 is rolled back with that reason."""
    master, port, _sock = start(masters, tmp_path, "--health-path", "/lifespan",
                                "--health-url", "/who", "--watch-window", "0.5")
    install_fastapp(tmp_path, "v2")
    run = run_upgrade_tool("cli", master.pidfile, timeout=30)
    assert run.returncode == 0, run.explain() + master.log()[-3000:]
    new = master.current_pid()
    assert requests.get(f"http://127.0.0.1:{port}/who", timeout=10).json()["master"] == new
    wait_for(lambda: gone(master, master.pid), 20, what="the first master to exit")
    (tmp_path / "app.py").write_text(
        "from fastapp import build\napp = build('v3')\n"
        "app.router.routes = [r for r in app.router.routes if r.path != '/lifespan']\n")
    run = run_upgrade_tool("cli", master.pidfile, timeout=30)
    assert run.returncode == 1, run.explain()
    assert "health check GET /lifespan answered 404" in run.stdout + run.stderr, run.explain()
    assert requests.get(f"http://127.0.0.1:{port}/who", timeout=10).json()["version"] == "v2"
