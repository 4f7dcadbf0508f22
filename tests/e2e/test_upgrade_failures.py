"""Upgrades that fail, and the guards around USR2 / WINCH, all under the CI load.

A deploy can go wrong in many ways; the promise is that it never costs a request and
never leaves the service half-switched. Each case runs the same 17-thread load as the
CI test (TCP and unix, kept-alive and closing, slow requests, pausers) and proves:

- the new app fails to import / the new master is `kill -9`ed before ready / it hangs
  before ready (the master's --upgrade-timeout, and the script's own deadline) / the
  interpreter path is gone at exec time: `hotswap upgrade` and the script both exit
  non-zero with the reason, and the old generation kept serving alone (every request
  answered by the old master with the old code), PIDFILE names it again, no .oldbin is
  left, and its unix socket path still accepts;
- WINCH without a newer generation is ignored (it may be a terminal resize);
- a second USR2 while an upgrade runs, and USR2 to a new master whose parent is still
  alive, are refused: exactly one new master is ever started;
- the manual rollback after WINCH (HUP old, QUIT new), and both tools' rollback when the
  new master exits during the drain, leave the old master serving with 0 failed requests.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from load import (
    BackgroundUpgrade,
    LoadGenerator,
    Record,
    ToolRun,
    app_source,
    failure_report,
    fetch,
    run_upgrade_tool,
    standard_clients,
    tcp_session,
)
from support import Master, MasterFactory, free_port, wait_for, workers_of, write_app

from pidfiles import procs

SLOW_IMPORT = "import time\ntime.sleep({seconds})"


class Served:
    """A master on TCP + unix under the standard load: the generation that must survive."""

    def __init__(self, masters: MasterFactory, tmp: Path, *args: str,
                 python: str | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.sock = tmp / "hotswap.sock"
        self.base = f"http://127.0.0.1:{self.port}"
        write_app(tmp, "app", app_source("v1"))
        self.m: Master = masters("app:app", "--bind", f"127.0.0.1:{self.port}",
                                 "--bind", f"unix:{self.sock}", "--workers", "2",
                                 "--threads", "4", *args, cwd=tmp, python=python)
        assert self.m.pidfile is not None
        self.pidfile = self.m.pidfile
        self.load = LoadGenerator(self.base, self.sock, standard_clients())

    def start_load(self) -> None:
        self.load.start()
        wait_for(lambda: self.load.all_served_by(self.m.pid), timeout=15,
                 what="every client to be answered once")

    @property
    def pid(self) -> int:
        return self.m.pid

    def new_app(self, version: str, prelude: str = "") -> None:
        write_app(self.tmp, "app", app_source(version, prelude))

    def log_has(self, pid: int, text: str) -> bool:
        """A line "[time] [pid] [LEVEL] ...text..." is in the master's log."""
        return any(f"] [{pid}] [" in line and text in line for line in self.m.log().splitlines())

    def wait_log(self, pid: int, text: str, timeout: float = 15.0) -> None:
        wait_for(lambda: self.log_has(pid, text), timeout,
                 what=f"[{pid}] ... {text!r} in the log:\n{self.m.log()[-3000:]}")

    def new_master(self, parent: int | None = None) -> int:
        """The child of `parent` that is not a worker, once it has exec'd and says so."""
        parent = parent or self.pid

        def found() -> int | None:
            others = [c for c in procs.children(parent) if c not in workers_of(parent)]
            for pid in others:
                if self.log_has(pid, f"master {pid} (generation"):
                    return pid
            return None

        return wait_for(found, 15, what=f"a new master under {parent}")

    def assert_old_generation_intact(self, master: int | None = None) -> None:
        """What an operator checks after a failed upgrade: nothing changed."""
        master = master or self.pid
        assert procs.is_hotswap_master(master)
        assert self.m.current_pid() == master
        assert not Path(f"{self.pidfile}.oldbin").exists()
        assert self.sock.exists()
        answer = fetch("http+unix://localhost", unix=self.sock)
        assert answer["master"] == master
        assert fetch(self.base)["master"] == master
        wait_for(lambda: len(workers_of(master)) == 2, what=f"2 workers under {master}")

    def finish(self, only_master: int | None = None, only_version: str | None = None) -> list[Record]:
        """Stop the load; 0 failures, and (if given) every request served by that master/code."""
        self.load.stop()
        records = self.load.records
        assert not self.load.crashed, self.load.crashed
        assert len(records) > 100
        assert not self.load.failures(), failure_report(records)
        if only_master is not None:
            others = {(r.master, r.version) for r in records} - {(only_master, only_version)}
            assert not others, f"requests served by another generation: {others}"
        return records


@pytest.fixture
def served(masters: MasterFactory, tmp_path: Path) -> Iterator:
    rigs: list[Served] = []

    def make(*args: str, python: str | None = None) -> Served:
        rig = Served(masters, tmp_path, *args, python=python)
        rigs.append(rig)  # before the load starts: teardown always stops it
        rig.start_load()
        return rig

    try:
        yield make
    finally:
        for rig in rigs:
            rig.load.stop()


