"""Only 0-2, the listeners and the readiness pipe (and the keeper's fd) cross an upgrade.

A shell's `exec 7<file` (a supervisor's or a C extension's inheritable fd alike) used to
pass to every new generation, since only O_CLOEXEC kept fds from crossing the exec.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import free_port, group_members, python_env, wait_for, write_app

from pidfiles import procs

APP = "def app(environ, start_response):\n" \
      "    start_response('200 OK', [('Content-Length', '2')])\n" \
      "    return [b'ok']\n"


def holders(path: Path, pids: list[int]) -> dict[int, list[str]]:
    """Which of `pids` hold `path` open, and on which fds."""
    found: dict[int, list[str]] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    found.setdefault(pid, []).append(fd)
            except OSError:
                pass
    return found


@pytest.mark.timeout(90)
def test_shell_fd_does_not_cross_upgrades(masters, tmp_path: Path) -> None:
    secret = tmp_path / "shell-fd.txt"
    secret.write_text("held by the shell\n")
    write_app(tmp_path, "app", APP)
    port = free_port()
    shell = ["sh", "-c", 'f=$1; shift; exec 7<"$f"; exec "$@"', "sh", str(secret)]
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--watch-window", "0", cwd=tmp_path, prefix=shell)
    assert holders(secret, [m.pid]) == {m.pid: ["7"]}, "the shell's fd 7 reached the master"
    assert m.pidfile is not None
    for _ in range(3):
        old = m.current_pid()
        run = subprocess.run([sys.executable, "-m", "hotswap", "upgrade", "--pidfile",
                              str(m.pidfile), "--timeout", "30"], env=python_env(),
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{m.log()[-3000:]}"
        assert old is not None
        wait_for(lambda old=old: not procs.is_alive(old), what=f"old master {old} to exit")
    current = m.current_pid()
    assert current is not None and current != m.pid
    family = group_members(m.pgid)
    assert current in family and len(family) >= 3, family
    wait_for(lambda: not holders(secret, group_members(m.pgid)),
             what=f"no process to hold the shell's fd: {holders(secret, group_members(m.pgid))}")
