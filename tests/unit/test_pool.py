"""hotswap.master.pool: what the master keeps of a worker that exited before its last
words were read (reaping can come before the select that would have read them)."""

from __future__ import annotations

import logging
import os

from hotswap.master.handles import WorkerHandle
from hotswap.master.pool import WorkerPool
from hotswap.master.wakeups import Wakeups


def _pool() -> WorkerPool:
    def no_spec(fd: int, parked: bool):  # never called: nothing is spawned here
        raise AssertionError("no worker is forked in this test")

    return WorkerPool(1, no_spec, Wakeups(), logging.getLogger("test"), lambda: None)


def test_a_boot_error_written_just_before_the_exit_is_kept() -> None:
    pool = _pool()
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    handle = WorkerHandle(pid=4242, fd=read_fd, epoch=0)
    pool.handles[handle.pid] = handle
    pool.wakeups.add(read_fd, handle)
    os.write(write_fd, b"Ehealth check GET /lifespan answered 404\n")
    os.close(write_fd)  # the worker exited; nobody read its pipe yet
    assert pool.remove(4242) is handle
    assert handle.boot_error == "health check GET /lifespan answered 404"
    assert handle.boot_failure(1 << 8) == "health check GET /lifespan answered 404"
    pool.wakeups.close()


def test_a_pipe_still_held_by_a_grandchild_does_not_block_the_master() -> None:
    pool = _pool()
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    handle = WorkerHandle(pid=4243, fd=read_fd, epoch=0)
    pool.handles[handle.pid] = handle
    os.write(write_fd, b"B")
    assert pool.remove(4243) is handle  # returns although the write end is still open
    assert handle.booted
    os.close(write_fd)
    pool.wakeups.close()
