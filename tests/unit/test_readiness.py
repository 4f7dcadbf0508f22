"""The readiness channel over real pipes."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import time
from collections.abc import Iterator

import pytest

from upgrade.readiness import (
    ENV_READY_FD,
    MAX_LINE,
    Outcome,
    ReadinessError,
    ReadinessReader,
    announce_failure,
    announce_ready,
    ready_fd_from_env,
)

pytestmark = pytest.mark.timeout(30)


class Fds:
    """Closes at teardown whatever a test opened and did not hand over."""

    def __init__(self) -> None:
        self.open: list[int] = []

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.open += [r, w]
        return r, w

    def forget(self, *closed: int) -> None:
        """The code under test closed these; never close their numbers again."""
        for fd in closed:
            self.open.remove(fd)

    def close_all(self) -> None:
        for fd in self.open:
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def fds() -> Iterator[Fds]:
    tracker = Fds()
    yield tracker
    tracker.close_all()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def read_all_blocking(fd: int, deadline: float = 5.0) -> bytes:
    """Everything until EOF, waiting with a deadline."""
    end = time.monotonic() + deadline
    data = b""
    os.set_blocking(fd, False)
    while time.monotonic() < end:
        select.select([fd], [], [], 0.1)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"no EOF within {deadline}s, got {data!r}")


# --- announce_ready / announce_failure ----------------------------------------------------


def test_announce_ready_writes_one_line_and_closes(fds: Fds) -> None:
    r, w = fds.pipe()
    announce_ready(w, 4242)
    fds.forget(w)
    assert not is_open(w)
    assert read_all_blocking(r) == b"READY 4242\n"


def test_announce_failure_folds_reason_to_one_line(fds: Fds) -> None:
    r, w = fds.pipe()
    announce_failure(w, "cannot import app:\n  Traceback...\r\n\tModuleNotFoundError: x  ")
    fds.forget(w)
    assert not is_open(w)
    expected = b"FAILED cannot import app: Traceback... ModuleNotFoundError: x\n"
    assert read_all_blocking(r) == expected


def test_announce_failure_with_empty_reason_still_says_something(fds: Fds) -> None:
    r, w = fds.pipe()
    announce_failure(w, " \n ")
    fds.forget(w)
    assert read_all_blocking(r) == b"FAILED unknown reason\n"


def test_announce_ready_ignores_a_vanished_reader(fds: Fds) -> None:
    r, w = fds.pipe()
    os.close(r)  # the old master is gone
    announce_ready(w, 1)  # EPIPE must not raise
    fds.forget(r, w)
    assert not is_open(w)


def test_announce_ready_ignores_a_closed_fd(fds: Fds) -> None:
    _, w = fds.pipe()
    os.close(w)
    fds.forget(w)
    announce_ready(w, 1)  # EBADF must not raise
    announce_failure(w, "x")
    assert not is_open(w)


# --- ready_fd_from_env ---------------------------------------------------------------------


def test_ready_fd_from_env_accepts_a_write_end_and_removes_the_variable(fds: Fds) -> None:
    r, w = fds.pipe()
    os.set_inheritable(w, True)  # as it arrives after exec
    environ = {ENV_READY_FD: str(w), "OTHER": "kept"}
    assert ready_fd_from_env(environ) == w
    assert environ == {"OTHER": "kept"}
    assert os.get_inheritable(w) is False
    announce_ready(w, 77)
    fds.forget(w)
    assert read_all_blocking(r) == b"READY 77\n"


def test_ready_fd_from_env_absent_gives_none() -> None:
    environ = {"PATH": "/bin"}
    assert ready_fd_from_env(environ) is None
    assert environ == {"PATH": "/bin"}


@pytest.mark.parametrize("value", ["x", "", " 5", "+5", "5.0", "-4", "٣"])
def test_ready_fd_from_env_rejects_non_numbers(value: str) -> None:
    environ = {ENV_READY_FD: value}
    with pytest.raises(ReadinessError) as info:
        ready_fd_from_env(environ)
    assert str(info.value) == f"HOTSWAP_READY_FD={value!r}: not a file descriptor number"
    assert ENV_READY_FD not in environ  # removed even when invalid


@pytest.mark.parametrize("value", ["0", "1", "2"])
def test_ready_fd_from_env_rejects_standard_streams(value: str) -> None:
    with pytest.raises(ReadinessError, match=r"must be 3 or more"):
        ready_fd_from_env({ENV_READY_FD: value})


def test_ready_fd_from_env_rejects_a_closed_fd(fds: Fds) -> None:
    _, w = fds.pipe()
    os.close(w)
    fds.forget(w)
    with pytest.raises(ReadinessError) as info:
        ready_fd_from_env({ENV_READY_FD: str(w)})
    message = str(info.value)
    assert message.startswith(f"HOTSWAP_READY_FD='{w}': not an open file descriptor")
    assert "\n" not in message


def test_ready_fd_from_env_rejects_a_regular_file(tmp_path, fds: Fds) -> None:
    fd = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT)
    fds.open.append(fd)
    with pytest.raises(ReadinessError) as info:
        ready_fd_from_env({ENV_READY_FD: str(fd)})
    assert str(info.value) == f"HOTSWAP_READY_FD='{fd}': not a pipe"


def test_ready_fd_from_env_rejects_the_read_end(fds: Fds) -> None:
    r, _ = fds.pipe()
    with pytest.raises(ReadinessError) as info:
        ready_fd_from_env({ENV_READY_FD: str(r)})
    assert str(info.value) == f"HOTSWAP_READY_FD='{r}': pipe is not open for writing"


def test_ready_fd_from_env_rejects_a_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ReadinessError, match=r": not a pipe$"):
            ready_fd_from_env({ENV_READY_FD: str(a.fileno())})


# --- ReadinessReader -------------------------------------------------------------------------


def reader_for(fds: Fds) -> tuple[ReadinessReader, int]:
    r, w = os.pipe()
    fds.open.append(w)
    return ReadinessReader(r), w


def test_reader_makes_fd_non_blocking_and_exposes_it(fds: Fds) -> None:
    r, _ = fds.pipe()
    reader = ReadinessReader(r)
    assert os.get_blocking(r) is False
    assert reader.fileno() == r
    assert fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK


def test_reader_nothing_yet_then_partial_then_ready(fds: Fds) -> None:
    reader, w = reader_for(fds)
    with reader:
        assert reader.read() is None
        os.write(w, b"REA")
        assert reader.read() is None
        os.write(w, b"DY 123")
        assert reader.read() is None
        os.write(w, b"4\n")
        assert reader.read() == Outcome("ready", pid=1234)


def test_reader_outcome_is_final(fds: Fds) -> None:
    reader, w = reader_for(fds)
    with reader:
        os.write(w, b"READY 9\n")
        os.close(w)
        fds.forget(w)
        assert reader.read() == Outcome("ready", pid=9)
        assert reader.read() == Outcome("ready", pid=9)  # EOF after the line changes nothing


def test_reader_failed_with_reason(fds: Fds) -> None:
    reader, w = reader_for(fds)
    with reader:
        os.write(w, b"FAILED cannot exec /opt/old/bin/python: No such file or directory\n")
        outcome = reader.read()
    assert outcome == Outcome(
        "failed", reason="cannot exec /opt/old/bin/python: No such file or directory"
    )


def test_reader_round_trip_with_announce_failure(fds: Fds) -> None:
    reader, w = reader_for(fds)
    with reader:
        announce_failure(w, "line one\nline two")
        fds.forget(w)
        assert reader.read() == Outcome("failed", reason="line one line two")


def test_reader_eof_when_writer_closes_silently(fds: Fds) -> None:
    reader, w = reader_for(fds)
    with reader:
        os.close(w)
        fds.forget(w)
        outcome = reader.read()
    assert outcome is not None
    assert outcome.kind == "eof"
    assert "without a word" in outcome.reason


def test_reader_eof_with_an_unfinished_line(fds: Fds) -> None:
    reader, w = reader_for(fds)
    with reader:
        os.write(w, b"READY 12")
        os.close(w)
        fds.forget(w)
        outcome = reader.read()
    assert outcome is not None and outcome.kind == "eof" and outcome.pid is None
    assert "'READY 12'" in outcome.reason


@pytest.mark.parametrize(
    "line", [b"HELLO\n", b"READY\n", b"READY abc\n", b"READY 0\n", b"READY -5\n", b"\n"]
)
def test_reader_garbage_is_a_failure(fds: Fds, line: bytes) -> None:
    reader, w = reader_for(fds)
    with reader:
        os.write(w, line)
        outcome = reader.read()
    assert outcome is not None
    assert outcome.kind == "failed"
    assert outcome.reason.startswith("bad readiness message: ")


def test_reader_refuses_an_endless_line(fds: Fds) -> None:
    reader, w = reader_for(fds)
    with reader:
        os.write(w, b"x" * (MAX_LINE + 10))
        outcome = reader.read()
    assert outcome == Outcome("failed", reason="bad readiness message: line too long")


def test_reader_close_is_idempotent_and_closes_the_fd(fds: Fds) -> None:
    r, _ = fds.pipe()
    reader = ReadinessReader(r)
    reader.close()
    reader.close()
    fds.forget(r)
    assert not is_open(r)
    with pytest.raises(ValueError):
        reader.fileno()


def test_reader_follows_the_channel_after_ready() -> None:
    """After READY the new master keeps the pipe for the watch window: a later FAILED
    line asks for a rollback, and EOF only says it closed."""
    from upgrade.readiness import ReadinessReader, announce_failure, announce_ready

    read_fd, write_fd = os.pipe()
    reader = ReadinessReader(read_fd)
    assert announce_ready(write_fd, 1234, keep_open=True)
    first = reader.read()
    assert first is not None and (first.kind, first.pid) == ("ready", 1234)
    assert reader.read_next() is None
    announce_failure(write_fd, "new workers keep crashing")
    later = reader.read_next()
    assert later is not None and (later.kind, later.reason) == ("failed", "new workers keep crashing")
    eof = reader.read_next()
    assert eof is not None and eof.kind == "eof"
    reader.close()
