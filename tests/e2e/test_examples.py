"""The servers of docs/examples upgraded 5 times in a row under load, without one failed request.

Each example (asyncio, threaded http.server, uvicorn) is copied into a release folder of
its own with a VERSION file and started as a real process with a pidfile. While 8
`requests` client threads (kept-alive and `Connection: close`, fast, 300-400 ms slow, and
pausers idling on kept-alive connections; never a retry) load it, a new VERSION is
written and the server is upgraded through an upgrade client (`hotswap upgrade --json`
for the threaded example, `scripts/hotswap-upgrade.sh` for the asyncio one, the library's
`run_upgrade` for uvicorn; each sends USR2 to the pid in our own pidfile and follows
PIDFILE.upgrade), 5 times; after the first, `hotswap status` must describe the server. Then a broken release
(raises after building its Upgrader, before listen()) is deployed and upgraded to.

Proven, per example:
- not one request failed;
- each upgrade is `committed`, names a new process, and the version served changes to the
  one deployed: no request sent after an upgrade returned got an older version, and
  every version was served;
- the broken release's upgrade is `failed` with a reason, the serving process, pidfile
  and version are unchanged, and it goes on serving;
- every retired generation exited with status 0, and at the end no process of ours is
  left: the test process is a child subreaper, so every generation becomes our child once
  its parent exits, and each is reaped here.

The three examples run at the same time (one thread each) to keep the suite fast.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from load import REPO, ClientSpec, LoadGenerator, Record, failure_report, run_upgrade_tool
from support import free_port, wait_for

from upgrade import names
from upgrade.orchestrator import run_upgrade
from upgrade.record import UpgradeRecord, read_state

EXAMPLES = ["asyncio_server", "threaded_server", "uvicorn_server"]
UPGRADES = 5
PR_SET_CHILD_SUBREAPER = 36


class ExampleLoad(LoadGenerator):
    """The standard load generator, reading the examples' answer {"version", "pid"}."""

    def _one(self, session: Any, base: str, path: str, headers: dict[str, str],
             spec: ClientSpec) -> Record:
        record = Record(spec.name, spec.kind, spec.keepalive, spec.transport, path,
                        time.monotonic())
        try:
            response = session.get(base + path, headers=headers, timeout=15)
            record.status = response.status_code
            record.server_closed = response.headers.get("Connection", "").lower() == "close"
            if response.status_code != 200:
                raise ValueError(f"status {response.status_code}: {response.text[:200]!r}")
            data = response.json()
            record.version, record.master = data["version"], data["pid"]
            record.ok = True
        except Exception as exc:  # any failure counts; its kind is the evidence
            record.failure = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        record.end = time.monotonic()
        return record


def clients() -> list[ClientSpec]:
    specs = [ClientSpec(f"keepalive-{i}") for i in range(3)]
    specs += [ClientSpec(f"close-{i}", keepalive=False) for i in range(2)]
    specs += [ClientSpec(f"slow-{i}", kind="slow") for i in range(2)]
    specs += [ClientSpec("pauser-0", kind="pauser")]
    return specs


def fetch_json(base: str) -> dict[str, Any]:
    """One request on a new connection (no retry)."""
    response = requests.get(base + "/", timeout=10, headers={"Connection": "close"})
    response.raise_for_status()
    return response.json()


@dataclass
class Outcome:
    """What one example's run measured, or the error that ended it."""

    name: str
    error: BaseException | None = None
    requests: int = 0
    failures: list[Record] = field(default_factory=list)
    upgrades: list[UpgradeRecord] = field(default_factory=list)
    broken: UpgradeRecord | None = None
    exit_codes: dict[int, int] = field(default_factory=dict)
    leftovers: list[int] = field(default_factory=list)
    versions_in_order: bool = False
    seconds: float = 0.0
    log: str = ""


