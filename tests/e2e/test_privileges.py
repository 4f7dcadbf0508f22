"""--user / --group: workers run as nobody:nogroup, the master stays root, an upgrade's
new workers drop too, and what workers must reopen (the error log) is theirs.

These tests need root, and the test machine runs them as root. They fail (never skip)
when not root: a skipped privilege test would report a green suite for a feature nobody
tested, and the whole point of the feature is a root master.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support import MasterFactory, free_port, get, wait_for, workers_of, write_app

from pidfiles import procs
from upgrade import names, record

ROOT = Path(__file__).resolve().parents[2]
# Only modules a worker already has: the interpreter's own folder may be closed to nobody.
APP = '''
import os

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.getuid()}:{os.getgid()}".encode()]
'''


def must_be_root() -> None:
    assert os.geteuid() == 0, (
        "privilege tests must run as root (the test machine does); they fail rather than skip "
        "so that a run without root cannot pass for a tested --user/--group")


def ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups lines of /proc/PID/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(v) for v in value.split()]
    return found


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder nobody can read (pytest's tmp_path is 0700 root): the app lives here."""
    path = Path(tempfile.mkdtemp(prefix="hotswap-priv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(90)
def test_workers_run_as_nobody_nogroup_and_an_upgrade_drops_them_too(
        masters: MasterFactory, open_dir: Path) -> None:
    must_be_root()
    nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    write_app(open_dir, "privapp", APP)
    error_log = open_dir / "error.log"
    sock = open_dir / "http.sock"
    port = free_port()
    m = masters("privapp:app", "--bind", f"127.0.0.1:{port}", "--bind", f"unix:{sock}",
                "--workers", "2", "--user", "nobody", "--group", "nogroup", "--umask", "007",
                "--error-log", str(error_log), "--watch-window", "0.5", cwd=open_dir, ready=False)
    wait_for(lambda: error_log.exists() and "[INFO] ready:" in error_log.read_text(),
             what=f"the master to be ready; {m.log()}")
    assert ids(m.pid)["Uid"] == [0, 0, 0, 0] and ids(m.pid)["Gid"] == [0, 0, 0, 0]
    for worker in workers_of(m.pid):
        assert ids(worker) == {"Uid": [nobody] * 4, "Gid": [nogroup] * 4, "Groups": [nogroup]}
    assert get(f"http://127.0.0.1:{port}/").text == f"{nobody}:{nogroup}"  # the app loaded as nobody
    # Handed over as gunicorn does: the log file (workers reopen it on USR1) and the socket
    # file, created under the umask.
    for path in (error_log, sock):
        assert (path.stat().st_uid, path.stat().st_gid) == (nobody, nogroup), path
    assert sock.stat().st_mode & 0o777 == 0o770

    # USR1: the workers reopen the log as nobody and keep serving
    error_log.rename(open_dir / "error.log.1")
    m.signal(signal.SIGUSR1)
    wait_for(lambda: error_log.exists() and error_log.stat().st_uid == nobody,
             what="the reopened log to be handed over")
    assert get(f"http://127.0.0.1:{port}/").text == f"{nobody}:{nogroup}"

    # an upgrade: the new master is root again, its workers drop in turn
    old_workers = workers_of(m.pid)
    m.signal(signal.SIGUSR2)

    def committed() -> record.UpgradeRecord | None:
        rec = record.read_state(str(m.pidfile))
        return rec if rec is not None and rec.old == m.pid and rec.final else None

    rec = wait_for(committed, 40, what="the upgrade to finish")
    assert rec.state == names.STATE_COMMITTED, rec.line()
    new = rec.new
    m.extra_pids.add(new)
    wait_for(lambda: not procs.is_alive(m.pid), what="the old master to exit")
    assert ids(new)["Uid"] == [0, 0, 0, 0]
    new_workers = workers_of(new)
    assert new_workers and not set(new_workers) & set(old_workers)
    for worker in new_workers:
        assert ids(worker) == {"Uid": [nobody] * 4, "Gid": [nogroup] * 4, "Groups": [nogroup]}
    answer = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert answer.text == f"{nobody}:{nogroup}"
    os.kill(new, signal.SIGTERM)
    wait_for(lambda: not procs.is_alive(new), what="the new master to stop")


def test_unknown_user_or_group_is_one_line(tmp_path: Path) -> None:
    must_be_root()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HOTSWAP_CMD_ARGS", None)
    for args, reason in [(["--user", "no-such-user-here"], "unknown user 'no-such-user-here'"),
                         (["--user", "nobody", "--group", "no-such-group"],
                          "unknown group 'no-such-group'")]:
        done = subprocess.run([sys.executable, "-m", "hotswap", "start", *args,
                               "--bind", f"127.0.0.1:{free_port()}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 1
        assert done.stderr == f"hotswap: error: {reason}\n", done.stderr
