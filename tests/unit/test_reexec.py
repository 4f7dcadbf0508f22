"""spawn_new_master with real fork, exec, pipes and listening sockets."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgrade.readiness import Outcome, ReadinessReader
from upgrade.reexec import (
    ENV_FDS,
    ENV_GENERATION,
    ENV_PARENT_PID,
    ENV_READY_FD,
    SpawnedMaster,
    original_argv,
    spawn_new_master,
    start_directory,
)

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 20.0


class Children:
    """Every process a test spawns; killed and reaped at teardown whatever happened."""

    def __init__(self) -> None:
        self.running: set[int] = set()
        self.readers: list[ReadinessReader] = []

    def spawn(self, *args, **kwargs) -> tuple[SpawnedMaster, ReadinessReader]:
        spawned = spawn_new_master(*args, **kwargs)
        self.running.add(spawned.pid)
        reader = ReadinessReader(spawned.ready_fd)
        self.readers.append(reader)
        return spawned, reader

    def reap(self, pid: int, deadline: float = DEADLINE) -> int:
        """Wait for pid to exit (polling with a deadline); its exit code."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                self.running.discard(pid)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        raise AssertionError(f"child {pid} did not exit within {deadline}s")

    def cleanup(self) -> None:
        for reader in self.readers:
            reader.close()
        for pid in list(self.running):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            self.running.discard(pid)


@pytest.fixture
def children() -> Iterator[Children]:
    tracker = Children()
    try:
        yield tracker
    finally:
        tracker.cleanup()


def wait_outcome(reader: ReadinessReader, deadline: float = DEADLINE) -> Outcome:
    """Poll the reader as a master loop would, until an outcome or the deadline."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        select.select([reader.fileno()], [], [], 0.1)
        outcome = reader.read()
        if outcome is not None:
            return outcome
    raise AssertionError(f"no readiness outcome within {deadline}s")


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def child_env(**extra: str) -> dict[str, str]:
    """A minimal environment in which the child can import our packages."""
    return {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(REPO), **extra}


@pytest.fixture
def leak_marker(tmp_path: Path) -> Iterator[Path]:
    """A file that any process other than this one writes if it runs our clean-up.

    A forked child that returned from spawn_new_master, or exited through the
    interpreter's normal shutdown, would run this atexit hook and write it.
    """
    marker = tmp_path / "cleanup-ran-in-child"
    me = os.getpid()

    def hook() -> None:
        if os.getpid() != me:
            marker.write_text(f"atexit ran in {os.getpid()}")

    atexit.register(hook)
    try:
        yield marker
    finally:
        atexit.unregister(hook)


def spawn_guarded(children: Children, marker: Path, *args, **kwargs):
    """spawn through a try/finally that a child must never reach."""
    me = os.getpid()
    try:
        return children.spawn(*args, **kwargs)
    finally:
        if os.getpid() != me:  # we are a child that came back: record it and vanish
            marker.write_text(f"finally ran in {os.getpid()}")
            os._exit(99)


CHECK_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, socket
    from upgrade.readiness import announce_failure, announce_ready, ready_fd_from_env

    fd = ready_fd_from_env(os.environ)
    expect = json.loads(os.environ["EXPECT"])
    problems = []

    def check(ok, what):
        if not ok:
            problems.append(what)

    for name in ("HOTSWAP_FDS", "HOTSWAP_PARENT_PID", "HOTSWAP_GENERATION", "PWD"):
        check(os.environ.get(name) == expect["env"][name], f"{name}={os.environ.get(name)!r}")
    check("HOTSWAP_READY_FD" not in os.environ, "ready fd variable not consumed")
    check("NOT_FOR_CHILD" not in os.environ, "os.environ leaked although env was given")
    for fdnum, address in expect["sockets"]:
        try:
            sock = socket.socket(fileno=fdnum)
        except OSError as exc:
            problems.append(f"fd {fdnum} not inherited: {exc}")
            continue
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        check(listening == 1, f"fd {fdnum} not listening")
        name = sock.getsockname()
        check((list(name) if isinstance(name, tuple) else name) == address,
              f"fd {fdnum} is {name!r}")
        sock.detach()
    here = os.stat(".")
    check([here.st_dev, here.st_ino] == expect["cwd_id"], f"wrong cwd {os.getcwd()}")
    check(os.getcwd() == expect["resolved_cwd"], f"getcwd {os.getcwd()}")
    check(signal.getsignal(signal.SIGWINCH) == signal.SIG_DFL, "WINCH still ignored")
    check(signal.pthread_sigmask(signal.SIG_BLOCK, []) == set(), "signals still blocked")
    if problems:
        announce_failure(fd, "; ".join(problems))
    else:
        announce_ready(fd, os.getpid())
    """
)


