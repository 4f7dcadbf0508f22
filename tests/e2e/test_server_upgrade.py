"""The upgrade runs in the server: USR2 alone finishes or rolls back, and a rollback
brings the OLD code back.

Each test attacks the promise the way a deploy goes wrong: a new version that boots but
is unhealthy, one whose workers crash after booting, a new master killed during the
watch window, an operator's HUP, an interrupted `hotswap upgrade`, a `--preload` app with
a helper process, a HUP that changes a bind and ships a broken app. The clients only
follow PIDFILE.upgrade; nothing they do (or fail to do) changes the outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from load import app_source, fetch, run_upgrade_tool, tool_env, upgrade_tool_argv
from rig import Served
from support import MasterFactory, free_port, get, wait_for, workers_of, write_app

from pidfiles import procs
from upgrade import names, record

UNHEALTHY = 'HEALTH = "503 Service Unavailable"'
CRASH_AFTER_BOOT = ("import os, threading, time\n"
                    "threading.Thread(target=lambda: (time.sleep(0.5), os._exit(1)), "
                    "daemon=True).start()")


def wait_final(pidfile: Path, old: int, timeout: float = 30.0) -> record.UpgradeRecord:
    """The record of the upgrade `old` runs, once it reached a final state."""
    def final() -> record.UpgradeRecord | None:
        rec = record.read_state(str(pidfile))
        return rec if rec is not None and rec.old == old and rec.final else None

    return wait_for(final, timeout, what=f"the upgrade of {old} to finish")


def wait_state(pidfile: Path, old: int, state: str, timeout: float = 20.0) -> record.UpgradeRecord:
    def reached() -> record.UpgradeRecord | None:
        rec = record.read_state(str(pidfile))
        if rec is not None and rec.old == old and rec.final and rec.state != state:
            raise AssertionError(f"upgrade ended {rec.state} before {state}: {rec.reason}")
        return rec if rec is not None and rec.old == old and rec.state == state else None

    return wait_for(reached, timeout, what=f"the upgrade of {old} to be {state}")


def served_versions(rig: Served, count: int = 20) -> set[tuple[int, str]]:
    """(master, version) of `count` fresh requests over TCP and the unix socket."""
    seen = set()
    for i in range(count):
        answer = fetch(rig.base) if i % 2 else fetch("http+unix://localhost", unix=rig.sock)
        seen.add((answer["master"], answer["version"]))
    return seen


# -- USR2 alone ------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_usr2_alone_upgrades_five_times_under_load(served) -> None:
    rig = served("--watch-window", "0.5")
    for number in range(2, 7):
        old = rig.m.current_pid()
        assert old is not None
        rig.new_app(f"v{number}")
        os.kill(old, signal.SIGUSR2)
        rec = wait_final(rig.pidfile, old)
        assert rec.state == names.STATE_COMMITTED, rec.line()
        wait_for(lambda old=old: not procs.is_alive(old), what=f"old master {old} to exit")
        new = rig.m.current_pid()
        assert new == rec.new and procs.is_hotswap_master(new)
        assert procs.children(new) == workers_of(new), "one generation: only its workers"
        assert not Path(f"{rig.pidfile}{names.SUFFIX_OLDBIN}").exists()
        assert served_versions(rig) == {(new, f"v{number}")}
        assert rec.ready is not None and rec.handover is not None and rec.commit is not None
        assert rec.ready <= rec.handover <= rec.commit
    history = record.read_history(str(rig.pidfile))
    assert [entry["result"] for entry in history] == ["upgraded"] * 5
    rig.finish()


# -- the health gate -------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["health-path", "health-url", "client-health-url"])
def test_unhealthy_version_never_goes_live(served, how: str) -> None:
    args = {"health-path": ["--health-path", "/healthz"],
            "health-url": ["--health-url", "http://127.0.0.1/healthz"],
            "client-health-url": []}[how]
    rig = served(*args)
    old = rig.pid
    rig.new_app("v2", UNHEALTHY)
    argv = upgrade_tool_argv("cli", rig.pidfile)
    if how == "client-health-url":
        argv += ["--health-url", f"{rig.base}/healthz"]
    for trial in range(10):
        done = subprocess.run(argv, capture_output=True, text=True, env=tool_env(), timeout=60)
        assert done.returncode == 1, f"trial {trial}: {done.stdout}{done.stderr}"
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["outcome"] == "failed", report
        assert "health check GET /healthz answered 503" in report["reason"] \
            or "/healthz answered 503" in report["reason"], report
        rig.assert_old_generation_intact()
    rig.finish(only_master=old, only_version="v1")


# -- rollback serves the old code ------------------------------------------------------------


def _symlinked_release(tmp: Path) -> tuple[Path, dict[str, str]]:
    """releases/v1/app.py behind a `current` symlink, started from `current` as a shell would."""
    release = tmp / "releases" / "v1"
    release.mkdir(parents=True)
    write_app(release, "app", app_source("v1"))
    current = tmp / "current"
    current.symlink_to(release)
    return current, {"PWD": str(current)}


def _deploy(rig: Served, deploy: str, version: str, prelude: str = "") -> None:
    if deploy == "inplace":
        rig.new_app(version, prelude)
        return
    release = rig.tmp / "releases" / version
    release.mkdir(parents=True)
    write_app(release, "app", app_source(version, prelude))
    switch = rig.tmp / "current.new"
    switch.symlink_to(release)
    os.replace(switch, rig.tmp / "current")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
@pytest.mark.parametrize("deploy", ["symlink", "inplace"])
def test_new_master_killed_in_watch_window_rolls_back_to_old_code(
        served, tmp_path: Path, preload: bool, deploy: str) -> None:
    app_dir, env = (None, None) if deploy == "inplace" else _symlinked_release(tmp_path)
    rig = served("--watch-window", "60", *(["--preload"] if preload else []),
                 app_dir=app_dir, env=env)
    old = rig.pid
    _deploy(rig, deploy, "v2")
    os.kill(old, signal.SIGUSR2)
    rec = wait_state(rig.pidfile, old, names.STATE_WATCHING)
    assert served_versions(rig) == {(rec.new, "v2")}, "the new code serves after the handover"
    os.kill(rec.new, signal.SIGKILL)
    rec = wait_final(rig.pidfile, old)
    assert rec.state == names.STATE_ROLLED_BACK, rec.line()
    assert f"new master {rec.new} killed by signal 9" in rec.reason
    wait_for(lambda: rig.m.current_pid() == old, what="PIDFILE to name the old master again")
    assert served_versions(rig) == {(old, "v1")}, "a rollback serves the OLD code"
    rig.assert_old_generation_intact()
    rig.finish()


@pytest.mark.timeout(60)
def test_hup_to_the_old_master_in_the_watch_window_rolls_back(served) -> None:
    rig = served("--watch-window", "60")
    old = rig.pid
    rig.new_app("v2")
    os.kill(old, signal.SIGUSR2)
    rec = wait_state(rig.pidfile, old, names.STATE_WATCHING)
    os.kill(old, signal.SIGHUP)
    rec = wait_final(rig.pidfile, old)
    assert rec.state == names.STATE_ROLLED_BACK and "HUP" in rec.reason, rec.line()
    wait_for(lambda: not procs.is_alive(rec.new), what="the new master to drain and exit")
    wait_for(lambda: rig.m.current_pid() == old, what="PIDFILE to name the old master again")
    assert served_versions(rig) == {(old, "v1")}
    rig.assert_old_generation_intact()
    rig.finish()


@pytest.mark.timeout(60)
def test_workers_crashing_after_boot_roll_back_in_the_watch_window(
        masters: MasterFactory, tmp_path: Path) -> None:
    port = free_port()
    write_app(tmp_path, "app", app_source("v1"))
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--watch-window", "10", cwd=tmp_path)
    write_app(tmp_path, "app", app_source("v2", CRASH_AFTER_BOOT))
    run = run_upgrade_tool("cli", m.pidfile)
    assert run.returncode == 1, run.explain()
    assert run.report is not None and run.report["outcome"] == "rolled back", run.explain()
    assert "new workers keep crashing" in run.report["reason"], run.explain()
    assert m.current_pid() == m.pid
    for _ in range(10):
        answer = get(f"http://127.0.0.1:{port}/").json()
        assert (answer["master"], answer["version"]) == (m.pid, "v1")
    wait_for(lambda: len(workers_of(m.pid)) == 2, what="2 old workers serving again")


@pytest.mark.timeout(60)
def test_health_url_failing_in_the_watch_window_rolls_back(served) -> None:
    rig = served("--health-url", "http://localhost/healthz", "--watch-window", "60")
    old = rig.pid
    rig.new_app("v2", "import os\nHEALTH = lambda: '503 Service Unavailable' "
                      "if os.path.exists('unhealthy') else '200 OK'")
    os.kill(old, signal.SIGUSR2)
    rec = wait_state(rig.pidfile, old, names.STATE_WATCHING)
    assert served_versions(rig) == {(rec.new, "v2")}
    (rig.tmp / "unhealthy").touch()  # v2 turns unhealthy after it went live
    rec = wait_final(rig.pidfile, old)
    assert rec.state == names.STATE_ROLLED_BACK, rec.line()
    assert "health check http://localhost/healthz answered 503" in rec.reason, rec.reason
    wait_for(lambda: not procs.is_alive(rec.new), what="the new master to drain and exit")
    wait_for(lambda: rig.m.current_pid() == old, what="PIDFILE to name the old master again")
    assert served_versions(rig) == {(old, "v1")}
    rig.assert_old_generation_intact()
    rig.finish()


# -- interrupted clients ---------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["INT", "HUP"])
def test_interrupting_the_client_changes_nothing(served, sig: int) -> None:
    """Killing `hotswap upgrade` at each step: the server finishes the upgrade by itself."""
    rig = served("--watch-window", "1")
    for number, state in enumerate((names.STATE_STARTING, names.STATE_DRAINING,
                                    names.STATE_WATCHING), start=2):
        old = rig.m.current_pid()
        assert old is not None
        rig.new_app(f"v{number}", "import time\ntime.sleep(0.6)")
        marks = set(rig.tmp.glob("inflight-*"))
        holder = subprocess.Popen([sys.executable, "-c", (
            "import requests, sys; requests.get(sys.argv[1], timeout=20).raise_for_status()"),
            f"{rig.base}/slow/1.5?mark"], env=tool_env())
        try:
            wait_for(lambda marks=marks: set(rig.tmp.glob("inflight-*")) - marks,
                     what="the slow request to reach an old worker")
            client = subprocess.Popen(upgrade_tool_argv("cli", rig.pidfile), env=tool_env(),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
            try:
                wait_state(rig.pidfile, old, state)
                client.send_signal(sig)
                client.wait(10)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait(10)
            rec = wait_final(rig.pidfile, old)
            assert rec.state == names.STATE_COMMITTED, rec.line()
        finally:
            holder.wait(30)
        assert holder.returncode == 0, "the slow request held across the upgrade was answered"
        assert served_versions(rig) == {(rec.new, f"v{number}")}
    run = run_upgrade_tool("cli", rig.pidfile)  # and the next upgrade works
    assert run.returncode == 0, run.explain()
    rig.finish()


# -- what the drain counts, and what HUP changes ---------------------------------------------


@pytest.mark.timeout(60)
def test_preload_app_with_a_helper_process_upgrades(served) -> None:
    rig = served("--preload", "--watch-window", "0")
    helper = 'import subprocess\nHELPER = subprocess.Popen(["sleep", "60"])'
    for number in (2, 3):
        rig.new_app(f"v{number}", helper)
        old = rig.m.current_pid()
        run = run_upgrade_tool("cli", rig.pidfile)
        assert run.returncode == 0, run.explain()
        assert run.report is not None and run.report["old_pid"] == old
    assert served_versions(rig) == {(rig.m.current_pid(), "v3")}
    rig.finish()


@pytest.mark.timeout(60)
def test_hup_with_a_new_bind_and_a_broken_app_keeps_the_old_socket(
        masters: MasterFactory, tmp_path: Path) -> None:
    first, second = tmp_path / "one.sock", tmp_path / "two.sock"
    conf = tmp_path / "hotswap.toml"
    conf.write_text(f'bind = ["unix:{first}"]\nworkers = 2\n')
    write_app(tmp_path, "app", app_source("v1"))
    m = masters("app:app", "--config", str(conf), cwd=tmp_path)
    conf.write_text(f'bind = ["unix:{second}"]\nworkers = 2\n')
    write_app(tmp_path, "app", app_source("v2", 'raise RuntimeError("v2 is broken")'))
    m.signal(signal.SIGHUP)
    wait_for(lambda: "HUP: reload failed" in m.log(), what="the reload to fail")
    assert first.exists()
    for _ in range(10):
        assert fetch("http+unix://localhost", unix=first)["version"] == "v1"
    wait_for(lambda: not second.exists(), what="the new socket to be closed and removed")