def _assert_failed(run: ToolRun, rig: Served, reason: str) -> None:
    """Non-zero, and the one final line says the old master serves and why."""
    assert run.returncode == 1, run.explain()
    if run.tool == "cli":
        assert run.report is not None, run.explain()
        assert run.report["outcome"] == "failed", run.explain()
        assert run.report["line"].startswith(
            f"upgrade failed, old master {rig.pid} still serving: "), run.explain()
        assert reason in run.report["reason"], run.explain()
    else:
        assert run.line.startswith("failed: "), run.explain()
        assert reason in run.line, run.explain()


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
    # ... and the script's own, shorter deadline: it stops the late master itself.
    run = run_upgrade_tool("script", rig.pidfile, timeout=1)
    _assert_failed(run, rig, "new master not ready within 1 s; stopped ")
    rig.assert_old_generation_intact()
    rig.finish(only_master=rig.pid, only_version="v1")


@pytest.mark.timeout(60)
def test_interpreter_gone_at_exec_time(served, tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.symlink_to(os.path.realpath(sys.executable))
    rig = served(python=str(python))
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
    rig = served()
    rig.new_app("v2", SLOW_IMPORT.format(seconds=2))
    old = rig.pid
    rig.m.signal(signal.SIGUSR2)
    new = rig.new_master()
    # (a) while the first upgrade is still running
    rig.m.signal(signal.SIGUSR2)
    rig.wait_log(old, f"USR2 ignored: an upgrade is already running (new master {new})")
    assert [c for c in procs.children(old) if c not in workers_of(old)] == [new]
    # (b) the new master, ready, while its parent is not retired yet
    rig.m.wait_ready(pid=new)
    rig.m.signal(signal.SIGUSR2, pid=new)
    rig.wait_log(new, f"USR2 ignored: this master is the new generation and the old master {old}")
    assert procs.children(new) == workers_of(new)
    # (c) the old master again, now that a newer generation serves
    rig.wait_log(old, f"new master {new} is ready")
    rig.m.signal(signal.SIGUSR2)
    rig.wait_log(old, f"USR2 ignored: a newer generation (master {new}) is already running")
    assert [c for c in procs.children(old) if c not in workers_of(old)] == [new]
    # Finish the upgrade by hand: the refused signals changed nothing.
    rig.m.signal(signal.SIGWINCH)
    wait_for(lambda: not workers_of(old), what="the old workers to drain")
    rig.m.signal(signal.SIGQUIT)
    rig.m.wait_exit()
    rig.assert_old_generation_intact(master=new)
    records = rig.finish()
    assert {r.master for r in records} == {old, new}
    assert records[-1].version == "v2"


@pytest.mark.timeout(60)
def test_manual_rollback_after_winch(served) -> None:
    rig = served()
    old = rig.pid
    rig.new_app("v2")
    rig.m.signal(signal.SIGUSR2)
    new = rig.new_master()
    rig.m.wait_ready(pid=new)
    wait_for(lambda: rig.m.current_pid() == new, what="PIDFILE to name the new master")
    rig.m.signal(signal.SIGWINCH)
    wait_for(lambda: not workers_of(old), what="the old workers to drain")
    rig.new_app("v1")  # the operator puts the old code back, then:
    rig.m.signal(signal.SIGHUP)
    rig.wait_log(old, "HUP: reload complete")
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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tool", ["cli", "script"])
def test_tool_rolls_back_when_new_master_exits_during_drain(served, tool: str) -> None:
    rig = served()
    old = rig.pid
    rig.new_app("v2")
    # A long request in an old worker's hands keeps the drain going well past the
    # moment the new master is gone (its own graceful exit takes <= 1.5 s: the pausers).
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
        rig.wait_log(old, "WINCH: retiring all workers")
        new = rig.m.current_pid()
        assert new is not None and new != old
        rig.m.signal(signal.SIGTERM, pid=new)  # the new master goes away during the drain
        run = upgrade.finish()
    holder.join(20)
    assert run.returncode == 1, run.explain()
    reason = f"new master {new} exited during the drain"
    if tool == "cli":
        assert run.report is not None and run.report["outcome"] == "rolled back", run.explain()
        assert run.report["line"] == (
            f"upgrade rolled back, old master {old} still serving: {reason}"), run.explain()
    else:
        assert run.line == f"rolled back: {reason}", run.explain()
    assert len(long_result) == 1 and getattr(long_result[0], "status_code", None) == 200, long_result
    rig.assert_old_generation_intact()
    since = rig.load.records[-1].end
    wait_for(lambda: rig.load.finished_since(since) >= 20, what="requests after the rollback")
    records = rig.finish()
    assert {r.master for r in records if r.start > since} == {old}
