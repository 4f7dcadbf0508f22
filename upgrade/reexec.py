"""Start the next master generation: fork, hand over the sockets, exec.

The old master keeps serving throughout; the only thing it gives away is a
copy of its listening fds. The forked child lives for a few microseconds
between fork and exec and is the dangerous part: it is a full copy of the
master, with its signal handlers, self-pipe, atexit hooks and clean-up code.
If that copy ever returned into the master's code path after a failed exec,
it would run the master's shutdown (closing sockets, unlinking unix socket
paths and the pidfile) and take the live service down with it. So the child
runs only the code in this module and always leaves with ``os._exit``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from listeners import export_env

from .names import ENV_FDS, ENV_GENERATION, ENV_KEEPER_FD, ENV_PARENT_PID, ENV_READY_FD, FAILED
from .readiness import fold_line

__all__ = [
    "ENV_FDS",
    "ENV_GENERATION",
    "ENV_PARENT_PID",
    "ENV_READY_FD",
    "EXIT_EXEC_FAILED",
    "SpawnedMaster",
    "original_argv",
    "spawn_new_master",
    "start_directory",
]

EXIT_EXEC_FAILED = 127  # what shells use for "command could not be run"

_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


@dataclass
class SpawnedMaster:
    """The new master as seen from the old one."""

    pid: int
    ready_fd: int  # read end of the readiness pipe: non-blocking, non-inheritable, ours to close


def start_directory() -> str:
    """The directory we were started from, as the operator spelled it.

    A deploy typically switches a ``current`` symlink to a new release; the
    next master must start in ``.../current`` (followed anew), not in the
    resolved old release directory that os.getcwd() reports. $PWD keeps the
    unresolved spelling, but only the shell maintains it, so it is trusted
    only when it names the directory we are really in.

    Call this once at startup and keep the answer: after a deploy switched
    the symlink, $PWD no longer names our (old) working directory.
    """
    cwd = os.getcwd()
    pwd = os.environ.get("PWD", "")
    if not os.path.isabs(pwd):
        return cwd
    try:
        here, there = os.stat("."), os.stat(pwd)
    except OSError:
        return cwd
    if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
        return pwd
    return cwd


def original_argv() -> list[str]:
    """The command line exactly as given to the interpreter.

    sys.orig_argv keeps the interpreter and its options (``python -m
    hotswap …`` versus the ``hotswap`` console script) with paths unresolved,
    so exec'ing it again starts the new code the same way the old was started.
    """
    return list(sys.orig_argv)


def _child_environment(
    env: Mapping[str, str] | None,
    cwd: str,
    listen_fds: Sequence[int],
    write_fd: int,
    generation: int,
) -> dict[str, str]:
    """The new master's environment: the given one plus the hand-over variables.

    PWD is set to the (unresolved) cwd, as a shell's cd would, so that the new
    master's own start_directory() gives the same answer for the upgrade after.
    """
    environ = dict(os.environ if env is None else env)
    if os.path.isabs(cwd):
        environ["PWD"] = cwd
    environ.update(export_env(listen_fds))
    environ[ENV_PARENT_PID] = str(os.getpid())
    environ[ENV_READY_FD] = str(write_fd)
    environ[ENV_GENERATION] = str(generation)
    return environ


def _restore_default_signals() -> None:
    """Give the new program a clean signal state.

    exec resets *handled* signals by itself, but ignored ones stay ignored
    and the blocked mask is inherited: a new master born with WINCH ignored
    or TERM blocked would misbehave in ways nobody could guess from its code.
    """
    for signum in signal.valid_signals():
        if signum in _UNCATCHABLE:
            continue
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass  # not settable here; exec will reset it if it was handled


def _passed_fds(listen_fds: Sequence[int], write_fd: int, environ: Mapping[str, str]) -> list[int]:
    """What crosses the exec besides 0-2: the listeners, the readiness pipe, the keeper's fd."""
    fds = [*listen_fds, write_fd]
    keeper = environ.get(ENV_KEEPER_FD, "")
    if keeper.isdigit():
        fds.append(int(keeper))
    return sorted(set(fds))


