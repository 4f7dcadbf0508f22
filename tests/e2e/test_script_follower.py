"""scripts/hotswap-upgrade.sh follows PIDFILE.upgrade and reports each final state right.

The master here is a small real process that plays the old master's side of the state
file: titled `hotswap: master`, it writes PIDFILE after it started, and on USR2 writes
the state lines of one scripted upgrade (commit, rollback, failure, refusal, a hang, a
death). That pins down the script's reading of the file (its own id, old=, every final
state, the wording shared with `hotswap upgrade`) independently of the server, under
dash and under busybox (its sh, sed, awk, cat and stat); the upgrades of a real server
through the script are in test_script_upgrade.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import wait_for

from pidfiles import procs
from upgrade import record

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hotswap-upgrade.sh"
KEYS = ("id", "state", "old", "new", "generation", "ready", "drain", "handover", "commit")

FAKE = textwrap.dedent(
    r'''
    import os, signal, sys, time
    from setproctitle import setproctitle

    setproctitle("hotswap: master [fake]")
    PIDFILE, MODE = sys.argv[1], sys.argv[2]
    STATE = PIDFILE + ".upgrade"
    ME = os.getpid()
    NEW = ME + 100000

    def replace(path, text):
        tmp = "%s.%d.tmp" % (path, ME)
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)

    def state(uid, name, reason="-", **times):
        values = {"ready": "-", "drain": "-", "handover": "-", "commit": "-", **times}
        replace(STATE, "id=%s state=%s old=%d new=%d generation=2 ready=%s drain=%s "
                "handover=%s commit=%s reason=%s\n" % (uid, name, ME, NEW, values["ready"],
                values["drain"], values["handover"], values["commit"], reason))

    def upgrade():
        uid = "%d.%d" % (ME, time.time_ns() // 1_000_000)
        if MODE == "refuse":
            return state(uid, "refused", "another upgrade is running (id 1.2)")
        state(uid, "starting")
        time.sleep(0.1)
        if MODE == "hang":
            return
        if MODE == "die":
            os._exit(3)
        if MODE == "fail":
            return state(uid, "failed", "new master exited with status 1 before it was ready")
        state(uid, "ready", ready="0.123")
        time.sleep(0.1)
        state(uid, "draining", ready="0.123")
        time.sleep(0.1)
        state(uid, "watching", ready="0.123", drain="0.045", handover="0.168")
        time.sleep(0.1)
        if MODE == "rollback":
            return state(uid, "rolled-back", "new master's workers crashed 3 times = no good",
                         ready="0.123", drain="0.045", handover="0.168")
        state(uid, "committed", ready="0.123", drain="0.045", handover="0.168", commit="0.005")
        os._exit(0)

    usr2 = []
    signal.signal(signal.SIGUSR2, lambda *_: usr2.append(1))
    replace(PIDFILE, "%d\n" % ME)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if usr2:
            usr2.pop()
            upgrade()
        time.sleep(0.01)
    '''
)


class Fake:
    def __init__(self, tmp: Path, mode: str) -> None:
        self.pidfile = tmp / "hotswap.pid"
        self.state = tmp / "hotswap.pid.upgrade"
        self.proc = subprocess.Popen([sys.executable, "-c", FAKE, str(self.pidfile), mode])
        wait_for(lambda: self.pidfile.exists() and procs.title(self.proc.pid), 10,
                 what="the fake master to write its pidfile")
        self.pid = self.proc.pid
        self.new = self.pid + 100000

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[object]:
    started: list[Fake] = []

    def start(mode: str) -> Fake:
        started.append(Fake(tmp_path, mode))
        return started[-1]

    yield start
    for one in started:
        one.close()


BUSYBOX_TOOLS = ("sh", "sed", "awk", "cat", "stat", "sleep", "kill")


@pytest.fixture(params=["sh", "busybox"])
def shell(request, tmp_path_factory) -> list[str]:
    """The script under the system's sh (dash here) and under busybox with busybox's tools
    only: minimal images ship busybox, whose sed, awk and read differ from GNU's."""
    if request.param == "sh":
        return ["sh"]
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is not installed; scripts/test-deps.sh installs it "
                    "(apt-get install -y busybox)")
    tools = tmp_path_factory.mktemp("busybox")
    for tool in BUSYBOX_TOOLS:
        (tools / tool).symlink_to(busybox)
    return ["env", f"PATH={tools}", str(tools / "sh")]


