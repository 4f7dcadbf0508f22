"""The rolling handover (`--upgrade-surge K`): never more than workers + K workers, under load.

A poller thread counts, every few milliseconds, the workers of every master of the
service (the one PIDFILE names, the old one and the new masters it forked): that count
is what the memory of an upgrade follows. Without a surge it reaches twice the workers
(the control test below proves the poller sees both generations); with `--upgrade-surge
1` and 4 workers it must never pass 5, through upgrades, a failed upgrade and a rollback.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from load import app_source
from support import wait_for, workers_of, write_app
from test_server_upgrade import served_versions, wait_final, wait_state

from pidfiles import Pidfile, procs
from upgrade import names

WORKERS = ["--workers", "4", "--threads", "2"]


class WorkerCount(threading.Thread):
    """Peak number of live workers of every master of one service, polled every 5 ms."""

    def __init__(self, pidfile: Path, first_master: int) -> None:
        super().__init__(daemon=True)
        self.pidfile = Pidfile(pidfile)
        self.masters = {first_master}
        self.peak = 0
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if the test forgets to stop it
        while not self.done.is_set() and time.monotonic() < deadline:
            current = self.pidfile.read()
            if current is not None:
                self.masters.add(current)
            for master in list(self.masters):
                self.masters.update(procs.new_masters_of(master))
            count = sum(len(workers_of(m)) for m in self.masters if procs.is_alive(m))
            self.peak = max(self.peak, count)
            self.samples += 1
            time.sleep(0.005)

    def __enter__(self) -> WorkerCount:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        self.join(5)


def _upgrade(rig, version: str) -> None:
    old = rig.m.current_pid()
    rig.new_app(version)
    os.kill(old, signal.SIGUSR2)
    rec = wait_final(rig.pidfile, old, timeout=60)
    assert rec.state == names.STATE_COMMITTED, rec.line()
    wait_for(lambda: not procs.is_alive(old), what=f"old master {old} to exit")
    new = rig.m.current_pid()
    wait_for(lambda: len(workers_of(new)) == 4, what="the new generation's 4 workers")
    assert served_versions(rig) == {(new, version)}


@pytest.mark.timeout(120)
def test_surge_one_keeps_at_most_five_of_four_workers_through_three_upgrades(served) -> None:
    rig = served(*WORKERS, "--upgrade-surge", "1", "--watch-window", "0.5")
    with WorkerCount(rig.pidfile, rig.pid) as count:
        for number in range(2, 5):
            _upgrade(rig, f"v{number}")
    assert count.samples > 100
    assert count.peak <= 5, f"{count.peak} workers at once with --workers 4 --upgrade-surge 1"
    rig.finish()


@pytest.mark.timeout(90)
def test_without_surge_both_generations_hold_all_their_workers(served) -> None:
    """The control: the poller does see the doubling the surge option prevents."""
    rig = served(*WORKERS, "--watch-window", "0.5")
    with WorkerCount(rig.pidfile, rig.pid) as count:
        _upgrade(rig, "v2")
    assert count.peak == 8, count.peak
    rig.finish()


@pytest.mark.timeout(90)
def test_surge_with_a_broken_version_leaves_the_four_old_workers(served) -> None:
    rig = served(*WORKERS, "--upgrade-surge", "1")
    old = rig.pid
    before = set(workers_of(old))
    with WorkerCount(rig.pidfile, old) as count:
        rig.new_app("v2", "raise RuntimeError('broken release')")
        os.kill(old, signal.SIGUSR2)
        rec = wait_final(rig.pidfile, old)
    assert rec.state == names.STATE_FAILED and "broken release" in rec.reason, rec.line()
    assert set(workers_of(old)) == before, "not one old worker was touched"
    assert count.peak <= 5
    assert served_versions(rig) == {(old, "v1")}
    rig.finish(only_master=old, only_version="v1")


@pytest.mark.timeout(90)
def test_surge_rollback_after_the_handover_brings_four_old_workers_back(served, tmp_path) -> None:
    release = tmp_path / "releases" / "v1"
    release.mkdir(parents=True)
    write_app(release, "app", app_source("v1"))
    (tmp_path / "current").symlink_to(release)
    rig = served(*WORKERS, "--upgrade-surge", "1", "--watch-window", "60",
                 app_dir=tmp_path / "current", env={"PWD": str(tmp_path / "current")})
    old = rig.pid
    v2 = tmp_path / "releases" / "v2"
    v2.mkdir()
    write_app(v2, "app", app_source("v2"))
    (tmp_path / "current.new").symlink_to(v2)
    os.replace(tmp_path / "current.new", tmp_path / "current")
    with WorkerCount(rig.pidfile, old) as count:
        os.kill(old, signal.SIGUSR2)
        rec = wait_state(rig.pidfile, old, names.STATE_WATCHING, timeout=60)
        assert workers_of(old) == [], "after a rolling handover the old master holds no worker"
        os.kill(rec.new, signal.SIGKILL)
        rec = wait_final(rig.pidfile, old)
        assert rec.state == names.STATE_ROLLED_BACK, rec.line()
        wait_for(lambda: len(workers_of(old)) == 4, what="4 old workers again")
        wait_for(lambda: served_versions(rig) == {(old, "v1")},
                 what="the old release to serve again")
    assert count.peak <= 8  # a rollback may overlap the leaving generation; never more
    rig.finish()
