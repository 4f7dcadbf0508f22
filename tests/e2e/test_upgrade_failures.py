"""Upgrades that fail, and the guards around USR2 / WINCH, all under the CI load.

A deploy can go wrong in many ways; the promise is that it never costs a request and
never leaves the service half-switched. Each case runs the same 17-thread load as the
CI test (TCP and unix, kept-alive and closing, slow requests, pausers) and proves:

- the new app fails to import / the new master is `kill -9`ed before ready / it hangs
  before ready (the master's --upgrade-timeout; a client that gives up earlier changes
  nothing) / the interpreter path is gone at exec time: `hotswap upgrade` and the script
  both exit non-zero with the reason, and the old generation kept serving alone (every
  request answered by the old master with the old code), PIDFILE names it again, no
  .oldbin is left, and its unix socket path still accepts;
- WINCH without a newer generation is ignored (it may be a terminal resize);
- a second USR2 while an upgrade runs, and USR2 to a new master whose parent is still
  alive, are refused (and recorded as refused): exactly one new master is ever started;
- the manual mode's rollback after WINCH (HUP old, QUIT new) serves the old code without
  putting it back on disk, and the server's own rollback when the new master exits during
  the drain leaves the old master serving, with 0 failed requests.
"""

from __future__ import annotations

import os
import signal
import site
import sys
import threading
import time
from pathlib import Path

import pytest
from load import (
    BackgroundUpgrade,
    Record,
    ToolRun,
    run_upgrade_tool,
    tcp_session,
)
from rig import SLOW_IMPORT, Served
from support import wait_for, workers_of

from pidfiles import procs
from upgrade import names, record


def _assert_failed(run: ToolRun, rig: Served, reason: str) -> None:
    """Non-zero, and the one final line says the old master serves and why."""
    assert run.returncode == 1, run.explain()
    assert run.line.startswith(f"upgrade failed, old master {rig.pid} still serving: ") \
        or (run.report or {}).get("line", "").startswith(
            f"upgrade failed, old master {rig.pid} still serving: "), run.explain()
    assert reason in run.stdout, run.explain()
    if run.tool == "cli":
        assert run.report is not None, run.explain()
        assert run.report["outcome"] == "failed", run.explain()


# -- failed upgrades: nothing changes, nothing is lost ---------------------------------------


@pytest.mark.timeout(60)
def test_new_app_that_cannot_import(served) -> None:
    rig = served()
    rig.new_app("v2", 'raise RuntimeError("v2 is broken")')
    for tool in ("cli", "script"):
        run = run_upgrade_tool(tool, rig.pidfile)
        _assert_failed(run, rig, "RuntimeError: v2 is broken")
        rig.assert_old_generation_intact()
    rig.finish(only_master=rig.pid, only_version="v1")


@pytest.mark.timeout(60)
def test_new_master_killed_before_ready(served) -> None:
    rig = served()
    rig.new_app("v2", SLOW_IMPORT.format(seconds=3))
    orphans: list[int] = []
    for tool in ("cli", "script"):
        with BackgroundUpgrade(tool, rig.pidfile) as upgrade:
            new = rig.new_master()
            wait_for(lambda new=new: len(workers_of(new)) == 2, what="the new workers to fork")
            orphans += workers_of(new)
            os.kill(new, signal.SIGKILL)
            killed = time.monotonic()
            run = upgrade.finish()
        _assert_failed(run, rig, f"new master {new} killed by signal 9")
        rig.assert_old_generation_intact()
    # The killed masters' workers must never serve, not even once their slow import is
    # done: keep the load on past that moment (only the old master may answer).
    wait_for(lambda: not [w for w in orphans if procs.is_alive(w)], what="orphans to go")
    wait_for(lambda: rig.load.finished_since(killed + 3.5) >= 20, timeout=15,
             what="requests after the orphans' import would have finished")
    rig.finish(only_master=rig.pid, only_version="v1")