@pytest.fixture
def listening_sockets(tmp_path: Path) -> Iterator[tuple[socket.socket, socket.socket]]:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with tcp, unix:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        unix.bind(str(tmp_path / "app.sock"))
        unix.listen()
        yield tcp, unix


@pytest.fixture
def odd_signal_state() -> Iterator[set[int]]:
    """A master-like signal state: WINCH ignored, USR1 blocked; restored afterwards."""
    old_handler = signal.signal(signal.SIGWINCH, signal.SIG_IGN)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        yield signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGWINCH, old_handler)


def test_new_master_inherits_sockets_at_same_numbers(
    tmp_path, children, listening_sockets, odd_signal_state, leak_marker
) -> None:
    tcp, unix = listening_sockets
    release = tmp_path / "release-1"
    release.mkdir()
    current = tmp_path / "current"
    current.symlink_to(release)
    fds = [tcp.fileno(), unix.fileno()]
    expect = {
        "env": {
            "HOTSWAP_FDS": f"{fds[0]},{fds[1]}",
            "HOTSWAP_PARENT_PID": str(os.getpid()),
            "HOTSWAP_GENERATION": "7",
            "PWD": str(current),
        },
        "sockets": [[fds[0], list(tcp.getsockname())], [fds[1], unix.getsockname()]],
        "cwd_id": [release.stat().st_dev, release.stat().st_ino],
        "resolved_cwd": str(release.resolve()),
    }
    # stale hand-over values in the given env must be overridden, not kept
    env = child_env(EXPECT=json.dumps(expect), HOTSWAP_READY_FD="99", HOTSWAP_FDS="0")
    os.environ["NOT_FOR_CHILD"] = "1"
    try:
        spawned, reader = spawn_guarded(
            children,
            leak_marker,
            [sys.executable, "-c", CHECK_SCRIPT],
            str(current),
            fds,
            7,
            env=env,
        )
    finally:
        del os.environ["NOT_FOR_CHILD"]

    assert wait_outcome(reader) == Outcome("ready", pid=spawned.pid)
    assert children.reap(spawned.pid) == 0
    assert not leak_marker.exists()
    # our own state is untouched: sockets open, listening, still not inheritable
    for sock in (tcp, unix):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert os.get_inheritable(sock.fileno()) is False
    assert os.get_inheritable(spawned.ready_fd) is False
    assert os.get_blocking(spawned.ready_fd) is False
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == odd_signal_state
    assert signal.getsignal(signal.SIGWINCH) == signal.SIG_IGN


