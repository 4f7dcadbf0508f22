"""`hotswap start --daemon` tells the truth: it returns once the server is ready.

Detaching is fork, setsid, fork. The process the operator started does not exit at the
first fork: it waits on a pipe from the daemon, which writes `READY` once the pidfile is
written and every worker booted, or `FAILED <reason>` when it gives up. The waiting
process then exits 0, or prints the reason and exits 1; a daemon that dies without a
word (EOF) is a failure too. So `hotswap start -D && hotswap status` never races.

The write end belongs to the master alone: every child it forks (workers, the next
generation) closes it at once, or the waiting process would not see EOF when the master
dies.
"""

from __future__ import annotations

import os
import select
import sys
import time

_write_fd: int | None = None
_hooked = False


def detach(timeout: float) -> None:
    """Become a daemon; the calling process waits here for the daemon's word, then exits."""
    global _write_fd, _hooked
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first:
        os.close(write_fd)
        code = _wait(read_fd, timeout)
        os.waitpid(first, 0)
        os._exit(code)
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.umask(0o022)
    _write_fd = write_fd
    if not _hooked:
        os.register_at_fork(after_in_child=_close)
        _hooked = True


def report_ready() -> None:
    """The server is ready: let `start --daemon` exit 0. A no-op when nobody waits."""
    _send("READY")


def report_failure(reason: str) -> None:
    """The server gives up before it was ready: `start --daemon` prints `reason`, exits 1."""
    _send("FAILED " + " ".join(reason.split()))


def _send(line: str) -> None:
    fd = _write_fd
    if fd is None:
        return
    try:
        os.write(fd, line.encode("utf-8", "replace") + b"\n")
    except OSError:
        pass  # the operator's shell is gone: nothing to tell
    _close()


def _close() -> None:
    global _write_fd
    if _write_fd is not None:
        try:
            os.close(_write_fd)
        except OSError:
            pass
        _write_fd = None


def _wait(read_fd: int, timeout: float) -> int:
    """In the process the operator started: read the daemon's verdict, print a failure."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return _say(f"the daemon did not become ready within {timeout:g} s; see the error log")
        if select.select([read_fd], [], [], left)[0]:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                return _say("the daemon exited before it was ready; see the error log")
            data += chunk
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    if line == "READY":
        return 0
    return _say(line.removeprefix("FAILED ") or "the daemon failed")


def _say(reason: str) -> int:
    sys.stderr.write(f"hotswap: error: {reason}\n")
    sys.stderr.flush()
    return 1
