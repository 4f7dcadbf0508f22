"""upgrade.parent.Handover driven by hand, with a real child process on the other end of
a real readiness pipe: the events an owner gets, and what ends up in the record."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

from upgrade import Event, Handover, names
from upgrade.readiness import ReadinessReader
from upgrade.record import Recorder, UpgradeRecord


def _child(lines: list[str], then: str = "exit") -> tuple[int, int]:
    """Fork a stand-in new master that writes `lines` on the pipe, then exits or waits."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_fd)
            for line in lines:
                os.write(write_fd, line.encode() + b"\n")
            if then == "wait":
                time.sleep(30)
        finally:
            os._exit(3)
    os.close(write_fd)
    return pid, read_fd


def _handover(pid: int, fd: int, tmp_path: Path, **kwargs) -> Handover:
    pidfile = str(tmp_path / "app.pid")
    rec = UpgradeRecord.begin(os.getpid())
    rec.new = pid
    return Handover(pid, ReadinessReader(fd), rec, Recorder(pidfile, logging.getLogger("t")),
                    None, logging.getLogger("t"), kwargs.pop("timeout", 30.0),
                    kwargs.pop("watch_window", 0.0), **kwargs)


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return status


def test_a_failed_line_read_only_after_the_exit_still_gives_the_reason(tmp_path: Path) -> None:
    """Reaping can come before the select that would have read FAILED: the reason stays."""
    pid, fd = _child(["FAILED cannot exec /old/bin/python: No such file or directory"])
    status = _reap(pid)  # exited and reaped before anyone read the pipe
    handover = _handover(pid, fd, tmp_path)
    assert handover.exited(status) is Event.FAILED
    assert handover.failure == "cannot exec /old/bin/python: No such file or directory"
    assert handover.record.state == names.STATE_FAILED
    assert handover.over


def test_ready_then_booted_lines_then_a_failed_line_asks_for_a_rollback(tmp_path: Path) -> None:
    pid, fd = _child(["READY 42", "BOOTED 1", "BOOTED 2", "FAILED new workers keep crashing"],
                     then="wait")
    try:
        handover = _handover(pid, fd, tmp_path, rolling=True)
        events = []
        deadline = time.monotonic() + 10
        while Event.ROLLBACK not in events and time.monotonic() < deadline:
            event = handover.read()
            if event is Event.READY:
                handover.parking()
            if event is not None:
                events.append(event)
        assert events == [Event.READY, Event.BOOTED, Event.BOOTED, Event.ROLLBACK]
        assert handover.new_booted == 2
        assert handover.failure == "new workers keep crashing"
        handover.roll_back()
        assert handover.phase == "rolling back"
        assert handover.record.state == names.STATE_ROLLED_BACK
        assert handover.exited(_reap(pid)) is None  # QUIT sent by roll_back ended it
        assert handover.over
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_a_new_master_never_ready_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    pid, fd = _child([], then="wait")
    handover = _handover(pid, fd, tmp_path, timeout=0.2)
    try:
        assert handover.tick(time.monotonic()) is None
        handover.tick(handover.started + 0.21)  # the clock past the upgrade timeout
        status = _reap(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        assert handover.exited(status) is Event.FAILED
        assert "was not ready within 0.2 s" in handover.record.reason
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.mark.parametrize("window", [0.0, 0.2])
def test_the_watch_window_ends_in_a_commit(tmp_path: Path, window: float) -> None:
    pid, fd = _child(["READY 42"], then="wait")
    handover = _handover(pid, fd, tmp_path, watch_window=window)
    try:
        assert _wait_event(handover) is Event.READY
        handover.parking()
        handover.drained()
        assert handover.phase == "watching"
        deadline = handover.next_deadline()
        assert deadline is not None
        assert handover.tick(deadline - 0.01 if window else deadline) is (None if window else Event.COMMIT)
        if window:
            assert handover.tick(deadline) is Event.COMMIT
        handover.commit("watch window over")
        handover.finish()
        assert handover.record.state == names.STATE_COMMITTED
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _wait_event(handover: Handover) -> Event | None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        event = handover.read()
        if event is not None:
            return event
        time.sleep(0.01)
    return None
