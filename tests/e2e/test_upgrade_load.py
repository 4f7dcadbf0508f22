"""The CI test "upgrade without dropped requests": the project's promise, end to end.

One master serves TCP and a unix socket to 17 `requests` client threads (kept-alive and
`Connection: close`, fast and >= 300 ms slow, and pausers idling on kept-alive
connections), while it is upgraded 8 times in a row: 5 times by `hotswap upgrade` and
3 times by `scripts/hotswap-upgrade.sh`, with the app's code changed on disk before each.

Proven, because each is what an operator relies on when deploying under traffic:
- not one request failed, of any kind (no retries anywhere, so a drop would show);
- at every upgrade a slow request was in a worker's hands when the old generation was
  told to retire, and a pauser's idle kept-alive connection was used again after that
  moment, and both were answered;
- every upgrade exited 0, changed the master pid, left the old master and its workers
  gone, and the new code is what is served afterwards (TCP and unix), by the new master;
- PIDFILE named a live master at every read during the whole run (every ~5 ms), and
  PIDFILE.oldbin is gone at the end;
- the surviving master does not hold more fds after 8 upgrades than after the first.

The numbers for the issue note are printed (run with -s) and, when HOTSWAP_TEST_REPORT
names a file, written there as JSON.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import requests
from load import (
    LoadGenerator,
    PidfilePoller,
    Record,
    ToolRun,
    app_source,
    failure_report,
    fetch,
    run_upgrade_tool,
    standard_clients,
    tcp_session,
)
from support import free_port, wait_for, write_app

from pidfiles import procs

TOOLS = ["cli", "script", "cli", "cli", "script", "cli", "script", "cli"]  # 5 cli + 3 script


class _HeldRequest:
    """A 2 s request on a kept-alive connection, started and seen in the app's hands
    (its `inflight-*` mark file) before the upgrade begins."""

    SECONDS = 2.0

    def __init__(self, base: str, folder: Path) -> None:
        before = set(folder.glob("inflight-*"))
        self.result: list[requests.Response | BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(base,), daemon=True)
        self.thread.start()
        wait_for(lambda: set(folder.glob("inflight-*")) - before,
                 what="the held request to reach a worker")

    def _run(self, base: str) -> None:
        try:
            with tcp_session() as session:
                self.result.append(session.get(f"{base}/slow/{self.SECONDS}?mark", timeout=20))
        except BaseException as exc:  # recorded, then asserted on
            self.result.append(exc)

    def assert_answered_by_retiring(self, old_master: int) -> None:
        self.thread.join(20)
        assert len(self.result) == 1, "the held request never finished"
        response = self.result[0]
        assert isinstance(response, requests.Response), f"held request failed: {response!r}"
        assert response.status_code == 200
        assert response.json()["master"] == old_master
        assert response.headers.get("Connection", "").lower() == "close", \
            "a retiring worker answers what it holds with Connection: close"


def _straddlers(records: list[Record], old_master: int, ready_wall: float) -> list[Record]:
    """Slow requests the old generation had in hand when it was told to retire.

    The app got them (server clock) before the new master wrote PIDFILE, which is
    before the tool sent WINCH; their kept-alive connection was answered with
    `Connection: close`, which a worker only says once it is retiring. So each was
    in flight across the retirement, and was answered.
    """
    return [r for r in records
            if r.ok and r.kind == "slow" and r.keepalive and r.master == old_master
            and r.t_in is not None and r.t_in < ready_wall and r.server_closed
            and r.latency >= 0.3]


def _idle_across_retirement(records: list[Record], old_master: int) -> list[tuple[Record, Record]]:
    """Pauser request pairs (a, b) on one kept-alive TCP connection to the old generation:
    a was answered keep-alive, then the connection sat idle >= 0.5 s, then b on the same
    connection was answered with `Connection: close` — the worker began retiring in between."""
    pairs = []
    by_client: dict[str, list[Record]] = {}
    for r in records:
        if r.kind == "pauser":
            by_client.setdefault(r.client, []).append(r)
    for seq in by_client.values():
        for a, b in zip(seq, seq[1:], strict=False):
            if (a.ok and b.ok and a.master == old_master == b.master
                    and a.connection == b.connection and a.port is not None
                    and not a.server_closed and b.server_closed and b.start - a.end >= 0.5):
                pairs.append((a, b))
    return pairs


def _steady_fd_count(master: int) -> int:
    """The master's fds once its 2 workers run (no upgrade or reload half-way)."""
    wait_for(lambda: len([c for c in procs.children(master)
                          if (procs.cmdline(c) or "").startswith("hotswap: worker")]) == 2,
             what=f"master {master} to run exactly 2 workers")
    count = procs.open_fd_count(master)
    assert count is not None
    return count