class ExampleRun:
    """One example in its release folder: started, upgraded, and always stopped and reaped."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.release = tmp / name
        self.release.mkdir()
        self.script = self.release / f"{name}.py"
        self.source = (REPO / "docs" / "examples" / f"{name}.py").read_text()
        self.script.write_text(self.source)
        self.pidfile = self.release / "app.pid"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.pids: set[int] = set()  # every generation we know of, reaped at the end
        self.committed_at: list[tuple[float, int]] = []  # (monotonic, version) after each upgrade
        self.outcome = Outcome(name)
        self.log_path = self.release / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def deploy(self, version: str, broken: bool = False) -> None:
        """What a deploy does: new code and a new VERSION on disk."""
        (self.release / "VERSION").write_text(version + "\n")
        source = self.source
        if broken:  # raise on the line before the one that calls up.listen(), once up exists
            source = re.sub(r"^( *).*up\.listen\(", r'\1raise RuntimeError("broken release")\n\g<0>',
                            source, count=1, flags=re.M)
            assert "broken release" in source
        self.script.write_text(source)

    def current(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        env = {**os.environ, "PIDFILE": str(self.pidfile), "BIND": f"127.0.0.1:{self.port}",
               "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, self.script.name], cwd=self.release,
                                         env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.pids.add(self.proc.pid)
        wait_for(lambda: self.current() == self.proc.pid, 15,
                 what=f"{self.name} to write its pidfile; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def upgrade(self) -> UpgradeRecord:
        """One upgrade through the upgrade client, followed to its final state."""
        tool = {"threaded_server": "cli", "asyncio_server": "script"}.get(self.name)
        if tool is not None:
            run = run_upgrade_tool(tool, self.pidfile, timeout=20)
            record = read_state(str(self.pidfile))
            assert record is not None, run.explain()
            if tool == "cli":  # the script prints the line, the CLI the record as JSON
                assert run.report is not None and record.id == run.report["id"], run.explain()
            assert (run.returncode == 0) == (record.state == names.STATE_COMMITTED), run.explain()
        else:
            report = run_upgrade(str(self.pidfile), timeout=20)
            assert report.record is not None, report.line()
            record = report.record
        if record.new:
            self.pids.add(record.new)
        return record

    def scenario(self) -> None:
        self.deploy("v1")
        self.start()
        assert fetch_json(self.base) == {"version": "v1", "pid": self.proc.pid}
        load = ExampleLoad(self.base, None, clients(), max_seconds=60).start()
        try:
            wait_for(lambda: all(load.last(c.name) for c in load.clients), 15,
                     what="every client to be answered once")
            for n in range(2, 2 + UPGRADES):
                self.upgrade_to(f"v{n}")
            self.upgrade_to_broken(f"v{1 + UPGRADES}")
        finally:
            load.stop()
        self.outcome.requests = len(load.records)
        self.outcome.failures = load.failures()
        self.outcome.versions_in_order = self._versions_in_order(load)

    def upgrade_to(self, version: str) -> None:
        old = self.current()
        self.deploy(version)
        record = self.upgrade()
        self.outcome.upgrades.append(record)
        assert record.state == names.STATE_COMMITTED, f"{record.line()}\n{self.log()}"
        assert record.old == old and record.new not in (None, old)
        assert self.current() == record.new
        assert fetch_json(self.base) == {"version": version, "pid": record.new}
        if version == "v2":
            self.check_status(record)
        self.committed_at.append((time.monotonic(), int(version[1:])))

    def check_status(self, record: UpgradeRecord) -> None:
        """`hotswap status` reads an Upgrader server's PIDFILE and record as hotswap's own."""
        done = subprocess.run([sys.executable, "-m", "hotswap", "status", "--pidfile",
                               str(self.pidfile)], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"master {record.new}" in done.stdout, done.stdout
        assert "upgraded" in done.stdout, done.stdout

    def upgrade_to_broken(self, serving: str) -> None:
        old = self.current()
        self.deploy("broken", broken=True)
        record = self.upgrade()
        self.outcome.broken = record
        assert record.state == names.STATE_FAILED, f"{record.line()}\n{self.log()}"
        assert record.reason and record.old == old
        assert self.current() == old
        assert not Path(f"{self.pidfile}.oldbin").exists()
        assert fetch_json(self.base) == {"version": serving, "pid": old}

    def _versions_in_order(self, load: LoadGenerator) -> bool:
        """Every request sent after an upgrade returned (the old process gone) got that
        version or a newer one, and all six versions were served. (While both generations
        accept, a client on new connections may get either: that is no error.)"""
        records = [r for r in load.records if r.ok]
        for moment, version in self.committed_at:
            if any(int(r.version[1:]) < version for r in records if r.start > moment):
                return False
        served = {r.version for r in records}
        return served == {f"v{n}" for n in range(1, 2 + UPGRADES)}

    def stop(self) -> None:
        """Teardown, failure or not: TERM the serving generation, then SIGKILL our process
        group, and reap every generation (each is our child by then, see the docstring)."""
        current = self.current()
        if current in self.pids and _alive(current):
            os.kill(current, signal.SIGTERM)
            wait_for(lambda: not _alive(current), 10, what=f"{self.name} {current} to stop")
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in sorted(self.pids):
            code = _reap(pid)
            if code is not None:
                self.outcome.exit_codes[pid] = code
        self.outcome.leftovers = [pid for pid in self.pids if _alive(pid)]
        self.outcome.log = self.log()

    def run(self) -> Outcome:
        started = time.monotonic()
        try:
            self.scenario()
        except BaseException as exc:  # reported by the test of this example
            self.outcome.error = exc
        finally:
            try:
                self.stop()
            except BaseException as exc:
                self.outcome.error = self.outcome.error or exc
        self.outcome.seconds = time.monotonic() - started
        return self.outcome


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _reap(pid: int, timeout: float = 10.0) -> int | None:
    """Wait for our child `pid`; its exit code (negative: killed by that signal)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None  # not (or no longer) our child: reaped already
        if got:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Run the three examples at once; each test then judges its own."""
    tmp = tmp_path_factory.mktemp("examples")
    runs = [ExampleRun(name, tmp) for name in EXAMPLES]
    results: dict[str, Outcome] = {}
    _set_subreaper(True)
    try:
        threads = [threading.Thread(target=lambda r=r: results.update({r.name: r.run()}),
                                    name=f"example-{r.name}") for r in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        yield results
    finally:
        _set_subreaper(False)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_upgrades_under_load(outcomes: dict[str, Outcome], name: str) -> None:
    out = outcomes.get(name)
    assert out is not None, f"{name} did not finish"
    print(f"\n{name} ({out.seconds:.1f} s): {out.requests} requests, {len(out.failures)} failed, "
          f"{len(out.upgrades)} upgrades committed, broken release: "
          f"{out.broken.line() if out.broken else '-'}")
    if out.error is not None:
        raise AssertionError(f"{name}: {out.error!r}\nlog:\n{out.log}") from out.error
    assert not out.failures, failure_report(out.failures)
    assert len(out.upgrades) == UPGRADES and out.requests > 0
    assert out.versions_in_order
    assert out.broken is not None and out.broken.state == names.STATE_FAILED
    retired = [u.old for u in out.upgrades]
    assert all(out.exit_codes.get(pid) == 0 for pid in retired), out.exit_codes
    assert not out.leftovers
