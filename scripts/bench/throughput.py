"""Throughput with wrk: every contender, every app, keep-alive and Connection: close, interleaved.

On a 2-core machine a run can be 30 % off the next one for reasons that have nothing to
do with the server, so a single A-then-B comparison means little. Each round runs every
contender once per cell, pairs back to back with the order flipped every other round,
and a pair's ratio is taken within its round before the median is taken: slow periods
hit both members of a pair alike.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass

from servers import GUNICORN_GTHREAD, GUNICORN_SYNC, HOTSWAP_T1, HOTSWAP_T2, NGINX, Flavor, Server
from summary import median

CELLS = [("/", "keep-alive"), ("/", "close"), ("/16k", "keep-alive"), ("/16k", "close")]
APP_NAMES = {"/": "hello (13 B)", "/16k": "16 KiB"}
PAIRS = [(HOTSWAP_T1, GUNICORN_SYNC), (HOTSWAP_T2, GUNICORN_GTHREAD)]
ORDER = [HOTSWAP_T1, GUNICORN_SYNC, HOTSWAP_T2, GUNICORN_GTHREAD, NGINX]

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class WrkResult:
    rps: float
    requests: int
    p50: float | None  # seconds
    p99: float | None
    errors: int
    non2xx: int
    socket_errors: dict[str, int]


def parse_wrk(text: str) -> WrkResult:
    """Read wrk 4's text report (with --latency)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    if not rps or not total:
        raise ValueError(f"unreadable wrk output: {text.strip()[-300:]!r}")
    pcts = {int(p): float(v) * _UNITS[u]
            for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                             map(int, sock.groups()), strict=True)) if sock else {}
    non2xx_m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(non2xx_m.group(1)) if non2xx_m else 0
    return WrkResult(float(rps.group(1)), int(total.group(1)), pcts.get(50), pcts.get(99),
                     sum(socket_errors.values()) + non2xx, non2xx, socket_errors)


def wrk(url: str, duration: float, connections: int, threads: int, close: bool) -> WrkResult:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return parse_wrk(done.stdout)


def round_order(rnd: int) -> list[Flavor]:
    """Even rounds run hotswap first in each pair and nginx last; odd rounds the reverse.

    Whatever the machine does at a steady pace (another job's timer, thermal drift) then
    favours neither side of a pair.
    """
    if rnd % 2 == 0:
        return list(ORDER)
    return [NGINX, GUNICORN_SYNC, HOTSWAP_T1, GUNICORN_GTHREAD, HOTSWAP_T2]


def run(servers: dict[str, Server], rounds: int, duration: float, connections: int,
        wrk_threads: int, log: Callable[[str], None]) -> dict:
    """Every round: every cell, every contender once. Returns raw runs and the summary."""
    for server in servers.values():  # first requests pay for lazy imports and caches: not measured
        wrk(server.url("/"), 1, connections, wrk_threads, False)
    runs: list[dict] = []
    for rnd in range(rounds):
        for path, conn in CELLS:
            for flavor in round_order(rnd):
                server = servers[flavor.key]
                res = wrk(server.url(path), duration, connections, wrk_threads, conn == "close")
                runs.append({"round": rnd, "path": path, "connection": conn, "server": flavor.key,
                             **asdict(res)})
                log(f"throughput round {rnd + 1}/{rounds} {APP_NAMES[path]} {conn} "
                    f"{flavor.key}: {res.rps:.0f} req/s, {res.errors} errors")
    return {"runs": runs, "summary": summarize(runs, rounds)}


def _cpu_ratios(here: list[dict], rounds: int, ours: Flavor, theirs: Flavor) -> list[float]:
    """Per round: CPU per request of `ours` over that of `theirs` (below 1: ours spends less)."""
    out = []
    for rnd in range(rounds):
        a = [r.get("cpu_us_per_req") for r in here if r["round"] == rnd and r["server"] == ours.key]
        b = [r.get("cpu_us_per_req") for r in here if r["round"] == rnd and r["server"] == theirs.key]
        if a and b and a[0] is not None and b[0]:
            out.append(a[0] / b[0])
    return out


def summarize(runs: list[dict], rounds: int, cells_run: list[tuple[str, str]] = CELLS,
              order: list[Flavor] = ORDER, pairs: list[tuple[Flavor, Flavor]] = PAIRS) -> dict:
    """Per cell: each server's medians, and each pair's ratio taken within every round.

    The defaults are the WSGI section's; the ASGI section (asgibench.py) passes its own.
    A run's "rps" is whatever rate its cell measures (req/s, or messages/s for an echo).
    """
    cells = {}
    for path, conn in cells_run:
        here = [r for r in runs if r["path"] == path and r["connection"] == conn]
        per_server = {}
        for flavor in order:
            mine = [r for r in here if r["server"] == flavor.key]
            if not mine:
                continue
            per_server[flavor.key] = {
                "rps": median([r["rps"] for r in mine]),
                "p50": median([r["p50"] for r in mine]),
                "p99": median([r["p99"] for r in mine]),
                "errors": sum(r["errors"] for r in mine),
                "runs": len(mine),
                "rps_all": [round(r["rps"]) for r in mine],
            }
            if any(r.get("cpu_us_per_req") is not None for r in mine):  # the asgi section measures it
                per_server[flavor.key]["cpu_us"] = median([r.get("cpu_us_per_req") for r in mine])
                per_server[flavor.key]["busiest_all"] = [None if r.get("busiest_worker") is None
                                                         else round(r["busiest_worker"], 2) for r in mine]
        ratios = {}
        for ours, theirs in pairs:
            per_round = []
            for rnd in range(rounds):
                a = [r["rps"] for r in here if r["round"] == rnd and r["server"] == ours.key]
                b = [r["rps"] for r in here if r["round"] == rnd and r["server"] == theirs.key]
                if a and b and b[0] > 0:
                    per_round.append(a[0] / b[0])
            ratios[f"{ours.key}/{theirs.key}"] = {"median": median(per_round),
                                                  "per_round": [round(x, 3) for x in per_round]}
            cpu = _cpu_ratios(here, rounds, ours, theirs)
            if cpu:
                ratios[f"{ours.key}/{theirs.key}"] |= {"cpu_median": median(cpu),
                                                       "cpu_per_round": [round(x, 3) for x in cpu]}
        cells[f"{path} {conn}"] = {"servers": per_server, "ratios": ratios}
    return cells