@pytest.mark.timeout(60)
def test_new_master_that_hangs_is_stopped_at_the_deadline(served) -> None:
    rig = served("--upgrade-timeout", "3")
    rig.new_app("v2", SLOW_IMPORT.format(seconds=600))
    # The master's own deadline (--upgrade-timeout 3) under `hotswap upgrade` ...
    run = run_upgrade_tool("cli", rig.pidfile)
    _assert_failed(run, rig, "was not ready within 3 s")
    assert 3 <= run.seconds < 15
    rig.assert_old_generation_intact()
    # ... and a client with a shorter deadline gives up following, and changes nothing:
    # the server still stops the late master at its own deadline.
    for tool in ("cli", "script"):
        before = record.read_state(str(rig.pidfile))
        run = run_upgrade_tool(tool, rig.pidfile, timeout=1)
        assert run.returncode == 1 and "goes on in the server" in run.stdout, run.explain()

        def gave_up(before=before) -> bool:
            rec = record.read_state(str(rig.pidfile))
            return (rec is not None and before is not None and rec.id != before.id
                    and rec.state == names.STATE_FAILED
                    and "was not ready within 3 s" in rec.reason)

        wait_for(gave_up, timeout=15, what="the server to give up on the late master")
        rig.assert_old_generation_intact()
    rig.finish(only_master=rig.pid, only_version="v1")