def _close_all_but(kept: Sequence[int]) -> None:
    """Close every fd above 2 that is not passed on on purpose.

    O_CLOEXEC is not enough: an fd inherited from the shell or the supervisor, or opened
    by a C extension of a --preload app without it, would otherwise pass to every new
    generation, and pile up over upgrades."""
    low = 3
    for fd in sorted(fd for fd in kept if fd >= 3):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _fd_limit())


def _fd_limit() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 65536


def _describe(exc: BaseException) -> str:
    """The part of an error an operator needs: "No such file or directory"."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _report_and_die(write_fd: int, reason: str) -> NoReturn:
    """Tell the old master why, then vanish without running anybody's clean-up."""
    try:
        # A vanished reader must give EPIPE here, not kill us silently by SIGPIPE.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        os.write(write_fd, f"{FAILED} {fold_line(reason)}\n".encode("utf-8", "replace"))
    finally:
        os._exit(EXIT_EXEC_FAILED)


def _run_child(
    argv: Sequence[str], cwd: str, listen_fds: Sequence[int], write_fd: int, environ: dict[str, str]
) -> NoReturn:
    """Everything the forked child does; never returns, whatever happens.

    Each step first says what it is about to try, so that the one line sent
    back on failure names the step, e.g. "cannot exec /opt/old/bin/python: No
    such file or directory".
    """
    failing = "cannot reset signal handlers"
    try:
        _restore_default_signals()
        passed = _passed_fds(listen_fds, write_fd, environ)
        for fd in passed:
            failing = f"cannot pass fd {fd} to the new master"
            os.set_inheritable(fd, True)  # same number on the other side: no dup
        failing = "cannot close the fds the new master must not get"
        _close_all_but(passed)
        failing = f"cannot chdir to {cwd}"
        os.chdir(cwd)
        failing = "cannot unblock signals"
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        failing = f"cannot exec {argv[0]}"
        os.execvpe(argv[0], list(argv), environ)
    except BaseException as exc:  # the child must never unwind into the master's code
        try:
            reason = f"{failing}: {_describe(exc)}"
        except BaseException:
            reason = failing
        _report_and_die(write_fd, reason)
    finally:
        os._exit(EXIT_EXEC_FAILED)


def spawn_new_master(
    argv: Sequence[str],
    cwd: str,
    listen_fds: Sequence[int],
    generation: int,
    env: Mapping[str, str] | None = None,
) -> SpawnedMaster:
    """Fork and exec the next master, handing it our listening sockets.

    The fds keep their numbers across exec (no dup, no renumbering) so that a
    systemd socket-activation layout of 3..N survives any number of upgrades,
    and the new master can tell exactly which socket is which. Our own copies
    are untouched: they stay open and non-inheritable in this process, only
    the child marks them inheritable just before exec.

    Pass ``cwd=start_directory()`` (recorded at startup) and
    ``argv=original_argv()`` so that a deploy's switched ``current`` symlink
    is followed and the new code is started exactly the way the old was.
    The child also restores every signal to its default disposition and
    unblocks them all, so nothing the master ignored or blocked leaks into it.

    Returns at once; readiness arrives later on ``ready_fd`` (see
    readiness.ReadinessReader). If the child cannot chdir or exec, it writes
    ``FAILED <reason>`` there and exits 127. Fork failure raises OSError here.
    """
    if not argv:
        raise ValueError("cannot start a new master: empty command line")
    fds = [int(fd) for fd in listen_fds]
    read_fd, write_fd = os.pipe()  # both non-inheritable until the child says otherwise
    try:
        os.set_blocking(read_fd, False)
        environ = _child_environment(env, cwd, fds, write_fd, generation)
        pid = _fork_with_signals_blocked(argv, cwd, fds, write_fd, environ)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child holds it now; its exit is our EOF
    return SpawnedMaster(pid=pid, ready_fd=read_fd)


def _fork_with_signals_blocked(
    argv: Sequence[str], cwd: str, fds: list[int], write_fd: int, environ: dict[str, str]
) -> int:
    """Fork with every signal blocked until the child has reset its handlers.

    Otherwise a signal landing in the child before the reset would run the
    master's handler there and poke the master's self-pipe, which both
    processes share, faking a signal the master never received.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
        if pid == 0:
            _run_child(argv, cwd, fds, write_fd, environ)  # never returns
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # parent only, see above
    return pid
