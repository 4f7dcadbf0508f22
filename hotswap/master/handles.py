"""The master's view of its workers: forking them and reading what they say.

Each worker gets its own pipe back to the master. What comes through it (booted,
heartbeat, boot error, retiring, parked and empty) is everything the master knows about
a worker besides its exit status, which keeps the protocol tiny and the master free of
shared memory or files.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from upgrade.parent import describe_exit

from ..worker import process as worker_mod


@dataclass
class WorkerHandle:
    pid: int
    fd: int  # read end of the worker's status pipe
    epoch: int  # which reload (HUP) it was started for
    started: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    booted: bool = False
    boot_error: str = ""
    retiring_since: float | None = None  # set when sent TERM
    parked_since: float | None = None  # set when sent WINCH (park), cleared on resume
    parked_empty: bool = False  # the worker said `P`: parked and holding no connection
    killed: bool = False
    _partial: bytes = b""

    def feed(self, data: bytes, now: float) -> None:
        """Digest bytes from the status pipe: `B` booted, `.` alive, `E...\\n` boot error,
        `R` retiring by itself (counted out of the pool, so it is replaced now), `P`
        parked and holding nothing."""
        self.last_seen = now
        data = self._partial + data
        self._partial = b""
        while data:
            if data[:1] == b"E":
                line, newline, rest = data[1:].partition(b"\n")
                if not newline:
                    self._partial = data
                    return
                self.boot_error = line.decode("utf-8", "replace")
                data = rest
                continue
            if data[:1] == b"B":
                self.booted = True
            elif data[:1] == b"R" and self.retiring_since is None:
                self.retiring_since = now
            elif data[:1] == b"P":
                self.parked_empty = True
            data = data[1:]


    def boot_failure(self, status: int) -> str:
        """Why it did not boot, for the log and for an old master waiting on us."""
        if self.boot_error:
            return self.boot_error
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == worker_mod.BOOT_FAILED:
            return f"worker {self.pid} could not load the app"
        return f"worker {self.pid} {describe_exit(status)} while booting"

    def parked(self, now: float) -> None:
        self.parked_since = now
        self.parked_empty = False

    def resumed(self) -> None:
        self.parked_since = None
        self.parked_empty = False


def fork_worker(spec_for: Callable[[int], worker_mod.WorkerSpec], epoch: int,
                in_child: Callable[[], None]) -> WorkerHandle:
    """Fork one worker; in the child, `in_child` drops master-only state, then it serves.

    Signals are blocked across the fork, and stay blocked in the child until the worker
    installed its own handlers (worker.Worker._install_signals unblocks them): in
    between, the master's handlers are gone and a USR1 or HUP would kill the new worker
    by its default action. A signal that comes meanwhile waits and is handled then.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                in_child()
                spec = spec_for(write_fd)
            except BaseException:
                os._exit(1)
            worker_mod.run(spec)  # never returns
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # the parent's, as before
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return WorkerHandle(pid=pid, fd=read_fd, epoch=epoch)
