"""WorkerHandle.feed: the status-pipe bytes a worker writes, split anywhere."""

from __future__ import annotations

import os

_SPT_NOENV = os.environ.get("SPT_NOENV")

from hotswap.master.handles import WorkerHandle  # noqa: E402

# Importing upgrade.proctitle sets SPT_NOENV in os.environ; children that later tests
# start must not inherit it (one of them checks what setproctitle does without it).
if _SPT_NOENV is None:
    os.environ.pop("SPT_NOENV", None)


def handle() -> WorkerHandle:
    return WorkerHandle(pid=1, fd=-1, epoch=0)


def test_p_sets_parked_empty_and_resumed_clears_it() -> None:
    h = handle()
    h.feed(b"B..", 1.0)
    assert h.booted and not h.parked_empty
    h.feed(b".P.", 2.0)
    assert h.parked_empty and h.last_seen == 2.0
    h.resumed()
    assert not h.parked_empty
    h.feed(b"P", 3.0)
    assert h.parked_empty


def test_p_inside_a_boot_error_is_text_not_a_signal() -> None:
    h = handle()
    h.feed(b"EPackage missing", 1.0)
    assert not h.parked_empty and h.boot_error == ""
    h.feed(b" (P)\n", 1.5)
    assert h.boot_error == "Package missing (P)" and not h.parked_empty


def test_every_byte_still_parses_alongside_p() -> None:
    h = handle()
    h.feed(b"B.RP", 1.0)
    assert h.booted and h.retiring_since == 1.0 and h.parked_empty