def test_default_environment_is_ours_plus_handover(tmp_path, children, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("HOTSWAP_TEST_MARK", "inherited")
    monkeypatch.setenv(ENV_GENERATION, "1")  # ours is stale: the child must see the new one
    script = textwrap.dedent(
        f"""
        import os
        from upgrade.readiness import announce_failure, announce_ready, ready_fd_from_env
        fd = ready_fd_from_env(os.environ)
        seen = (os.environ.get("HOTSWAP_TEST_MARK"), os.environ.get("{ENV_GENERATION}"),
                os.environ.get("{ENV_FDS}"), os.environ.get("{ENV_PARENT_PID}"))
        if seen == ("inherited", "2", "", "{os.getpid()}"):
            announce_ready(fd, os.getpid())
        else:
            announce_failure(fd, repr(seen))
        """
    )
    spawned, reader = children.spawn([sys.executable, "-c", script], str(tmp_path), [], 2)
    assert wait_outcome(reader) == Outcome("ready", pid=spawned.pid)
    assert children.reap(spawned.pid) == 0
    assert ENV_READY_FD not in os.environ  # the parent's environment was not touched


def test_exec_failure_reports_and_never_runs_parent_cleanup(
    tmp_path, children, listening_sockets, leak_marker
) -> None:
    tcp, unix = listening_sockets
    missing = str(tmp_path / "opt" / "old" / "bin" / "python")
    spawned, reader = spawn_guarded(
        children, leak_marker, [missing, "-m", "hotswap"], str(tmp_path), [tcp.fileno()], 2
    )
    assert wait_outcome(reader) == Outcome(
        "failed", reason=f"cannot exec {missing}: No such file or directory"
    )
    assert children.reap(spawned.pid) == 127
    assert not leak_marker.exists(), leak_marker.read_text()
    assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert (tmp_path / "app.sock").exists()


def test_exec_failure_of_a_path_search(tmp_path, children, leak_marker) -> None:
    env = child_env(PATH=str(tmp_path))
    spawned, reader = spawn_guarded(
        children, leak_marker, ["hotswap-no-such-command"], str(tmp_path), [], 2, env=env
    )
    assert wait_outcome(reader) == Outcome(
        "failed", reason="cannot exec hotswap-no-such-command: No such file or directory"
    )
    assert children.reap(spawned.pid) == 127
    assert not leak_marker.exists()


def test_exec_of_a_non_executable_file(tmp_path, children, leak_marker) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    spawned, reader = spawn_guarded(children, leak_marker, [str(script)], str(tmp_path), [], 2)
    assert wait_outcome(reader) == Outcome(
        "failed", reason=f"cannot exec {script}: Permission denied"
    )
    assert children.reap(spawned.pid) == 127


def test_chdir_failure_reports(tmp_path, children, leak_marker) -> None:
    gone = tmp_path / "releases" / "gone"
    spawned, reader = spawn_guarded(
        children, leak_marker, [sys.executable, "-c", "pass"], str(gone), [], 2
    )
    assert wait_outcome(reader) == Outcome(
        "failed", reason=f"cannot chdir to {gone}: No such file or directory"
    )
    assert children.reap(spawned.pid) == 127
    assert not leak_marker.exists()


def test_closed_listen_fd_reports(tmp_path, children, leak_marker) -> None:
    # a high number nobody has open (a freshly closed low one would be reused by the pipe)
    unused = next(fd for fd in range(1000, 200, -1) if not fd_is_open(fd))
    spawned, reader = spawn_guarded(
        children, leak_marker, [sys.executable, "-c", "pass"], str(tmp_path), [unused], 2
    )
    outcome = wait_outcome(reader)
    assert outcome.kind == "failed"
    assert outcome.reason == f"cannot pass fd {unused} to the new master: Bad file descriptor"
    assert children.reap(spawned.pid) == 127


def test_child_dying_silently_gives_eof(tmp_path, children) -> None:
    spawned, reader = children.spawn(
        [sys.executable, "-c", "import os; os._exit(3)"], str(tmp_path), [], 2, env=child_env()
    )
    outcome = wait_outcome(reader)
    assert outcome.kind == "eof"
    assert outcome.pid is None
    assert children.reap(spawned.pid) == 3


def test_child_killed_before_ready_gives_eof(tmp_path, children) -> None:
    spawned, reader = children.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"], str(tmp_path), [], 2
    )
    assert reader.read() is None  # alive and silent: nothing yet
    os.kill(spawned.pid, signal.SIGTERM)  # default disposition in the child: it dies
    assert wait_outcome(reader).kind == "eof"
    assert children.reap(spawned.pid) == -signal.SIGTERM


def test_empty_argv_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="empty command line"):
        spawn_new_master([], str(tmp_path), [], 2)


# --- start_directory / original_argv ---------------------------------------------------------


@pytest.fixture
def deploy_layout(tmp_path: Path) -> tuple[Path, Path]:
    release = tmp_path / "release-1"
    release.mkdir()
    current = tmp_path / "current"
    current.symlink_to(release)
    return release, current


def test_start_directory_keeps_the_symlinked_spelling(deploy_layout, monkeypatch) -> None:
    release, current = deploy_layout
    monkeypatch.chdir(current)
    monkeypatch.setenv("PWD", str(current))
    assert os.getcwd() == str(release.resolve())
    assert start_directory() == str(current)


def test_start_directory_ignores_a_stale_pwd(deploy_layout, tmp_path, monkeypatch) -> None:
    release, _ = deploy_layout
    monkeypatch.chdir(release)
    monkeypatch.setenv("PWD", str(tmp_path))  # some other directory
    assert start_directory() == str(release.resolve())


@pytest.mark.parametrize("pwd", [None, "", "current", "/nonexistent/hotswap/dir"])
def test_start_directory_falls_back_to_getcwd(deploy_layout, monkeypatch, pwd) -> None:
    release, _ = deploy_layout
    monkeypatch.chdir(release.parent)
    if pwd is None:
        monkeypatch.delenv("PWD", raising=False)
    else:
        monkeypatch.setenv("PWD", pwd)
    assert start_directory() == str(release.parent.resolve())


def test_original_argv_is_a_copy_of_orig_argv() -> None:
    argv = original_argv()
    assert argv == sys.orig_argv
    argv.append("--changed")
    assert original_argv() == sys.orig_argv