@pytest.fixture
def run(shell: list[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the script (PIDFILE, TIMEOUT) under the shell of this test."""
    def run_script(pidfile: Path, timeout: str = "10") -> subprocess.CompletedProcess[str]:
        return subprocess.run([*shell, str(SCRIPT), str(pidfile), timeout], capture_output=True,
                              text=True, timeout=40)

    return run_script


@pytest.mark.timeout(30)
def test_committed(fake, run) -> None:
    m = fake("commit")
    done = run(m.pidfile)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == (f"upgraded: {m.pid} -> {m.new} (generation 2), ready in 0.12 s, "
                           f"drained in 0.04 s, handover 0.17 s, committed after 0.01 s\n")
    assert f"sent USR2 to {m.pid}" in done.stderr
    assert done.stdout == same_as_python(m)


def same_as_python(m: Fake) -> str:
    """The line `hotswap upgrade` prints for the state file as it is now."""
    rec = record.parse_state_line(m.state.read_text())
    assert rec is not None
    return rec.line() + "\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("mode", "line"), [
    ("rollback", "upgrade rolled back, old master {old} still serving: new master's workers "
                 "crashed 3 times = no good\n"),
    ("fail", "upgrade failed, old master {old} still serving: new master exited with status 1 "
             "before it was ready\n"),
    ("refuse", "upgrade refused: another upgrade is running (id 1.2)\n"),
    ("die", "upgrade failed: master {old} exited before it reported the upgrade\n"),
])
def test_every_other_end_exits_1_with_its_line(fake, run, mode: str, line: str) -> None:
    m = fake(mode)
    done = run(m.pidfile)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == line.format(old=m.pid)
    if mode != "die":
        assert done.stdout == same_as_python(m)


@pytest.mark.timeout(30)
def test_timeout_says_the_upgrade_goes_on_in_the_server(fake, run) -> None:
    m = fake("hang")
    done = run(m.pidfile, "1")
    assert done.returncode == 1
    assert done.stdout == ("upgrade not finished after 1 s (it is starting); it goes on in the "
                           "server, which finishes or rolls it back by itself\n")
    assert m.proc.poll() is None


@pytest.mark.timeout(30)
def test_a_final_state_from_before_our_usr2_is_not_our_answer(fake, run) -> None:
    m = fake("hang")
    # The last upgrade of this very master committed; our USR2 must get its own answer.
    m.state.write_text(f"id={m.pid}.1 state=committed old={m.pid} new=7 generation=2 ready=0.1 "
                       "drain=0.1 handover=0.1 commit=0.1 reason=-\n")
    done = run(m.pidfile, "1")
    assert done.returncode == 1
    assert done.stdout.startswith("upgrade not finished after 1 s (it is starting)"), done.stdout


@pytest.mark.timeout(30)
def test_a_state_of_another_master_is_not_our_answer(fake, run) -> None:
    m = fake("hang")
    done_before = run(m.pidfile, "1")  # starts the hang: state=starting, old=m
    assert "it is starting" in done_before.stdout
    other = m.pid + 1
    m.state.write_text(f"id={other}.5 state=committed old={other} new=7 generation=2 "
                       "ready=0.1 drain=0.1 handover=0.1 commit=0.1 reason=-\n")
    done = run(m.pidfile, "1")
    assert done.returncode == 1 and "upgraded" not in done.stdout, done.stdout


@pytest.mark.timeout(30)
def test_only_an_exact_title_that_wrote_the_file_is_a_master(run, tmp_path: Path) -> None:
    """A sleep titled "hotswap: master" but with more arguments, a process titled so but
    younger than the file: neither gets USR2, and the script says what each is."""
    glued = subprocess.Popen(["hotswap: master", "30"], executable="sleep")
    young = subprocess.Popen([sys.executable, "-c", "import setproctitle, time; "
                              "setproctitle.setproctitle('hotswap: master'); time.sleep(30)"])
    try:
        wait_for(lambda: procs.cmdline(glued.pid) == "hotswap: master 30", 10, what="exec")
        wait_for(lambda: procs.title(young.pid) == "hotswap: master", 10, what="the title")
        expected = {
            glued.pid: "which is not a hotswap master (cmdline: hotswap: master 30)",
            young.pid: "titled like a hotswap master but started after the file was written "
                       "(the pid was reused)",
        }
        for pid, what in expected.items():
            pidfile = tmp_path / f"{pid}.pid"
            pidfile.write_text(f"{pid}\n")
            os.utime(pidfile, (1_000_000_000, 1_000_000_000))
            done = run(pidfile, "2")
            assert done.returncode == 1
            assert done.stdout == f"upgrade failed: no running master: {pidfile} names {pid}, {what}\n"
        assert glued.poll() is None and young.poll() is None
    finally:
        for proc in (glued, young):
            proc.kill()
            proc.wait(10)
