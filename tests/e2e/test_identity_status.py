"""`hotswap status` through a real upgrade: every master of both generations, the booting
new master, the running upgrade's state, then how it ended and the history.

Before, status only showed the masters PIDFILE and PIDFILE.oldbin name, so the new master
that was still booting (named by neither) was missing while an upgrade ran (issue 7).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from load import app_source
from support import MasterFactory, free_port, wait_for, write_app

from pidfiles import procs
from upgrade import names, record

REPO = Path(__file__).resolve().parents[2]
SLOW_IMPORT = "import time\ntime.sleep(2)"


def status(pidfile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "hotswap", "status", "--pidfile", str(pidfile),
                           *extra], capture_output=True, text=True, env=env, timeout=30)


def at(pidfile: Path, old: int, state: str) -> record.UpgradeRecord | None:
    rec = record.read_state(str(pidfile))
    if rec is not None and rec.old == old and rec.final and rec.state != state:
        raise AssertionError(f"the upgrade ended before {state}: {rec.line()}")
    return rec if rec is not None and rec.old == old and rec.state == state else None


@pytest.mark.timeout(90)
def test_status_follows_an_upgrade_from_boot_to_history(masters: MasterFactory,
                                                        tmp_path: Path) -> None:
    port = free_port()
    write_app(tmp_path, "app", app_source("v1"))
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--watch-window", "2", cwd=tmp_path)
    assert m.pidfile is not None
    old = m.pid
    write_app(tmp_path, "app", app_source("v2", SLOW_IMPORT))
    os.kill(old, signal.SIGUSR2)

    # 1. The new master boots (its worker imports the app for 2 s): PIDFILE still names old.
    starting = wait_for(lambda: at(m.pidfile, old, names.STATE_STARTING), 15,
                        what="the upgrade to start")
    new = starting.new
    assert new is not None
    wait_for(lambda: procs.is_new_master_of(new, old), 10, what="the new master to exec")
    shown = status(m.pidfile)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"current: master {old}, generation 1, 1 worker(s) ")
    assert lines[1].startswith(f"new: master, booting {new}, generation 2, "), shown.stdout
    assert lines[2] == f"upgrade in progress ({starting.id}): starting, {old} -> {new} " \
                      f"(generation 2)", shown.stdout
    found = json.loads(status(m.pidfile, "--json").stdout)
    assert [(x["role"], x["pid"]) for x in found["masters"]] == [("current", old), ("new", new)]
    assert found["upgrade_in_progress"] is True
    assert found["upgrade"]["state"] == names.STATE_STARTING
    assert found["findings"] == []  # .oldbin names old, as PIDFILE does: normal while booting

    # 2. Watch window: both generations, the old one with its parked worker.
    wait_for(lambda: at(m.pidfile, old, names.STATE_WATCHING), 20, what="the watch window")
    lines = status(m.pidfile).stdout.splitlines()
    assert lines[0].startswith(f"old: master {old}, generation 1, 1 worker(s) "), lines
    assert lines[1].startswith(f"current: master {new}, generation 2, 1 worker(s) "), lines
    assert lines[2].startswith(f"upgrade in progress ({starting.id}): watching, {old} -> {new} "
                               f"(generation 2), ready in "), lines

    # 3. Committed: one generation, the last upgrade's line and the history.
    done = wait_for(lambda: at(m.pidfile, old, names.STATE_COMMITTED), 20, what="the commit")
    m.extra_pids.add(new)
    wait_for(lambda: not procs.is_alive(old), 15, what="the old master to exit")
    shown = status(m.pidfile)
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"current: master {new}, generation 2, 1 worker(s) "), lines
    assert lines[1] == f"last upgrade ({done.id}): {done.line()}"
    assert lines[2] == "history (last 1):"
    # (the history keeps full-precision seconds, the state line 3 decimals: no equality)
    secs = r"\d+\.\d\d s"
    assert re.fullmatch(rf"  \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {old} -> {new} \(generation 2\): "
                        rf"upgraded, ready in {secs}, drained in {secs}, handover {secs}, "
                        rf"committed after {secs}", lines[3]), lines[3]
    assert len(lines) == 4, lines
    assert json.loads(status(m.pidfile, "--json").stdout)["history"][0]["new_pid"] == new


@pytest.mark.timeout(60)
def test_a_state_left_by_a_killed_old_master_is_not_an_upgrade_in_progress(
    masters: MasterFactory, tmp_path: Path
) -> None:
    port = free_port()
    m = masters("--bind", f"127.0.0.1:{port}", "--workers", "1")
    assert m.pidfile is not None
    gone = subprocess.Popen(["true"])
    gone.wait(10)
    Path(f"{m.pidfile}{names.SUFFIX_STATE}").write_text(
        f"id={gone.pid}.5 state=draining old={gone.pid} new={m.pid} generation=2 ready=0.100 "
        "drain=- handover=- commit=- reason=\n")
    shown = status(m.pidfile)
    assert shown.returncode == 0
    assert f"upgrade {gone.pid}.5 stopped at draining: its old master {gone.pid} is gone " \
           f"(stale, ignored)" in shown.stdout.splitlines()
    assert json.loads(status(m.pidfile, "--json").stdout)["upgrade_in_progress"] is False
