"""A served master under the standard load, shared by the upgrade tests.

`served(*args)` starts a master on TCP + a unix socket with 2 workers and the 17-thread
load of load.py running against it; teardown stops the load and every master.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from load import LoadGenerator, Record, app_source, failure_report, fetch, standard_clients
from support import Master, MasterFactory, free_port, wait_for, workers_of, write_app

from pidfiles import procs

SLOW_IMPORT = "import time\ntime.sleep({seconds})"


class Served:
    """A master on TCP + unix under the standard load: the generation that must survive."""

    def __init__(self, masters: MasterFactory, tmp: Path, *args: str,
                 python: str | None = None, app_dir: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.app_dir = app_dir or tmp  # where `app.py` lives and the master is started
        self.port = free_port()
        self.sock = tmp / "hotswap.sock"
        self.base = f"http://127.0.0.1:{self.port}"
        if app_dir is None:
            write_app(tmp, "app", app_source("v1"))
        self.m: Master = masters("app:app", "--bind", f"127.0.0.1:{self.port}",
                                 "--bind", f"unix:{self.sock}", "--workers", "2",
                                 "--threads", "4", *args, cwd=self.app_dir, python=python,
                                 env=env)
        assert self.m.pidfile is not None
        self.pidfile = self.m.pidfile
        self.load = LoadGenerator(self.base, self.sock, standard_clients())

    def start_load(self) -> None:
        self.load.start()
        wait_for(lambda: self.load.all_served_by(self.m.pid), timeout=15,
                 what="every client to be answered once")

    @property
    def pid(self) -> int:
        return self.m.pid

    def new_app(self, version: str, prelude: str = "") -> None:
        write_app(self.app_dir, "app", app_source(version, prelude))

    def log_has(self, pid: int, text: str) -> bool:
        """A line "[time] [pid] [LEVEL] ...text..." is in the master's log."""
        return any(f"] [{pid}] [" in line and text in line for line in self.m.log().splitlines())

    def wait_log(self, pid: int, text: str, timeout: float = 15.0) -> None:
        wait_for(lambda: self.log_has(pid, text), timeout,
                 what=f"[{pid}] ... {text!r} in the log:\n{self.m.log()[-3000:]}")

    def new_master(self, parent: int | None = None) -> int:
        """The child of `parent` that is not a worker, once it has exec'd and says so."""
        parent = parent or self.pid

        def found() -> int | None:
            others = [c for c in procs.children(parent) if c not in workers_of(parent)]
            for pid in others:
                if self.log_has(pid, f"master {pid} (generation"):
                    return pid
            return None

        return wait_for(found, 15, what=f"a new master under {parent}")

    def assert_old_generation_intact(self, master: int | None = None) -> None:
        """What an operator checks after a failed upgrade: nothing changed."""
        master = master or self.pid
        assert procs.is_hotswap_master(master)
        assert self.m.current_pid() == master
        assert not Path(f"{self.pidfile}.oldbin").exists()
        assert self.sock.exists()
        answer = fetch("http+unix://localhost", unix=self.sock)
        assert answer["master"] == master
        assert fetch(self.base)["master"] == master
        wait_for(lambda: len(workers_of(master)) == 2, what=f"2 workers under {master}")

    def finish(self, only_master: int | None = None, only_version: str | None = None) -> list[Record]:
        """Stop the load; 0 failures, and (if given) every request served by that master/code."""
        self.load.stop()
        records = self.load.records
        assert not self.load.crashed, self.load.crashed
        assert len(records) > 100
        assert not self.load.failures(), failure_report(records)
        if only_master is not None:
            others = {(r.master, r.version) for r in records} - {(only_master, only_version)}
            assert not others, f"requests served by another generation: {others}"
        return records


@pytest.fixture
def served(masters: MasterFactory, tmp_path: Path) -> Iterator:
    rigs: list[Served] = []

    def make(*args: str, python: str | None = None, app_dir: Path | None = None,
             env: dict[str, str] | None = None) -> Served:
        rig = Served(masters, tmp_path, *args, python=python, app_dir=app_dir, env=env)
        rigs.append(rig)  # before the load starts: teardown always stops it
        rig.start_load()
        return rig

    try:
        yield make
    finally:
        for rig in rigs:
            rig.load.stop()
