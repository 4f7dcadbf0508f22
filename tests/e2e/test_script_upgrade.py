"""scripts/hotswap-upgrade.sh against a real server: it sends USR2 and follows, nothing more.

- it completes an upgrade under the standard load (0 failed requests) and prints the
  line `hotswap upgrade` prints for the same record;
- a USR2 the master refuses is reported at once, while the running upgrade goes on;
- SIGINT or SIGHUP to the script at each step of an upgrade (new master booting, old
  workers draining, watch window) kills only the script: the server finishes the
  upgrade by itself, and the next upgrade through the script works;
- a stale .oldbin (dead pid, or a live stranger) does not block an upgrade, and the
  stranger gets no signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from load import app_source, fetch, tool_env
from support import Master, MasterFactory, free_port, wait_for, write_app

from pidfiles import procs
from upgrade import names, record

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "hotswap-upgrade.sh"
SLOW_IMPORT = "import time\ntime.sleep(2)"


def run_script(pidfile: Path, timeout: int = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), str(pidfile), str(timeout)], capture_output=True,
                          text=True, env=tool_env(), timeout=timeout + 30)


def latest(pidfile: Path) -> record.UpgradeRecord | None:
    return record.read_state(str(pidfile))


def wait_final(pidfile: Path, old: int, timeout: float = 30.0) -> record.UpgradeRecord:
    def final() -> record.UpgradeRecord | None:
        rec = latest(pidfile)
        return rec if rec is not None and rec.old == old and rec.final else None

    return wait_for(final, timeout, what=f"the upgrade of {old} to finish")


@pytest.mark.timeout(120)
def test_script_upgrades_twice_under_load(served) -> None:
    rig = served("--watch-window", "0")
    for number in (2, 3):
        old = rig.m.current_pid()
        assert old is not None
        rig.new_app(f"v{number}")
        done = run_script(rig.pidfile)
        assert done.returncode == 0, done.stdout + done.stderr
        rec = latest(rig.pidfile)
        assert rec is not None and rec.state == names.STATE_COMMITTED and rec.old == old
        assert done.stdout == rec.line() + "\n"  # the very line `hotswap upgrade` prints
        assert done.stdout.startswith(f"upgraded: {old} -> {rec.new} (generation {number}), ")
        assert rig.m.current_pid() == rec.new
        wait_for(lambda old=old: not procs.is_alive(old), what=f"old master {old} to exit")
        assert fetch(rig.base)["version"] == f"v{number}"
    rig.finish()


@pytest.mark.timeout(120)
def test_script_reports_a_refused_usr2_at_once(served) -> None:
    rig = served("--watch-window", "4")
    old = rig.pid
    rig.new_app("v2")
    os.kill(old, signal.SIGUSR2)
    watching = wait_for(lambda: (rec := latest(rig.pidfile)) and rec.old == old
                        and rec.state == names.STATE_WATCHING and rec, 20,
                        what="the first upgrade's watch window")
    # PIDFILE now names the new master, which refuses USR2 while its parent watches.
    assert rig.m.current_pid() == watching.new
    done = run_script(rig.pidfile)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("upgrade refused: "), done.stdout
    assert str(watching.new) in done.stdout
    # Answered before the running upgrade ended, which then ends as it would have.
    assert procs.is_alive(old)
    assert wait_final(rig.pidfile, old).state == names.STATE_COMMITTED
    rig.finish()


# -- killing the script at each step -----------------------------------------------------


class Slow:
    """A request held by the old generation for `seconds`, so its drain lasts that long."""

    def __init__(self, base: str, seconds: float) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(base, seconds), daemon=True)
        self.thread.start()

    def _run(self, base: str, seconds: float) -> None:
        try:
            fetch(base, f"/slow/{seconds}?mark")
        except BaseException as exc:  # noqa: BLE001  (kept for the test to report)
            self.error = exc


@pytest.fixture
def single(masters: MasterFactory, tmp_path: Path) -> Iterator[tuple[Master, str]]:
    port = free_port()
    write_app(tmp_path, "app", app_source("v1"))
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--watch-window", "2", cwd=tmp_path)
    yield m, f"http://127.0.0.1:{port}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("step", [names.STATE_STARTING, names.STATE_DRAINING,
                                  names.STATE_WATCHING])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["INT", "HUP"])
def test_killing_the_script_leaves_the_upgrade_to_the_server(
    single: tuple[Master, str], tmp_path: Path, step: str, sig: int
) -> None:
    m, base = single
    assert m.pidfile is not None
    old = m.pid
    before = latest(m.pidfile)
    write_app(tmp_path, "app", app_source("v2", SLOW_IMPORT if step == names.STATE_STARTING
                                          else ""))
    slow = None
    if step == names.STATE_DRAINING:
        slow = Slow(base, 4)  # in the old worker's hands before USR2: the drain waits for it
        wait_for(lambda: any(p.name.startswith("inflight-") for p in tmp_path.iterdir()), 10,
                 what="the slow request to reach the old worker")
    follower = subprocess.Popen(["sh", str(SCRIPT), str(m.pidfile), "60"], env=tool_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def at_step() -> bool:
            rec = latest(m.pidfile)
            if rec is None or rec.old != old or (before and rec.id == before.id):
                return False
            if rec.final:
                raise AssertionError(f"the upgrade ended ({rec.line()}) before {step}")
            return rec.state == step

        wait_for(at_step, 20, what=f"the upgrade to be {step}")
        follower.send_signal(sig)
        follower.wait(10)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
        out, err = follower.communicate()
    assert follower.returncode == -sig, (follower.returncode, out, err)
    assert out == ""  # it said nothing final: it did not see the end

    rec = wait_final(m.pidfile, old)
    assert rec.state == names.STATE_COMMITTED, rec.line()
    assert fetch(base)["version"] == "v2"
    if slow is not None:
        slow.thread.join(10)
        assert slow.error is None, slow.error

    # The next upgrade, through the script again, works (once the old master is gone: the
    # new one refuses USR2 while its parent lives).
    m.extra_pids.add(rec.new)  # reaped at teardown whatever happens
    wait_for(lambda: not procs.is_alive(old), 15, what=f"old master {old} to exit")
    write_app(tmp_path, "app", app_source("v3"))
    done = run_script(m.pidfile)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"upgraded: {rec.new} -> ")
    assert fetch(base)["version"] == "v3"


# -- a stale .oldbin blocks nothing ----------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("oldbin", ["dead", "stranger", "itself"])
def test_a_stale_oldbin_does_not_block_an_upgrade(
    single: tuple[Master, str], tmp_path: Path, oldbin: str
) -> None:
    """Left by a killed old master (its pid now dead or reused), or by an upgrade that
    could not remove it (naming the current master itself)."""
    m, base = single
    assert m.pidfile is not None
    path = Path(f"{m.pidfile}{names.SUFFIX_OLDBIN}")
    stranger = None
    if oldbin == "dead":
        gone = subprocess.Popen(["true"])
        gone.wait(10)
        named, said = gone.pid, f"ignoring stale {path}: {path} names {gone.pid}, which is not running"
    elif oldbin == "stranger":
        stranger = subprocess.Popen(["hotswap: master", "60"], executable="sleep")
        named, said = stranger.pid, (f"ignoring stale {path}: {path} names {stranger.pid}, "
                                     f"which is not a hotswap master (cmdline: hotswap: master 60)")
    else:
        named, said = m.pid, f"ignoring {path}: it names {m.pid}, the master {m.pidfile} names too"
    try:
        wait_for(lambda: stranger is None or procs.cmdline(stranger.pid) == "hotswap: master 60",
                 10, what="the stranger to exec")
        path.write_text(f"{named}\n")
        write_app(tmp_path, "app", app_source("v2"))
        done = run_script(m.pidfile)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"hotswap-upgrade: {said}" in done.stderr.splitlines(), done.stderr
        rec = latest(m.pidfile)
        assert rec is not None and rec.state == names.STATE_COMMITTED
        m.extra_pids.add(rec.new)
        assert fetch(base)["version"] == "v2"
        assert not path.exists()  # the old master wrote its own, then removed it
        assert stranger is None or stranger.poll() is None, "the stranger got a signal"
    finally:
        if stranger is not None:
            stranger.kill()
            stranger.wait(10)
