"""Who a pidfile names: the commands signal only a real hotswap master (issue 7).

Pids are reused. A PIDFILE or PIDFILE.oldbin left by a killed master may name, a while
later, any process at all, even one whose command line mentions "hotswap" or that titles
itself like a master. `hotswap upgrade`, `stop`, `reload`, `status` and
scripts/hotswap-upgrade.sh must recognise such a file as stale, say what it names, signal
nothing (the strangers here die of any of USR2, TERM, QUIT, HUP, so surviving proves it)
and, for a stale .oldbin next to a real master, not let it block anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import MasterFactory, free_port, get, wait_for

from pidfiles import procs

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "hotswap-upgrade.sh"
IMPOSTOR = "import setproctitle, time; setproctitle.setproctitle('hotswap: master'); time.sleep(60)"


def run(argv: list[str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "hotswap", *args], cwd)


def script(pidfile: Path, timeout: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(["sh", str(SCRIPT), str(pidfile), str(timeout)], cwd, timeout=timeout + 20)


class Strangers:
    """Processes of ours that are not masters; all killed and reaped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def sleep(self, *argv: str) -> subprocess.Popen[bytes]:
        """`sleep` under another argv (e.g. with "hotswap" in it)."""
        proc = subprocess.Popen([*argv, "60"], executable="sleep")
        self.procs.append(proc)
        wait_for(lambda: procs.cmdline(proc.pid) == " ".join([*argv, "60"]), 10,
                 what="the stranger to exec")
        return proc

    def impostor(self) -> subprocess.Popen[bytes]:
        """A Python process titled exactly like a master (it starts after any file we wrote)."""
        proc = subprocess.Popen([sys.executable, "-c", IMPOSTOR])
        self.procs.append(proc)
        wait_for(lambda: procs.title(proc.pid) == "hotswap: master", 10,
                 what="the impostor to set its title")
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def strangers() -> Iterator[Strangers]:
    found = Strangers()
    try:
        yield found
    finally:
        found.close()


def write_pid(path: Path, pid: int, age: float = 0.0) -> None:
    path.write_text(f"{pid}\n")
    if age:
        past = time.time() - age
        os.utime(path, (past, past))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["mentions-hotswap", "titled-like-a-master"])
