"""Upgrade continuity: the same client load through consecutive upgrades of each server.

For every mode (keep-alive on/off x TCP/unix) the upgrades run in blocks, hotswap and
gunicorn alternating (A B A B ...), each block under its own load-generator process.
A request counts as *inside* an upgrade when its lifetime overlaps a window from USR2
to the handover (the old generation no longer serves); every other request is *outside*,
the baseline it is compared with. The window until commit (USR2 to the old master's exit,
after hotswap's watch window) is measured beside it: *to commit* is every request
overlapping it, *watch* those overlapping only its part after the handover. gunicorn has
no watch window, so for it both windows are the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import proctree
from servers import HERE, Server, UpgradeResult
from summary import median, percentile

MODES = [("keep-alive", "tcp"), ("close", "tcp"), ("keep-alive", "unix"), ("close", "unix")]


class Load:
    """One loadgen.py process against one target; stop() returns its requests."""

    def __init__(self, target: str, out: Path, threads: int, close: bool, interval: float,
                 max_seconds: float = 900.0) -> None:
        self.out = out
        cmd = [sys.executable, str(HERE / "loadgen.py"), "--target", target, "--threads", str(threads),
               "--interval", str(interval), "--out", str(out), "--max-seconds", str(max_seconds)]
        if close:
            cmd.append("--close")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=HERE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until its threads run (or it died)
        if line.strip() != b"started":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"load generator did not start: {line!r}")

    def stop(self) -> dict[str, list]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("load generator did not stop within 30 s") from None
        with open(self.out) as fh:
            return json.load(fh)


def split_by_windows(rows: dict[str, list], windows: list[tuple[float, float]]
                     ) -> tuple[list[float], list[float]]:
    """Latencies of requests overlapping any window, and of all the others."""
    inside: list[float] = []
    outside: list[float] = []
    for start, lat in zip(rows["start"], rows["latency"], strict=True):
        end = start + lat
        if any(start <= b and end >= a for a, b in windows):
            inside.append(lat)
        else:
            outside.append(lat)
    return inside, outside


class Tally:
    """Everything one server accumulates over one mode's blocks."""

    def __init__(self) -> None:
        self.requests = 0
        self.failures: Counter[str] = Counter()
        self.failures_inside = 0
        self.inside: list[float] = []
        self.outside: list[float] = []
        self.upgrades: list[UpgradeResult] = []
        self.boot: list[float] = []
        self.drain: list[float] = []
        self.to_commit: list[float] = []
        self.watch: list[float] = []
        self.failures_to_commit = 0

    def add(self, rows: dict[str, list], upgrades: list[UpgradeResult]) -> None:
        windows = [(u.started, u.ended) for u in upgrades]
        commits = [(u.started, u.commit_end) for u in upgrades]
        self.upgrades.extend(upgrades)
        self.requests += len(rows["kind"])
        for start, lat, kind in zip(rows["start"], rows["latency"], rows["kind"], strict=True):
            if kind != "ok":
                self.failures[kind] += 1
                self.failures_inside += _overlaps(start, lat, windows)
                self.failures_to_commit += _overlaps(start, lat, commits)
        ok = {k: [v for v, kind in zip(rows[k], rows["kind"], strict=True) if kind == "ok"]
              for k in ("start", "latency")}
        inside, outside = split_by_windows(ok, windows)
        self.inside += inside
        self.outside += outside
        # Where in the window the slow ones are: while the new generation boots (USR2 to
        # ready) or while the old one drains and exits (ready to the end).
        boots = [(u.started, u.started + u.ready_s) for u in upgrades if u.ready_s is not None]
        drains = [(u.started + u.ready_s, u.ended) for u in upgrades if u.ready_s is not None]
        self.boot += split_by_windows(ok, boots)[0]
        self.drain += split_by_windows(ok, drains)[0]
        self.to_commit += split_by_windows(ok, commits)[0]
        watches = [(u.ended, u.commit_end) for u in upgrades if u.commit_end > u.ended]
        self.watch += split_by_windows(ok, watches)[0]

    def summary(self) -> dict:
        good = [u for u in self.upgrades if u.ok]
        p99_in, p99_out = percentile(self.inside, 99), percentile(self.outside, 99)
        return {
            "requests": self.requests,
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures),
            "failed_inside_windows": self.failures_inside,
            "failed_to_commit": self.failures_to_commit,
            "upgrades": len(self.upgrades),
            "upgrades_ok": len(good),
            "upgrade_failures": [u.reason for u in self.upgrades if not u.ok],
            "inside": _lat(self.inside),
            "outside": _lat(self.outside),
            "p99_ratio": (p99_in / p99_out) if p99_in and p99_out else None,
            "boot": _lat(self.boot),
            "drain": _lat(self.drain),
            "to_commit": _lat(self.to_commit),
            "watch": _lat(self.watch),
            "ready_median": median([u.ready_s for u in good]),
            "ready_max": max((u.ready_s for u in good if u.ready_s is not None), default=None),
            "handover_median": median([u.handover_s for u in good]),
            "handover_max": max((u.handover_s for u in good if u.handover_s is not None), default=None),
            "commit_median": median([u.commit_s for u in good]),
            "commit_max": max((u.commit_s for u in good if u.commit_s is not None), default=None),
        }


def _overlaps(start: float, latency: float, windows: list[tuple[float, float]]) -> bool:
    return any(start <= b and start + latency >= a for a, b in windows)


def _lat(values: list[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else None}


def run(servers: list[Server], upgrades: int, block: int, gap: float, threads: int,
        interval: float, workdir: Path, log: Callable[[str], None]) -> dict:
    """All modes; in each, `upgrades` upgrades per server in alternating blocks of `block`."""
    result: dict = {"modes": {}, "upgrades": []}
    for conn, transport in MODES:
        mode = f"{conn} {transport}"
        tallies = {s.flavor.key: Tally() for s in servers}
        done = dict.fromkeys(tallies, 0)
        blk = 0
        while any(n < upgrades for n in done.values()):
            order = servers if blk % 2 == 0 else list(reversed(servers))
            for server in order:
                count = min(block, upgrades - done[server.flavor.key])
                if count <= 0:
                    continue
                ups, rows = _block(server, transport == "unix", conn == "close", count, gap,
                                   threads, interval, workdir / f"load-{time.monotonic_ns()}.json")
                tallies[server.flavor.key].add(rows, ups)
                done[server.flavor.key] += count
                result["upgrades"] += [{"mode": mode, "server": server.flavor.key, **asdict(u)}
                                       for u in ups]
                bad = sum(1 for k in rows["kind"] if k != "ok")
                log(f"continuity {mode} {server.flavor.key}: {count} upgrade(s), "
                    f"{len(rows['kind'])} requests, {bad} failed, handover/commit s "
                    + ", ".join(f"{u.handover_s:.2f}/{u.commit_s or 0:.2f}" if u.handover_s
                                else "FAILED" for u in ups))
            blk += 1
        result["modes"][mode] = {key: t.summary() for key, t in tallies.items()}
    return result


def _block(server: Server, unix: bool, close: bool, count: int, gap: float, threads: int,
           interval: float, out: Path) -> tuple[list[UpgradeResult], dict[str, list]]:
    load = Load(server.target(unix), out, threads, close, interval)
    ups: list[UpgradeResult] = []
    try:
        time.sleep(gap)  # a quiet stretch first: the baseline the windows are compared with
        for _ in range(count):
            ups.append(server.upgrade())
            proctree.reap_orphans(set())
            time.sleep(gap)
    finally:
        rows = load.stop()
        out.unlink(missing_ok=True)
    return ups, rows
