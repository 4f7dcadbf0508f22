"""Peak workers and peak memory during an upgrade: hotswap with and without
`--upgrade-surge`, next to gunicorn.

Every contender serves `surgeapp:app` (the benchmark's hello app plus a ballast of
BALLAST_MB per worker, touched so that it is resident, as a real app's imports are) with
4 workers, under a small keep-alive load, and is upgraded UPGRADES times. A sampler
counts, every 5 ms, the service's processes (every descendant of this harness, which is
a subreaper, that is titled as a master or worker of the contender) and sums their RSS:
the peak of both is what a host must be sized for.

    python scripts/bench/surge.py [--upgrades 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import proctree
from continuity import Load
from servers import GUNICORN_SYNC, HOTSWAP_T1, Flavor, Server

WORKERS = 4
BALLAST_MB = 40
UPGRADES = 3


class SurgeServer(Server):
    """A contender serving the ballast app, with extra hotswap options."""

    extra: list[str] = []

    def _command(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = super()._command()
        cmd = ["surgeapp:app" if arg == "apps:app" else arg for arg in cmd]
        env["SURGE_BALLAST_MB"] = str(BALLAST_MB)
        return cmd + self.extra, env


@dataclass
class Peak:
    """What the sampler saw: the largest worker count and total RSS of the service."""

    title: str  # "hotswap:" or "gunicorn:"
    workers: int = 0
    rss_kb: int = 0
    samples: int = 0
    steady_rss_kb: list[int] = field(default_factory=list)

    def sample(self) -> tuple[int, int]:
        procs = [p for p in proctree.descendants(os.getpid())
                 if p.state not in ("Z", "X") and proctree.cmdline(p.pid).startswith(self.title)]
        workers = sum(1 for p in procs if "worker" in proctree.cmdline(p.pid))
        rss = sum(proctree.status_kb(p.pid, "VmRSS") or 0 for p in procs)
        return workers, rss


def _sampler(peak: Peak, stop: threading.Event) -> None:
    while not stop.is_set():
        workers, rss = peak.sample()
        peak.workers = max(peak.workers, workers)
        peak.rss_kb = max(peak.rss_kb, rss)
        peak.samples += 1
        stop.wait(0.005)


def _steady(peak: Peak, seconds: float = 1.5) -> tuple[int, int]:
    """The service at rest: the largest sample over a moment (workers finish importing)."""
    best = (0, 0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        best = max(best, peak.sample(), key=lambda s: s[1])
        time.sleep(0.02)
    return best


def measure(label: str, flavor: Flavor, extra: list[str], upgrades: int, work: Path) -> dict:
    server = SurgeServer(flavor, work / label, WORKERS)
    server.extra = extra
    server.start()
    title = "gunicorn:" if flavor.kind == "gunicorn" else "hotswap:"
    peak = Peak(title)
    steady_workers, steady_rss = _steady(peak)
    stop = threading.Event()
    sampler = threading.Thread(target=_sampler, args=(peak, stop), daemon=True)
    results = []
    load = None
    try:
        load = Load(server.target(False), work / f"{label}.load.json", threads=4, close=False,
                    interval=0.002, max_seconds=300)
        sampler.start()
        for _ in range(upgrades):
            results.append(server.upgrade())
            time.sleep(0.5)
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join(5)
        rows = load.stop() if load is not None else {"kind": []}
        server.stop()  # even when the load generator could not start
    kinds = rows["kind"]
    failed = sum(1 for kind in kinds if kind != "ok")
    return {
        "label": label, "workers": WORKERS, "ballast_mb": BALLAST_MB, "upgrades": upgrades,
        "ok_upgrades": sum(1 for r in results if r.ok),
        "steady": {"workers": steady_workers, "rss_mb": round(steady_rss / 1024, 1)},
        "peak": {"workers": peak.workers, "rss_mb": round(peak.rss_kb / 1024, 1)},
        "handover_s": statistics.median([r.handover_s for r in results if r.handover_s] or [0]),
        "requests": len(kinds), "failed": failed, "samples": peak.samples,
    }


CONTENDERS = [
    ("hotswap", HOTSWAP_T1, ["--watch-window", "0"]),
    ("hotswap --upgrade-surge 1", HOTSWAP_T1, ["--watch-window", "0", "--upgrade-surge", "1"]),
    ("gunicorn sync", GUNICORN_SYNC, []),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upgrades", type=int, default=UPGRADES)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    proctree.become_subreaper()  # re-parented generations stay our descendants
    report = []
    with TemporaryDirectory(prefix="hotswap-surge-") as tmp:
        for label, flavor, extra in CONTENDERS:
            result = measure(label.replace(" ", "_"), flavor, extra, args.upgrades, Path(tmp))
            result["label"] = label
            report.append(result)
            print(f"{label:28} steady {result['steady']['workers']} workers "
                  f"{result['steady']['rss_mb']:7.1f} MB | peak {result['peak']['workers']} workers "
                  f"{result['peak']['rss_mb']:7.1f} MB | {result['ok_upgrades']}/{args.upgrades} "
                  f"upgrades, {result['failed']} failed of {result['requests']} requests",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["failed"] == 0 and r["ok_upgrades"] == r["upgrades"] for r in report) else 1


if __name__ == "__main__":
    sys.exit(main())
