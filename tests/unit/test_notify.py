"""sd_notify over real AF_UNIX datagram sockets."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgrade.notify import (
    notify,
    notify_ready,
    notify_reloading,
    notify_status,
    notify_stopping,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket standing in for systemd, and an environ naming it."""
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 107 bytes"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5.0)  # a wait with a deadline
    with sock:
        yield sock, {"NOTIFY_SOCKET": str(path)}


def no_datagram(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


def test_notify_sends_lines_as_one_datagram(listener) -> None:
    sock, env = listener
    assert notify("A=1", "B=two words", environ=env) is True
    assert sock.recv(4096) == b"A=1\nB=two words"


def test_notify_folds_newlines_inside_a_value(listener) -> None:
    sock, env = listener
    assert notify("STATUS=one\ntwo", environ=env) is True
    assert sock.recv(4096) == b"STATUS=one two"


def test_notify_ready_plain(listener) -> None:
    sock, env = listener
    assert notify_ready(environ=env) is True
    assert sock.recv(4096) == b"READY=1"


def test_notify_ready_with_main_pid_first_and_status(listener) -> None:
    sock, env = listener
    assert notify_ready(main_pid=4321, status="serving, generation 2", environ=env) is True
    assert sock.recv(4096) == b"MAINPID=4321\nREADY=1\nSTATUS=serving, generation 2"


def test_notify_reloading_carries_monotonic_usec(listener) -> None:
    sock, env = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify_reloading(environ=env) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_notify_stopping(listener) -> None:
    sock, env = listener
    assert notify_stopping(environ=env) is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_status_is_one_line(listener) -> None:
    sock, env = listener
    assert notify_status("upgrading\nto generation 3", environ=env) is True
    assert sock.recv(4096) == b"STATUS=upgrading to generation 3"


def test_notify_uses_os_environ_and_leaves_notify_socket_set(listener, monkeypatch) -> None:
    sock, env = listener
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert notify_ready() is True
    assert sock.recv(4096) == b"READY=1"
    assert os.environ["NOTIFY_SOCKET"] == env["NOTIFY_SOCKET"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux only")
def test_notify_to_abstract_socket() -> None:
    name = f"hotswap-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "@"}])
def test_notify_without_socket_is_false(environ) -> None:
    assert notify("READY=1", environ=environ) is False
    assert notify_ready(environ=environ) is False


def test_notify_with_unset_variable_in_os_environ(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify_stopping() is False


def test_notify_to_missing_path_is_false_without_raising(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-here.sock")}
    assert notify_ready(main_pid=1, environ=env) is False


def test_notify_to_dead_socket_file_is_false(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody receives: ECONNREFUSED
    assert path.exists()
    assert notify_status("hello", environ={"NOTIFY_SOCKET": str(path)}) is False


def test_notify_to_a_stream_socket_is_false(tmp_path: Path) -> None:
    path = tmp_path / "stream.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        assert notify("READY=1", environ={"NOTIFY_SOCKET": str(path)}) is False


def test_notify_unsupported_address_scheme_is_false(listener) -> None:
    sock, _ = listener
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "relative.sock"}) is False
    assert no_datagram(sock)


def test_notify_with_no_lines_sends_nothing(listener) -> None:
    sock, env = listener
    assert notify(environ=env) is False
    assert no_datagram(sock)