def test_stale_pidfile_and_oldbin_naming_strangers_get_no_signal(
    kind: str, strangers: Strangers, tmp_path: Path
) -> None:
    if kind == "mentions-hotswap":
        named = strangers.sleep("hotswap-old-master")
        expected = f"names {named.pid}, which is not a hotswap master (cmdline: hotswap-old-master 60)"
    else:
        named = strangers.impostor()
        expected = (f"names {named.pid}, titled like a hotswap master but started after the "
                    f"file was written (the pid was reused)")
    reused = strangers.sleep("hotswap: master")
    pidfile = tmp_path / "hotswap.pid"
    write_pid(pidfile, named.pid, age=60)  # written by a master long gone
    write_pid(tmp_path / "hotswap.pid.oldbin", reused.pid, age=60)

    for command in ("stop", "reload", "status"):
        done = cli(command, "--pidfile", str(pidfile), cwd=tmp_path)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert f"hotswap: error: {pidfile} {expected}" in done.stderr.splitlines(), \
            (command, done.stderr)
    if kind == "mentions-hotswap":  # the impostor case of `hotswap upgrade`: see below
        upgraded = cli("upgrade", "--pidfile", str(pidfile), "--timeout", "5", cwd=tmp_path)
        assert upgraded.returncode == 1, upgraded.stdout + upgraded.stderr
        assert f"{pidfile} names {named.pid}, which is not a hotswap master" in upgraded.stdout
    done = script(pidfile, 5, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == f"upgrade failed: no running master: {pidfile} {expected}\n"

    time.sleep(0.2)  # a signal, had one been sent, is delivered by now
    assert named.poll() is None and reused.poll() is None, "a stranger got a signal"
    assert pidfile.read_text() == f"{named.pid}\n"  # nobody rewrote what it cannot own


@pytest.mark.timeout(60)
def test_hotswap_upgrade_sends_no_usr2_to_an_impostor(strangers: Strangers, tmp_path: Path) -> None:
    impostor = strangers.impostor()
    pidfile = tmp_path / "hotswap.pid"
    write_pid(pidfile, impostor.pid, age=60)
    upgraded = cli("upgrade", "--pidfile", str(pidfile), "--timeout", "5", cwd=tmp_path)
    time.sleep(0.2)  # a signal, had one been sent, is delivered by now
    assert impostor.poll() is None, "the impostor got USR2 from `hotswap upgrade`"
    assert upgraded.returncode == 1


@pytest.mark.timeout(90)
def test_garbage_pidfile_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    pidfile = tmp_path / "hotswap.pid"
    for content, why in (("", "it is empty"), ("12ab\n", "holds no pid: '12ab'")):
        pidfile.write_text(content)
        for command in ("stop", "reload", "status"):
            done = cli(command, "--pidfile", str(pidfile), cwd=tmp_path)
            assert done.returncode == 1, (command, done.stderr)
            assert done.stderr.splitlines()[-1] == f"hotswap: error: {pidfile} is unreadable: {why}"
            assert "Traceback" not in done.stderr
        done = script(pidfile, 2, tmp_path)
        assert done.returncode == 1
        assert done.stdout.startswith(f"upgrade failed: no running master: {pidfile} is unreadable")


@pytest.mark.timeout(90)
def test_a_stale_oldbin_next_to_a_real_master_is_reported_and_ignored(
    masters: MasterFactory, strangers: Strangers, tmp_path: Path
) -> None:
    port = free_port()
    m = masters("--bind", f"127.0.0.1:{port}", "--workers", "1")
    assert m.pidfile is not None
    oldbin = tmp_path / "hotswap.pid.oldbin"
    reused = strangers.sleep("hotswap-master")
    write_pid(oldbin, reused.pid, age=60)

    shown = cli("status", "--pidfile", str(m.pidfile), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"current: master {m.pid}, generation 1, 1 worker(s) ")
    assert f"note: {oldbin} names {reused.pid}, which is not a hotswap master (cmdline: " \
           f"hotswap-master 60) (stale, ignored)" in lines
    assert "upgrade in progress" not in shown.stdout

    # .oldbin naming the current master itself (left when it could not be removed)
    write_pid(oldbin, m.pid)
    shown = cli("status", "--pidfile", str(m.pidfile), cwd=tmp_path)
    assert shown.returncode == 0
    assert f"note: {oldbin} names {m.pid}, the master {m.pidfile} names too (stale, ignored)" \
        in shown.stdout.splitlines()
    assert [line for line in shown.stdout.splitlines() if "master" in line and ": master" in line] \
        == [shown.stdout.splitlines()[0]], "the one master is listed once"

    write_pid(oldbin, reused.pid, age=60)
    reloaded = cli("reload", "--pidfile", str(m.pidfile), cwd=tmp_path)
    assert reloaded.returncode == 0 and reloaded.stdout == f"sent HUP to {m.pid}\n"
    stopped = cli("stop", "--pidfile", str(m.pidfile), cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == f"stopped {m.pid}\n"
    assert f"hotswap: note: {oldbin} names {reused.pid}, which is not a hotswap master" \
        in stopped.stderr
    assert m.wait_exit(10) == 0
    assert reused.poll() is None, "the stranger named by .oldbin got a signal"


@pytest.mark.timeout(60)
def test_status_json_names_the_verdicts(masters: MasterFactory, tmp_path: Path) -> None:
    port = free_port()
    m = masters("--bind", f"127.0.0.1:{port}", "--workers", "2")
    assert get(f"http://127.0.0.1:{port}/").status_code == 200
    import json

    found = json.loads(cli("status", "--pidfile", str(m.pidfile), "--json", cwd=tmp_path).stdout)
    assert found["pidfile_verdict"] == "master"
    [entry] = found["masters"]
    assert (entry["role"], entry["pid"], entry["booting"]) == ("current", m.pid, False)
    assert sorted(entry["workers"]) == sorted(m.workers())
    assert found["upgrade"] is None and found["history"] == [] and found["findings"] == []


@pytest.mark.timeout(60)
def test_an_impostor_in_the_pidfile_does_not_block_a_start(
    masters: MasterFactory, strangers: Strangers, tmp_path: Path
) -> None:
    impostor = strangers.impostor()
    pidfile = tmp_path / "hotswap.pid"
    write_pid(pidfile, impostor.pid, age=60)  # left by a master long gone; pid reused since
    port = free_port()
    m = masters("--bind", f"127.0.0.1:{port}", "--workers", "1")
    assert m.current_pid() == m.pid
    assert (f"[WARNING] removed stale pidfile {pidfile} naming pid {impostor.pid}, a live process "
            f"that is not a master (cmdline: hotswap: master)") in m.log()
    assert get(f"http://127.0.0.1:{port}/").status_code == 200
    assert impostor.poll() is None
