"""hotswap as PID 1 of a pid namespace, which is what `docker run` gives it.

The command is the README Dockerfile's CMD, run by `unshare --pid --fork --mount-proc`.
Under load, it is upgraded twice by USR2 to PID 1 (`docker kill -s USR2`) and twice by
`hotswap upgrade` run inside the namespace (`docker exec`, here `nsenter`). Proven:
not one request fails, PID 1 (the keeper) is the same process throughout, the new code
serves after each upgrade, no zombie is left, and TERM to PID 1 stops the service
gracefully with exit status 0, leaving no process behind.

Against the code before the keeper, the first USR2 already failed ("HOTSWAP_PARENT_PID='1'
is not a process id"), and a completed upgrade would have ended the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from load import LoadGenerator, app_source, failure_report, fetch, standard_clients
from support import (
    Master,
    free_port,
    group_members,
    masters_below,
    python_env,
    readme_block,
    wait_for,
    write_app,
    zombies_below,
)

from pidfiles import procs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"),
    reason="needs root and util-linux's unshare/nsenter for a pid namespace")


def dockerfile_command(port: int, pidfile: Path) -> list[str]:
    """The README Dockerfile's CMD, with this test's port and pidfile, as `start` args."""
    dockerfile = readme_block("dockerfile", "CMD")
    line = next(ln for ln in dockerfile.splitlines() if ln.startswith("CMD "))
    argv = json.loads(line[len("CMD "):])
    assert argv[:2] == ["hotswap", "start"], argv
    mapped = {"0.0.0.0:8000": f"127.0.0.1:{port}", "/tmp/hotswap.pid": str(pidfile)}
    args = [mapped.get(arg, arg) for arg in argv[2:]]
    assert str(pidfile) in args and f"127.0.0.1:{port}" in args, args
    return args


def ns_init(unshare_pid: int) -> int:
    """The namespace's PID 1, seen from outside: the child `unshare --fork` made."""
    return wait_for(lambda: (procs.children(unshare_pid) or [None])[0],
                    what="unshare to fork the namespace's init")


def ns_masters(init: int) -> list[int]:
    """hotswap masters in the namespace: below PID 1, or PID 1 itself without a keeper."""
    return [pid for pid in [init, *masters_below(init)]
            if (procs.cmdline(pid) or "").startswith("hotswap: master")]


def serves(base: str, version: str) -> bool:
    """The master is titled before it binds: refused until then is "not yet", not a failure."""
    try:
        return fetch(base)["version"] == version
    except requests.ConnectionError:
        return False


def wait_upgraded(init: int, old_master: int, version: str, base: str, m: Master) -> int:
    """Until the upgrade is complete: one master left (not the old one), new code served."""
    def done() -> int | None:
        masters = ns_masters(init)
        if len(masters) == 1 and masters[0] != old_master and fetch(base)["version"] == version:
            return masters[0]
        return None
    return wait_for(done, timeout=30, interval=0.05,
                    what=f"the upgrade to {version} to complete with one master; "
                         f"log:\n{m.log()[-2000:]}")


@pytest.mark.timeout(120)
def test_pid1_upgrades_by_usr2_and_exec_under_load(masters, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pidfile = tmp_path / "hotswap.pid"
    write_app(tmp_path, "myapp", app_source("v1"))
    args = dockerfile_command(port, pidfile) + ["--workers", "2", "--watch-window", "0"]
    m: Master = masters(*args, ready=False, cwd=tmp_path,
                        prefix=["unshare", "--pid", "--fork", "--mount-proc"])
    init = ns_init(m.pid)
    wait_for(lambda: len(ns_masters(init)) == 1 and serves(base, "v1"),
             timeout=15, what=f"the first master to serve; log:\n{m.log()}")
    clients = [c for c in standard_clients() if c.transport == "tcp"]
    load = LoadGenerator(base, None, clients)
    seen_masters = []
    with load:
        wait_for(lambda: len(load.records) > 20, what="load to run")
        for number, how in enumerate(["usr2", "usr2", "exec", "exec"], start=2):
            old = ns_masters(init)[0]
            version = f"v{number}"
            write_app(tmp_path, "myapp", app_source(version))
            if how == "usr2":
                os.kill(init, signal.SIGUSR2)  # docker kill -s USR2
            else:
                run = subprocess.run(
                    ["nsenter", "-t", str(init), "-p", "-m", sys.executable, "-m", "hotswap",
                     "upgrade", "--pidfile", str(pidfile), "--timeout", "30"],
                    env=python_env(), capture_output=True, text=True, timeout=60)
                assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{m.log()[-3000:]}"
            new = wait_upgraded(init, old, version, base, m)
            seen_masters.append(new)
            assert procs.is_alive(init) and m.proc.poll() is None, "PID 1 exited"
            assert procs.children(m.pid) == [init], "PID 1 was replaced"
            upgraded_at = time.monotonic()
            wait_for(lambda t=upgraded_at: load.finished_since(t) >= 10,
                     what="requests after the upgrade")
    assert not load.crashed, load.crashed
    records = load.records
    assert len(records) > 100
    assert not load.failures(), failure_report(records)
    assert len(set(seen_masters)) == 4
    # Orphans of every retired generation were reaped by PID 1.
    wait_for(lambda: not zombies_below(init), what=f"no zombies below PID 1: {zombies_below(init)}")
    os.kill(init, signal.SIGTERM)  # docker stop
    assert m.wait_exit(40) == 0, m.log()[-3000:]
    assert "TERM: graceful stop" in m.log()
    wait_for(lambda: not group_members(m.pgid), what="every process of the namespace to be gone")
    print(f"\nPID 1 upgrades: {len(records)} requests, 0 failed, masters {seen_masters}")