@pytest.mark.timeout(60)
def test_interpreter_gone_at_exec_time(served, tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.symlink_to(os.path.realpath(sys.executable))
    # In a virtualenv, realpath() is the base interpreter, which does not see the venv's
    # packages (the venv is found next to the path run, not the one linked to): lend them.
    packages = [*site.getsitepackages(), os.environ.get("PYTHONPATH", "")]
    rig = served(python=str(python), env={"PYTHONPATH": os.pathsep.join(p for p in packages if p)})
    python.unlink()  # the deploy removed the old virtualenv
    rig.new_app("v2")
    for tool in ("cli", "script"):
        run = run_upgrade_tool(tool, rig.pidfile)
        _assert_failed(run, rig, f"cannot exec {python}: No such file or directory")
        rig.assert_old_generation_intact()
    rig.finish(only_master=rig.pid, only_version="v1")


# -- the guards ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_winch_ignored_without_a_newer_generation(served) -> None:
    rig = served()
    before = workers_of(rig.pid)
    rig.m.signal(signal.SIGWINCH)
    rig.wait_log(rig.pid, "WINCH ignored: no newer generation is running")
    since = rig.load.records[-1].end
    wait_for(lambda: rig.load.finished_since(since) >= 20, what="requests after the WINCH")
    assert workers_of(rig.pid) == before
    rig.assert_old_generation_intact()
    rig.finish(only_master=rig.pid, only_version="v1")


@pytest.mark.timeout(60)
def test_second_usr2_is_refused_in_both_generations(served) -> None:
    rig = served("--upgrade-mode", "manual")
    rig.new_app("v2", SLOW_IMPORT.format(seconds=2))
    old = rig.pid
    rig.m.signal(signal.SIGUSR2)
    new = rig.new_master()
    # (a) while the first upgrade is still running
    rig.m.signal(signal.SIGUSR2)
    rig.wait_log(old, f"USR2 ignored: an upgrade is already running (new master {new}")
    assert [c for c in procs.children(old) if c not in workers_of(old)] == [new]
    refused = record.read_state(str(rig.pidfile))
    assert refused is not None and refused.state == names.STATE_REFUSED
    # A client asking now is told at once, with the master's own reason.
    run = run_upgrade_tool("cli", rig.pidfile)
    assert run.returncode == 1, run.explain()
    assert run.report is not None and run.report["outcome"] == "refused", run.explain()
    # Refused either by the old master (the upgrade runs) or, on a slow machine where the
    # new master got ready meanwhile, by the new one (its parent has not exited): both are
    # the running upgrade's guard, reported at once.
    assert ("upgrade refused: an upgrade is already running" in run.stdout
            or "is the new generation and the previous master" in run.stdout), run.explain()
    # (b) the new master, ready, while its parent has not exited
    rig.m.wait_ready(pid=new)
    rig.m.signal(signal.SIGUSR2, pid=new)
    rig.wait_log(new, f"USR2 ignored: this master ({new}) is the new generation and the "
                      f"previous master {old}")
    assert procs.children(new) == workers_of(new)
    # (c) the old master again, now that a newer generation serves
    rig.wait_log(old, f"new master {new} is ready")
    rig.m.signal(signal.SIGUSR2)
    rig.wait_log(old, f"USR2 ignored: an upgrade is already running (new master {new}, ready)")
    assert [c for c in procs.children(old) if c not in workers_of(old)] == [new]
    # Finish the upgrade by hand: the refused signals changed nothing.
    rig.m.signal(signal.SIGWINCH)
    rig.wait_log(old, "WINCH: parking all workers")
    rig.m.signal(signal.SIGQUIT)
    rig.m.wait_exit()
    rig.assert_old_generation_intact(master=new)
    records = rig.finish()
    assert {r.master for r in records} == {old, new}
    assert records[-1].version == "v2"


@pytest.mark.timeout(60)
def test_manual_rollback_after_winch_serves_the_old_code(served) -> None:
    rig = served("--upgrade-mode", "manual")
    old = rig.pid
    rig.new_app("v2")
    rig.m.signal(signal.SIGUSR2)
    new = rig.new_master()
    rig.m.wait_ready(pid=new)
    wait_for(lambda: rig.m.current_pid() == new, what="PIDFILE to name the new master")
    rig.m.signal(signal.SIGWINCH)
    state = lambda: record.read_state(str(rig.pidfile))  # noqa: E731
    wait_for(lambda: state() is not None and state().state == names.STATE_WATCHING,
             what="the old workers to be parked and idle")
    # v2 stays on disk: the parked workers still hold v1, and HUP brings them back.
    rig.m.signal(signal.SIGHUP)
    rig.wait_log(old, "HUP: bringing the parked workers back")
    rig.m.signal(signal.SIGQUIT, pid=new)
    wait_for(lambda: not procs.is_alive(new), what="the new master to exit")
    wait_for(lambda: rig.m.current_pid() == old, what="PIDFILE to name the old master again")
    wait_for(lambda: not Path(f"{rig.pidfile}.oldbin").exists(), what=".oldbin to go")
    rig.assert_old_generation_intact()
    since = rig.load.records[-1].end
    wait_for(lambda: rig.load.finished_since(since) >= 20, what="requests after the rollback")
    records = rig.finish()
    late = [r for r in records if r.start > since]
    assert {(r.master, r.version) for r in late} == {(old, "v1")}
    # Requests the new generation held when it was told to QUIT were answered, not cut.
    assert [r for r in records if r.master == new and r.kind == "slow" and r.keepalive
            and r.server_closed], "no slow request was in flight on the new master"
    final = record.read_state(str(rig.pidfile))
    assert final is not None and final.state == names.STATE_ROLLED_BACK


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tool", ["cli", "script"])
def test_server_rolls_back_when_new_master_exits_during_drain(served, tool: str) -> None:
    rig = served()
    old = rig.pid
    rig.new_app("v2")
    # A long request in an old worker's hands keeps the drain going well past the
    # moment the new master is gone.
    long_result: list[Record | BaseException] = []

    def long_request() -> None:
        try:
            with tcp_session() as session:
                response = session.get(f"{rig.base}/slow/5?mark", timeout=20)
                long_result.append(response)  # type: ignore[arg-type]
        except BaseException as exc:
            long_result.append(exc)

    holder = threading.Thread(target=long_request, daemon=True)
    holder.start()
    wait_for(lambda: list(rig.tmp.glob("inflight-*")), what="the long request to arrive")
    with BackgroundUpgrade(tool, rig.pidfile) as upgrade:
        wait_for(lambda: (record.read_state(str(rig.pidfile)) or record.UpgradeRecord("", 0))
                 .state == names.STATE_DRAINING, what="the drain to start")
        new = rig.m.current_pid()
        assert new is not None and new != old
        rig.m.signal(signal.SIGTERM, pid=new)  # the new master goes away during the drain
        run = upgrade.finish()
    holder.join(20)
    assert run.returncode == 1, run.explain()
    reason = f"new master {new} exited with status 0"
    line = f"upgrade rolled back, old master {old} still serving: {reason}"
    assert run.line == line or (run.report or {}).get("line") == line, run.explain()
    if tool == "cli":
        assert run.report is not None and run.report["outcome"] == "rolled back", run.explain()
    assert len(long_result) == 1 and getattr(long_result[0], "status_code", None) == 200, long_result
    rig.assert_old_generation_intact()
    since = rig.load.records[-1].end
    wait_for(lambda: rig.load.finished_since(since) >= 20, what="requests after the rollback")
    records = rig.finish()
    assert {(r.master, r.version) for r in records if r.start > since} == {(old, "v1")}