@pytest.mark.timeout(150)
def test_upgrades_under_load_drop_no_request(masters, tmp_path: Path) -> None:
    port = free_port()
    sock = tmp_path / "hotswap.sock"
    base = f"http://127.0.0.1:{port}"
    write_app(tmp_path, "app", app_source("v1"))
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--bind", f"unix:{sock}",
                "--workers", "2", "--threads", "4", "--keepalive", "5",
                "--watch-window", "0.5", cwd=tmp_path)
    assert m.pidfile is not None
    load = LoadGenerator(base, sock, standard_clients())
    upgrades: list[dict] = []
    runs: list[ToolRun] = []
    fd_counts: list[int] = []
    with PidfilePoller(m.pidfile) as poller, load:
        wait_for(lambda: load.all_served_by(m.pid), timeout=15,
                 what="every client to be answered once")
        for number, tool in enumerate(TOOLS, start=2):
            old = m.current_pid()
            assert old is not None and procs.is_hotswap_master(old)
            old_workers = m.workers(old)
            assert len(old_workers) == 2
            # Every kept-alive client (pausers and slow ones included) holds an open
            # connection to the generation about to be retired.
            wait_for(lambda old=old: load.all_served_by(old, keepalive_only=True), timeout=15,
                     what=f"kept-alive clients to sit on connections to master {old}")
            version = f"v{number}"
            write_app(tmp_path, "app", app_source(version))
            # Besides the load's own slow clients, one request that surely straddles the
            # retirement: in an old worker's hands before USR2, longer than any boot.
            held = _HeldRequest(base, tmp_path)
            run = run_upgrade_tool(tool, m.pidfile)
            runs.append(run)
            held.assert_answered_by_retiring(old)
            assert run.returncode == 0, run.explain()
            new = m.current_pid()
            assert new is not None and new != old, run.explain()
            assert not procs.is_alive(old), f"old master {old} still alive after {tool}"
            assert not [w for w in old_workers if procs.is_alive(w)], "old workers still alive"
            assert procs.is_hotswap_master(new)
            assert fetch(base)["version"] == version
            unix_answer = fetch("http+unix://localhost", unix=sock)
            assert (unix_answer["version"], unix_answer["master"]) == (version, new)
            fd_counts.append(_steady_fd_count(new))
            wait_for(lambda run=run: load.finished_since(run.ended) >= 20,
                     what="requests after the upgrade")
            upgrades.append({"tool": tool, "old": old, "new": new, "version": version,
                             "started": run.started, "ended": run.ended})
    records = load.records
    assert not load.crashed, load.crashed
    assert poller.crashed is None, poller.crashed
    assert not load.failures(), failure_report(records)

    # Per upgrade: a request in flight and an idle kept-alive connection across the
    # retirement, and only the new code served once the tool returned.
    for i, up in enumerate(upgrades):
        switch = poller.switch_to(up["new"])
        assert switch is not None, f"the poller never saw PIDFILE name {up['new']}"
        assert up["started"] < switch.seen < up["ended"] + 0.5
        # The held request above proves it for every upgrade; this counts how many of
        # the load's own slow requests straddled it too (for the report).
        straddlers = _straddlers(records, up["old"], switch.mtime)
        pairs = _idle_across_retirement(records, up["old"])
        assert pairs, f"upgrade {i + 1}: no pauser idle across the retirement"
        up["pidfile_switch_after"] = switch.seen - up["started"]
        up["straddlers"] = len(straddlers)
        up["idle_across"] = len(pairs)
        until = upgrades[i + 1]["started"] if i + 1 < len(upgrades) else float("inf")
        after = [r for r in records if up["ended"] < r.start and r.end < until]
        assert after, f"no request between upgrade {i + 1} and the next"
        stale = [r for r in after if (r.version, r.master) != (up["version"], up["new"])]
        assert not stale, f"after upgrade {i + 1}: {stale[:3]}"

    assert poller.polls > 1000, poller.polls
    assert not poller.violations, "\n".join(poller.violations[:20])
    assert not Path(f"{m.pidfile}.oldbin").exists()
    assert fd_counts[-1] <= fd_counts[0], f"fd count of the current master grew: {fd_counts}"
    assert sock.exists()

    _report(load, poller, runs, upgrades, fd_counts)


def _report(load: LoadGenerator, poller: PidfilePoller, runs: list[ToolRun],
            upgrades: list[dict], fd_counts: list[int]) -> None:
    per_upgrade = []
    for run, up in zip(runs, upgrades, strict=True):
        entry = {"tool": run.tool, "old": up["old"], "new": up["new"],
                 "wall_seconds": round(run.seconds, 3),
                 "pidfile_names_new_after_seconds": round(up["pidfile_switch_after"], 3),
                 "straddlers": up["straddlers"],
                 "idle_connections_across": up["idle_across"]}
        if run.report:
            for key in ("ready_seconds", "drain_seconds", "handover_seconds"):
                value = run.report.get(key)
                entry[key] = None if value is None else round(value, 3)
        per_upgrade.append(entry)
    report = {"load": load.summary(), "pidfile_polls": poller.polls,
              "pidfile_violations": len(poller.violations), "fd_counts": fd_counts,
              "upgrades": per_upgrade}
    print("\nupgrade-under-load report:\n" + json.dumps(report, indent=2))
    target = os.environ.get("HOTSWAP_TEST_REPORT")
    if target:
        Path(target).write_text(json.dumps(report, indent=2) + "\n")
