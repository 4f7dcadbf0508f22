"""--reuse-port: SO_REUSEPORT on the listeners, and the very same sockets across upgrades.

Issue 12 reports gunicorn's USR2 failing with reuse_port (an empty fd list); here the
listening socket must cross every upgrade as it is (one socket, same inode, option kept),
since a second SO_REUSEPORT socket bound beside it would get its own accept queue, and
whatever waited in the old one would be reset when it closed.
"""

from __future__ import annotations

import errno
import socket
import time

import pytest
from load import ClientSpec, LoadGenerator, app_source, failure_report, run_upgrade_tool
from support import free_port, wait_for, write_app


def listening_inodes(port: int) -> list[int]:
    """Inodes of the sockets listening on TCP `port` (IPv4), from /proc/net/tcp."""
    inodes = []
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                inodes.append(int(fields[9]))
    return inodes


def has_reuse_port(port: int) -> bool:
    """Whether the listener on 127.0.0.1:port has SO_REUSEPORT: only then may another
    SO_REUSEPORT socket of ours bind the same address (bound, never listening, closed)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        return True


@pytest.mark.timeout(60)
def test_without_the_option_the_port_is_exclusive(masters, tmp_path) -> None:
    write_app(tmp_path, "app", app_source("v1"))
    port = free_port()
    masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", cwd=tmp_path)
    assert not has_reuse_port(port)


@pytest.mark.timeout(150)
def test_reuse_port_kept_across_three_upgrades_under_load(masters, tmp_path) -> None:
    write_app(tmp_path, "app", app_source("v1"))
    port = free_port()
    master = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--reuse-port",
                     "--watch-window", "0.5", cwd=tmp_path)
    assert has_reuse_port(port)
    inodes = listening_inodes(port)
    assert len(inodes) == 1, inodes
    clients = [ClientSpec(f"tcp-keepalive-{i}") for i in range(3)]
    clients += [ClientSpec(f"tcp-close-{i}", keepalive=False) for i in range(3)]
    clients += [ClientSpec("tcp-slow-0", kind="slow"), ClientSpec("tcp-pauser-0", kind="pauser")]
    load = LoadGenerator(f"http://127.0.0.1:{port}", None, clients, max_seconds=120)
    masters_seen = [master.pid]
    with load:
        wait_for(lambda: len(load.records) >= 20, 20, what="load to start")
        for n in range(3):
            write_app(tmp_path, "app", app_source(f"v{n + 2}"))
            run = run_upgrade_tool("cli", master.pidfile, timeout=30)
            assert run.returncode == 0, run.explain()
            new = master.current_pid()
            assert new is not None and new not in masters_seen
            masters_seen.append(new)
            master.extra_pids.add(new)
            assert listening_inodes(port) == inodes  # the same socket, and no second one
            assert has_reuse_port(port)
        settle = time.monotonic()
        wait_for(lambda: any(r.ok and r.version == "v4" and r.start > settle
                             for r in load.records), 20, what="the last version to serve")
    summary = load.summary()
    print("reuse-port, 3 upgrades:", summary)
    assert not load.crashed, load.crashed
    assert summary["failures"] == 0, failure_report(load.records)
    assert summary["requests"] >= 100
