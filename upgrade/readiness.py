"""The readiness channel: one line from the new master to the old one.

During an upgrade the old master (M1) must not retire anything until the new
master (M2) has really booted its workers, and it must learn quickly and
unambiguously when M2 gave up. A pipe gives both for free: M2 writes a single
line (``READY <pid>`` or ``FAILED <reason>``), and if M2 dies before writing,
the kernel closes its end and M1 sees end-of-file. Nothing to time out on,
nothing to poll but one fd that fits in the master's select loop.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Literal

from .names import BOOTED, ENV_READY_FD, FAILED, READY

# A message longer than this is not a message: refuse it rather than buffer a
# misbehaving writer's output forever. Writers cap the reason well below it.
MAX_LINE = 4096
MAX_REASON = 2000

_READ_CHUNK = 4096


class ReadinessError(Exception):
    """HOTSWAP_READY_FD is unusable; str() is one line for the operator."""


@dataclass
class Outcome:
    """What the new master told us (or that it died without telling)."""

    kind: Literal["ready", "failed", "eof", "booted"]
    pid: int | None = None
    reason: str = ""
    count: int = 0  # "booted": how many new workers serve


def fold_line(text: str, limit: int = MAX_REASON) -> str:
    """Squash any text into one bounded line.

    The protocol is line based, so a multi-line reason (an exception message,
    a traceback) must not be able to end the message early or smuggle a
    second one in; operators also want a single log line.
    """
    folded = " ".join(text.split())
    if len(folded) > limit:
        folded = folded[: limit - 3] + "..."
    return folded or "unknown reason"


def _send_line(fd: int, line: str, close: bool = True) -> bool:
    """Write one line (and close), shrugging off a reader that is already gone; False then.

    EPIPE means the old master exited (nobody left to tell), EBADF means the
    fd was never ours or already closed; neither may crash a master that is
    otherwise serving fine.
    """
    data = line.encode("utf-8", "replace")
    try:
        while data:
            written = os.write(fd, data)
            data = data[written:]
        return True
    except BrokenPipeError:
        return False
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        return False
    finally:
        if close:
            try:
                os.close(fd)
            except OSError:
                pass


def announce_ready(fd: int, pid: int, keep_open: bool = False) -> bool:
    """Tell the old master we serve; it may now retire its workers.

    `keep_open` keeps the channel for the watch window: a later FAILED line then asks
    the old master to roll back. False when the old master is already gone.
    """
    return _send_line(fd, f"{READY} {int(pid)}\n", close=not keep_open)


def announce_booted(fd: int, count: int) -> bool:
    """Rolling handover: `count` new workers serve, so as many old ones may go."""
    return _send_line(fd, f"{BOOTED} {int(count)}\n", close=False)


def announce_failure(fd: int, reason: str) -> None:
    """Tell the old master we give up, and why, so it can log it and roll back."""
    _send_line(fd, f"{FAILED} {fold_line(reason)}\n")


def _bad_env(value: str, problem: str) -> ReadinessError:
    return ReadinessError(f"{ENV_READY_FD}={value!r}: {problem}")


def _validate_ready_fd(value: str) -> int:
    """Refuse anything that is not the write end of a pipe we could use.

    Writing our READY line into some random fd (a socket we just adopted, a
    log file) would corrupt it, so we check rather than trust the variable.
    """
    if not (value.isascii() and value.isdigit()):
        raise _bad_env(value, "not a file descriptor number")
    fd = int(value)
    if fd < 3:
        raise _bad_env(value, "must be 3 or more (0, 1, 2 are stdin, stdout, stderr)")
    try:
        mode = os.fstat(fd).st_mode
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise _bad_env(value, f"not an open file descriptor ({exc.strerror})") from None
    if not stat.S_ISFIFO(mode):
        raise _bad_env(value, "not a pipe")
    if flags & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR):
        raise _bad_env(value, "pipe is not open for writing")
    return fd


def ready_fd_from_env(environ: MutableMapping[str, str]) -> int | None:
    """Take the readiness fd handed down by the old master, if any.

    The variable is removed so that nothing we start later (workers, a
    further upgrade's child) believes it owns the channel, and the fd is made
    non-inheritable for the same reason: if a grandchild kept the write end
    open, the old master would never see end-of-file when we die.
    """
    value = environ.pop(ENV_READY_FD, None)
    if value is None:
        return None
    fd = _validate_ready_fd(value)
    os.set_inheritable(fd, False)
    return fd


def _parse_line(raw: bytes) -> Outcome:
    """Turn one received line into an Outcome; anything odd counts as failure.

    An unparseable message must not be read as success: the old master would
    retire its workers in favour of a new master that may not be serving.
    """
    line = raw.decode("utf-8", "replace").rstrip("\r")
    word, _, rest = line.partition(" ")
    if word == READY and rest.isascii() and rest.isdigit() and int(rest) > 0:
        return Outcome("ready", pid=int(rest))
    if word == FAILED:
        return Outcome("failed", reason=rest.strip() or "unknown reason")
    if word == BOOTED and rest.isascii() and rest.isdigit():
        return Outcome("booted", count=int(rest))
    return Outcome("failed", reason=f"bad readiness message: {fold_line(line, 200)!r}")


class ReadinessReader:
    """The old master's end of the channel, driven from its select loop.

    Once an outcome is known it is final: later calls return the same one and
    read nothing more, so a loop that asks twice cannot turn READY into EOF
    (the writer closes right after its line).
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False
        self._buffer = bytearray()
        self._outcome: Outcome | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """The fd to wait on in select/poll."""
        if self._closed:
            raise ValueError("ReadinessReader is closed")
        return self._fd

    def read(self) -> Outcome | None:
        """Consume what is there without blocking; the outcome once known, else None."""
        if self._outcome is not None:
            return self._outcome
        if self._closed:
            raise ValueError("ReadinessReader is closed")
        outcome = self._drain()
        if outcome is not None and outcome.kind != "booted":  # progress, not an outcome
            self._outcome = outcome
        return outcome

    def read_next(self) -> Outcome | None:
        """After READY: the next message (a FAILED asking for a rollback, or EOF), else None."""
        if self._closed:
            raise ValueError("ReadinessReader is closed")
        return self._drain()

    def _drain(self) -> Outcome | None:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return _parse_line(line)
            if len(self._buffer) > MAX_LINE:
                return Outcome("failed", reason="bad readiness message: line too long")
            try:
                chunk = os.read(self._fd, _READ_CHUNK)
            except BlockingIOError:
                return None
            if not chunk:
                return self._eof()
            self._buffer += chunk

    def _eof(self) -> Outcome:
        reason = "new master closed the readiness pipe without a word (it probably died)"
        if self._buffer:
            partial = fold_line(self._buffer.decode("utf-8", "replace"), 200)
            reason += f"; unfinished message {partial!r}"
        return Outcome("eof", reason=reason)

    def close(self) -> None:
        """Release the fd; safe to call twice."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> ReadinessReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
