"""The ASGI section (issue 11): hotswap's ASGI worker beside uvicorn and gunicorn `-k asgi`.

Three cells, every contender serving asgiapps:app with the same workers: the hello with
keep-alive and with `Connection: close` (wrk, exactly as in the WSGI section), and a
WebSocket echo (wsload.py: N connections x M messages, one in flight each). Each round
runs every contender once per cell, back to back (A B C), the order rotated by one each
round (B C A, then C A B) so that no contender always goes first; the ratios
hotswap/uvicorn, hotswap/gunicorn and gunicorn/uvicorn are taken within a round and the
median over rounds is reported (throughput.summarize).

hotswap is measured only when this work tree's hotswap has an ASGI worker
(`hotswap start --interface`); otherwise the section says so and compares the others.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import proctree
import throughput
from servers import GUNICORN_ASGI, HERE, HOTSWAP_ASGI, PYTHON, UVICORN, Flavor, Server, hotswap_serves_asgi

CELLS = [("/", "keep-alive"), ("/", "close"), ("/ws", "echo")]
CELL_NAMES = {"/ keep-alive": "hello (13 B), keep-alive", "/ close": "hello (13 B), Connection: close",
              "/ws echo": "WebSocket echo"}
ORDER = [HOTSWAP_ASGI, UVICORN, GUNICORN_ASGI]
PAIRS = [(HOTSWAP_ASGI, UVICORN), (HOTSWAP_ASGI, GUNICORN_ASGI), (GUNICORN_ASGI, UVICORN)]
WS_TIMEOUT = 120.0  # bound on one echo run; a run this slow is a broken server, not a result


def round_order(rnd: int, flavors: list[Flavor]) -> list[Flavor]:
    """Round r starts with contender r mod n and keeps the cyclic order: A B C, B C A, C A B, ..."""
    k = rnd % len(flavors) if flavors else 0
    return flavors[k:] + flavors[:k]


def contenders(log: Callable[[str], None]) -> tuple[list[Flavor], str]:
    """Who runs, and a word on hotswap for the report."""
    if hotswap_serves_asgi():
        return list(ORDER), "measured"
    log("asgi: this hotswap has no ASGI worker (no `start --interface`): comparing uvicorn and gunicorn only")
    return [f for f in ORDER if f is not HOTSWAP_ASGI], "not measured: this hotswap has no ASGI worker"


def ws_echo(server: Server, connections: int, messages: int, size: int) -> dict:
    """One wsload.py run against `server`, on the bench venv's Python (uvloop there, if installed)."""
    cmd = [str(PYTHON), str(HERE / "wsload.py"), "--url", f"ws://127.0.0.1:{server.port}/ws",
           "-c", str(connections), "-m", str(messages), "-s", str(size), "--timeout", f"{WS_TIMEOUT:g}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=WS_TIMEOUT + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wsload failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    lost = out["expected"] - out["messages"]
    return {"rps": out["rate"], "requests": out["messages"], "p50": out["p50"], "p99": out["p99"],
            "errors": sum(out["errors"].values()),  # connections that did not end with a clean 1000
            "error_kinds": out["errors"], "lost": lost, "close_codes": out["close_codes"],
            "seconds": out["seconds"], "handshake_p50": out["handshake_p50"], "client_loop": out["loop"],
            "client_cpu": out["client_cpu"]}


def busiest_share(used: dict[int, float], master: int | None) -> float | None:
    """The busiest worker's part of the workers' CPU in a run: 0.5 is an even split over two.

    With keep-alive, wrk's 16 connections are accepted once, at its start, by whichever
    worker wakes first; a split of 14 to 2 leaves one core mostly idle, whatever the server
    does per request. This shows it (None when the run used too little CPU to tell).
    """
    workers = [cpu for pid, cpu in used.items() if pid != master]
    total = sum(workers)
    return max(workers) / total if workers and total >= 0.05 else None


def measure(server: Server, path: str, conn: str, params: dict) -> dict:
    """One run of one cell: wrk for the hello, wsload for the echo; plus the server's CPU per request.

    CPU time per request (master and workers, from /proc) moves far less than req/s when
    other jobs share the cores: a server slowed by a neighbour waits, it does not spend more.
    """
    master = server.master_pid()
    before = proctree.tree_cpu(master) if master else None
    if conn == "echo":
        res = ws_echo(server, params["ws_connections"], params["ws_messages"], params["ws_size"])
    else:
        res = asdict(throughput.wrk(server.url(path), params["duration"], params["connections"],
                                    params["wrk_threads"], conn == "close"))
    after = proctree.tree_cpu(master) if master else {}
    used = {pid: cpu - (before or {}).get(pid, 0.0) for pid, cpu in after.items()}
    spent = sum(used.values()) if master and before is not None else None
    res["cpu_s"] = spent
    res["busiest_worker"] = busiest_share(used, master)
    res["load1"] = os.getloadavg()[0]  # in the JSON: how busy the machine was around this run
    res["cpu_us_per_req"] = spent / res["requests"] * 1e6 if spent is not None and res["requests"] else None
    return res


def run(work: Path, params: dict, log: Callable[[str], None]) -> dict:
    """Start the contenders, run every round, stop them; the raw runs and their summary."""
    started = time.monotonic()
    flavors, hotswap = contenders(log)
    servers: dict[str, Server] = {}
    runs: list[dict] = []
    try:
        for flavor in flavors:
            servers[flavor.key] = Server(flavor, work / flavor.key, params["workers"])
            servers[flavor.key].start()
            log(f"asgi: started {flavor.label} on {servers[flavor.key].url()}")
        for server in servers.values():  # lazy imports and first-connection costs: not measured
            throughput.wrk(server.url("/"), 1, params["connections"], params["wrk_threads"], False)
            ws_echo(server, params["ws_connections"], min(100, params["ws_messages"]), params["ws_size"])
        for rnd in range(params["rounds"]):
            for path, conn in CELLS:
                for flavor in round_order(rnd, flavors):
                    res = measure(servers[flavor.key], path, conn, params)
                    runs.append({"round": rnd, "path": path, "connection": conn, "server": flavor.key, **res})
                    log(f"asgi round {rnd + 1}/{params['rounds']} {CELL_NAMES[f'{path} {conn}']} "
                        f"{flavor.key}: {res['rps']:.0f}/s, {res['errors']} errors")
    finally:
        for server in servers.values():
            server.stop()
    pairs = [(a, b) for a, b in PAIRS if a in flavors and b in flavors]
    return {"contenders": [f.key for f in flavors], "hotswap": hotswap, "runs": runs,
            "summary": throughput.summarize(runs, params["rounds"], CELLS, flavors, pairs),
            "elapsed_s": time.monotonic() - started,
            "load_at_end": " ".join(f"{x:.2f}" for x in os.getloadavg())}
