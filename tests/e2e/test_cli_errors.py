"""Operator mistakes at `hotswap start`: one line on stderr, exit 1, nothing left running.

A traceback means a bug in hotswap, never a mistake of the user's (cli.py). Each case here
is a real `python -m hotswap start` run with the mistake made for real: a port somebody
else holds, a unix path in a missing folder, a broken app (with --preload, so the master
itself loads it; test_workers covers the same mistakes seen by workers), broken config
files, malformed --bind values, and malformed inherited-socket and upgrade variables in
the environment (DESIGN.md: "never a traceback, and never a half-started master"). Each
run is its own session, so "nothing left running" is checked on its whole process group.
Also: flags win over the config file, a pidfile naming a live master refuses the start
(even on the same port), and a stale one is replaced with a warning.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import free_port, get, group_members, write_app

from pidfiles import procs

pytestmark = pytest.mark.timeout(30)  # each test; longer ones say so

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def start(cwd: Path, *args: str, env: dict[str, str] | None = None,
          pass_fds: tuple[int, ...] = (), prefix: tuple[str, ...] = ()) -> Run:
    """Run `hotswap start ARGS` to its end in a new session; reap whatever it left."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "hotswap", "start", *args], cwd=cwd,
                            env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, pass_fds=pass_fds,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=20)
        leftovers = group_members(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for pid in group_members(proc.pid):
            os.kill(pid, 9)
    assert leftovers == [], f"processes left running: {leftovers}"
    return Run(proc.returncode, out, err)


def assert_one_line_error(run: Run, *fragments: str) -> str:
    """Exit 1, nothing on stdout, exactly one `hotswap: error:` line on stderr."""
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hotswap: error: "), run.stderr
    assert run.code == 1, f"exit status {run.code}: {run.stderr}"
    assert run.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


# -- sockets ------------------------------------------------------------------------------


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = start(tmp_path, "--bind", f"127.0.0.1:{port}", "--workers", "1")
    line = assert_one_line_error(run)
    assert line == f"hotswap: error: cannot bind 127.0.0.1:{port}: address already in use"


def test_unix_socket_in_a_missing_folder(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "s.sock"
    run = start(tmp_path, "--bind", f"unix:{path}", "--workers", "1")
    assert_one_line_error(run, f"cannot bind unix:{path}", "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_an_earlier_bind_is_closed_when_a_later_one_fails(tmp_path: Path) -> None:
    sock_path = tmp_path / "s.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = start(tmp_path, "--bind", f"unix:{sock_path}", "--bind", f"127.0.0.1:{port}")
    assert_one_line_error(run, "address already in use")
    assert not sock_path.exists(), "the unix socket opened first must be removed again"


@pytest.mark.parametrize("bind, problem", [
    ("nonsense", "missing port"),
    ("127.0.0.1:99999", "out of range"),
    ("127.0.0.1:http", "invalid bind '127.0.0.1:http'"),
    ("", "invalid bind ''"),
    ("[::1:8000", "invalid bind '[::1:8000'"),
])
def test_malformed_bind(tmp_path: Path, bind: str, problem: str) -> None:
    assert_one_line_error(start(tmp_path, "--bind", bind), problem)


# -- the app --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, source, message", [
    ("nosuchmodule_hotswap:app", None,
     "cannot import APP module 'nosuchmodule_hotswap': no such module"),
    ("app:missing", "def app(e, s):\n    pass\n", "APP 'app:missing': module 'app' has no 'missing'"),
    ("app:app", "app = 'a string'\n", "APP 'app:app' is not callable (it is a str)"),
    ("app:app", "import nosuchdependency_hotswap\n",
     "cannot import APP module 'app': ModuleNotFoundError: No module named 'nosuchdependency_hotswap'"),
    ("app", None, "APP must look like module:callable, got 'app'"),
], ids=["not-importable", "not-found", "not-callable", "missing-dependency", "no-colon"])
def test_broken_app_with_preload(tmp_path: Path, spec: str, source: str | None,
                                 message: str) -> None:
    if source is not None:
        write_app(tmp_path, "app", source)
    sock_path = tmp_path / "s.sock"
    run = start(tmp_path, spec, "--preload", "--bind", f"unix:{sock_path}",
                "--error-log", str(tmp_path / "error.log"))
    assert_one_line_error(run, message)
    assert not sock_path.exists()


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("content, fragments", [
    ("wrkers = 2\n", ["unknown key 'wrkers'"]),
    ('workers = "x"\n', ["'workers' must be an integer, got 'x'"]),
    ("preload = 1\n", ["'preload' must be true or false, got 1"]),
    ("timeout = \"soon\"\n", ["'timeout' must be a number"]),
    ("workers = \n", ["is not valid TOML"]),
    ("[server]\nworkers = 2\n", ["unknown key 'server'"]),
    ("workers = 0\n", ["invalid configuration: workers must be at least 1"]),
], ids=["bad-key", "bad-int", "bad-bool", "bad-float", "invalid-toml", "table", "bad-value"])
def test_bad_config_file(tmp_path: Path, content: str, fragments: list[str]) -> None:
    config = tmp_path / "hotswap.toml"
    config.write_text(content)
    run = start(tmp_path, "--config", str(config), "--bind", "127.0.0.1:0")
    line = assert_one_line_error(run, *fragments)
    if "invalid configuration" not in line:
        assert str(config) in line, "the message must name the file"


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    run = start(tmp_path, "--config", str(missing))
    assert assert_one_line_error(run) == f"hotswap: error: config file {missing} does not exist"


@pytest.mark.parametrize("args, fragment", [
    (["--workers", "0"], "workers must be at least 1"),
    (["--timeout", "-1"], "timeout must be positive"),
    (["--chdir", "/nonexistent-hotswap-dir"], "cannot chdir to /nonexistent-hotswap-dir"),
    (["--error-log", "/nonexistent-hotswap-dir/e.log"], "cannot open log file"),
    (["--pidfile", "/nonexistent-hotswap-dir/p.pid"], "/nonexistent-hotswap-dir/p.pid"),
], ids=["workers", "timeout", "chdir", "error-log", "pidfile-folder"])
def test_bad_flag_values(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(start(tmp_path, "--bind", "127.0.0.1:0", *args), fragment)


def test_flags_win_over_the_config_file(masters, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "hotswap.toml"
    config.write_text(f'bind = "127.0.0.1:{port}"\nworkers = 3\nname = "fromfile"\n')
    m = masters("--config", str(config), "--workers", "1", cwd=tmp_path)
    assert len(m.workers()) == 1, "--workers 1 must beat workers = 3"
    assert get(f"http://127.0.0.1:{port}/").status_code == 200, "bind comes from the file"
    assert procs.cmdline(m.pid) == "hotswap: master [fromfile]"
    m.signal(15)
    assert m.wait_exit(10) == 0

    # Without the flag, the file's value holds.
    second = masters("--config", str(config), cwd=tmp_path)
    assert len(second.workers()) == 3


# -- pidfiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("same_port", [True, False], ids=["same-port", "other-port"])
def test_pidfile_naming_a_live_master(masters, tmp_path: Path, same_port: bool) -> None:
    port = free_port()
    first = masters("--bind", f"127.0.0.1:{port}", "--workers", "1")
    second_port = port if same_port else free_port()
    run = start(tmp_path, "--bind", f"127.0.0.1:{second_port}", "--workers", "1",
                "--pidfile", str(first.pidfile))
    line = assert_one_line_error(run)
    assert line == (f"hotswap: error: already running as pid {first.pid} "
                    f"(pidfile {first.pidfile})")
    assert first.current_pid() == first.pid and first.proc.poll() is None
    assert get(f"http://127.0.0.1:{port}/").status_code == 200


@pytest.mark.parametrize("stale", ["dead-pid", "garbage", "live-non-master"])
def test_stale_pidfile_is_replaced_with_a_warning(masters, tmp_path: Path, stale: str) -> None:
    pidfile = tmp_path / "hotswap.pid"
    other = subprocess.Popen(["sleep", "60"] if stale == "live-non-master"
                             else [sys.executable, "-c", "pass"])
    try:
        if stale != "live-non-master":
            other.wait(10)
        pidfile.write_text("not a pid\n" if stale == "garbage" else f"{other.pid}\n")
        port = free_port()
        m = masters("--bind", f"127.0.0.1:{port}", "--workers", "1")
        assert m.current_pid() == m.pid
        warning = {
            "dead-pid": f"naming dead pid {other.pid}",
            "garbage": "holding no pid: 'not a pid'",
            "live-non-master": f"naming pid {other.pid}, a live process that is not a master",
        }[stale]
        assert f"[WARNING] removed stale pidfile {pidfile} {warning}" in m.log()
        assert get(f"http://127.0.0.1:{port}/").status_code == 200
        assert other.poll() is None or stale != "live-non-master", "the other process is untouched"
    finally:
        if other.poll() is None:
            other.kill()
        other.wait(5)


# -- the environment ------------------------------------------------------------------------


@pytest.mark.parametrize("env, fragment", [
    ({"HOTSWAP_FDS": "abc"}, "HOTSWAP_FDS='abc': 'abc' is not a file descriptor number"),
    ({"HOTSWAP_FDS": "-3"}, "HOTSWAP_FDS='-3'"),
    ({"HOTSWAP_FDS": "1"}, "HOTSWAP_FDS='1': fd 1 is stdin, stdout or stderr"),
    ({"HOTSWAP_FDS": "250"}, "HOTSWAP_FDS='250': fd://250 is not an open file descriptor"),
    ({"HOTSWAP_FDS": "7,7"}, "HOTSWAP_FDS='7,7'"),
    ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "LISTEN_PID='abc' is not a process id"),
    ({"HOTSWAP_READY_FD": "abc"}, "HOTSWAP_READY_FD='abc': not a file descriptor number"),
    ({"HOTSWAP_READY_FD": "250"}, "HOTSWAP_READY_FD='250': not an open file descriptor"),
    ({"HOTSWAP_READY_FD": "2"}, "HOTSWAP_READY_FD='2'"),
    ({"HOTSWAP_PARENT_PID": "abc"}, "HOTSWAP_PARENT_PID='abc' is not a process id"),
    ({"HOTSWAP_PARENT_PID": "-5"}, "HOTSWAP_PARENT_PID='-5' is not a process id"),
    ({"HOTSWAP_PARENT_PID": ""}, "HOTSWAP_PARENT_PID='' is not a process id"),
], ids=lambda v: ",".join(f"{k}={x!r}" for k, x in v.items()) if isinstance(v, dict) else "why")
def test_malformed_environment(tmp_path: Path, env: dict[str, str], fragment: str) -> None:
    sock_path = tmp_path / "s.sock"
    run = start(tmp_path, "--bind", f"unix:{sock_path}", "--workers", "1", env=env)
    assert_one_line_error(run, fragment)
    assert not sock_path.exists()


@pytest.mark.parametrize("count, fragment", [
    ("x", "LISTEN_FDS='x' is not a number of file descriptors"),
    ("1", "LISTEN_FDS='1': fd://3 is not an open file descriptor"),
])
def test_malformed_systemd_sockets_meant_for_us(tmp_path: Path, count: str, fragment: str) -> None:
    # LISTEN_PID must be our own pid to be honoured: set it in a shell that then execs us.
    run = start(tmp_path, "--bind", "127.0.0.1:0", "--workers", "1",
                prefix=("sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS={count} exec "$@"', "sh"))
    assert_one_line_error(run, fragment)


def test_inherited_fds_that_are_not_listeners(tmp_path: Path) -> None:
    with open(tmp_path / "plain.txt", "w") as plain, socket.socket() as idle:
        idle.bind(("127.0.0.1", 0))  # bound, never listening
        for fd, fragment in ((plain.fileno(), "is not a socket"),
                             (idle.fileno(), "is not listening")):
            run = start(tmp_path, "--bind", "127.0.0.1:0", "--workers", "1",
                        env={"HOTSWAP_FDS": str(fd)}, pass_fds=(fd,))
            assert_one_line_error(run, f"HOTSWAP_FDS='{fd}'", fragment)


def test_ready_fd_that_is_not_a_writable_pipe(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        with open(tmp_path / "plain.txt", "w") as plain:
            for fd, fragment in ((plain.fileno(), "not a pipe"),
                                 (read_end, "pipe is not open for writing")):
                run = start(tmp_path, "--bind", "127.0.0.1:0", "--workers", "1",
                            env={"HOTSWAP_READY_FD": str(fd)}, pass_fds=(fd,))
                assert_one_line_error(run, f"HOTSWAP_READY_FD='{fd}'", fragment)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_failing_new_generation_tells_its_parent_why(tmp_path: Path) -> None:
    """A malformed variable next to a valid readiness fd is also reported down that pipe,
    so the old master can log why the upgrade failed."""
    read_end, write_end = os.pipe()
    try:
        run = start(tmp_path, "--bind", "127.0.0.1:0", "--workers", "1", pass_fds=(write_end,),
                    env={"HOTSWAP_READY_FD": str(write_end), "HOTSWAP_PARENT_PID": str(os.getpid()),
                         "HOTSWAP_FDS": "abc"})
        os.close(write_end)
        write_end = -1
        line = assert_one_line_error(run, "HOTSWAP_FDS='abc'")
        with os.fdopen(read_end, "rb") as pipe:
            read_end = -1
            told = pipe.read().decode()
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert told == "FAILED " + line.removeprefix("hotswap: error: ") + "\n"

