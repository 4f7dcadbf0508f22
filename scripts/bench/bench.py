"""hotswap vs gunicorn (and nginx as this machine's ceiling), in one run: see docs/performance.md.

Normally started through `scripts/bench/run`, which installs wrk, nginx and a venv with
gunicorn, uvicorn and uvloop first. Writes bench-results/bench-<time>.{md,json} and
bench-results/latest.{md,json}; with --docs it also replaces the results blocks of
docs/performance.md of the sections that ran (WSGI sections and the ASGI one each have
their own block).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asgibench
import asgireport
import continuity
import memory
import proctree
import report
import soak
import throughput
from servers import (
    GUNICORN_GTHREAD,
    GUNICORN_SYNC,
    HOTSWAP_T1,
    HOTSWAP_T2,
    NGINX,
    ROOT,
    VENV,
    Server,
)

# watch_window: hotswap's --watch-window (s) in every section but the soak, which runs 200
# upgrades back to back and so gets a shorter one (soak_watch_window): each upgrade waits
# out its window before the next can start, and the bench should stay about as long.
# The asgi section shares rounds, duration, connections, wrk_threads and workers with the
# WSGI throughput section; ws_*: its WebSocket echo (connections x messages of ws_size bytes).
FULL = {"rounds": 5, "duration": 5.0, "connections": 16, "wrk_threads": 1, "workers": 2,
        "ws_connections": 16, "ws_messages": 10000, "ws_size": 32,
        "upgrades": 20, "block": 5, "gap": 0.6, "load_threads": 4, "load_interval": 0.005,
        "watch_window": 1.0, "soak_upgrades": 200, "soak_every": 20, "soak_threads": 2,
        "soak_interval": 0.02, "soak_gap": 0.1, "soak_watch_window": 0.2}
QUICK = FULL | {"rounds": 1, "duration": 2.0, "upgrades": 3, "block": 3, "gap": 0.4,
                "soak_upgrades": 10, "soak_every": 5, "ws_messages": 1000}
SECTIONS = ("throughput", "memory", "continuity", "soak", "asgi")
WSGI_SECTIONS = SECTIONS[:4]
DOCS = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
ASGI_BEGIN, ASGI_END = "<!-- bench-asgi:begin -->", "<!-- bench-asgi:end -->"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, str]:
    """What a reader needs to judge the numbers: the hardware, the load, every version."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "0")
    osname = next((line.split("=", 1)[1].strip('"') for line in
                   Path("/etc/os-release").read_text().splitlines() if line.startswith("PRETTY_NAME")), "?")
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{int(mem) / 1024 / 1024:.1f} GiB",
        "os": f"{osname}, Linux {platform.release()}",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "hotswap": _hotswap_version(),
        "gunicorn": _run([str(VENV / "bin" / "gunicorn"), "--version"]),
        "wrk": (_run(["wrk", "--version"]) or "?").splitlines()[0].split(" Copyright")[0],
        "nginx": _run(["nginx", "-v"]).replace("nginx version: ", ""),
        **_venv_versions(("uvicorn", "uvloop", "httptools", "websockets")),
    }


def _hotswap_version() -> str:
    """The commit measured; for a merge (a branch measured on top of another), its parents too."""
    described = _run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]) or "?"
    parents = _run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %p"]).split()
    return f"{described} (merge of {' + '.join(parents[1:])})" if len(parents) > 2 else described


def _venv_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Versions of the venv's packages the ASGI contenders run on ('not installed' when absent)."""
    code = ("import importlib.metadata as m, sys\n"
            "for n in sys.argv[1:]:\n"
            "    try: print(m.version(n))\n"
            "    except m.PackageNotFoundError: print('not installed')")
    out = _run([str(VENV / "bin" / "python"), "-c", code, *names]).splitlines()
    return dict(zip(names, out, strict=True)) if len(out) == len(names) else {}


def _run(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


def check_tools(sections: list[str]) -> None:
    needs = [("wrk", shutil.which("wrk")), ("gunicorn", (VENV / "bin" / "gunicorn").exists())]
    if set(sections) & set(WSGI_SECTIONS):
        needs.insert(1, ("nginx", shutil.which("nginx")))
    if "asgi" in sections:
        needs.append(("uvicorn", (VENV / "bin" / "uvicorn").exists()))
    missing = [name for name, ok in needs if not ok]
    if missing:
        raise SystemExit(f"bench: missing {', '.join(missing)}: start the benchmark with scripts/bench/run, "
                         "which installs them")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a smoke run, about 3 minutes (asgi alone: 30 s)")
    ap.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for the .md and .json")
    ap.add_argument("--docs", action="store_true", help=f"replace the results block of {DOCS.name}")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (logs, pidfiles)")
    ap.add_argument("--rounds", type=int, help="interleaved throughput/asgi rounds (default: 5, quick: 1)")
    ap.add_argument("--duration", type=float, help="seconds per wrk run (default: 5, quick: 2)")
    ap.add_argument("--ws-messages", type=int, help="echo messages per connection (default: 10000)")
    ap.add_argument("--render", metavar="JSON", help="run nothing: re-render a results file "
                    "(with --docs, into docs/performance.md)")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        print(_render(res, args.docs))
        return 0
    params = dict(QUICK if args.quick else FULL)
    for key in ("rounds", "duration", "ws_messages"):
        if getattr(args, key) is not None:
            if getattr(args, key) <= 0:
                raise SystemExit(f"bench: --{key.replace('_', '-')} must be positive")
            params[key] = getattr(args, key)
    sections = args.only or list(SECTIONS)
    check_tools(sections)
    if not proctree.become_subreaper():
        log("warning: cannot become a child subreaper; leftover counts may miss orphans")
    work = Path(tempfile.mkdtemp(prefix="hsb-", dir="/tmp"))  # short: unix socket paths
    started = time.monotonic()
    res: dict = {"when": time.strftime("%Y-%m-%d %H:%M %Z"),
                 "command": "scripts/bench/run " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1
                 else "scripts/bench/run",
                 "params": params, "sections": sections, "machine": machine_info()}
    log(f"run folder {work}; sections {', '.join(sections)}; {'quick' if args.quick else 'full'} mode")
    try:
        if "throughput" in sections or "memory" in sections:
            _throughput_and_memory(res, params, sections, work)
        if "continuity" in sections:
            _continuity(res, params, work)
        if "soak" in sections:
            res["soak"] = soak.run(work / "soak", params["soak_upgrades"], params["soak_every"],
                                   params["soak_threads"], params["soak_interval"], params["soak_gap"], log,
                                   params["soak_watch_window"])
        if "asgi" in sections:
            res["asgi"] = asgibench.run(work / "asgi", params, log)
    finally:
        res["elapsed_s"] = time.monotonic() - started
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = _render(res, False)
    _write(Path(args.out), res, text)
    if args.docs:
        _render(res, True)
    print(text)
    return 0


def _render(res: dict, docs: bool) -> str:
    """The markdown of every section that ran; with docs, each block of the page replaced."""
    parts = []
    if any(section in res for section in WSGI_SECTIONS):
        res["targets"] = report.judge(res)
        parts.append(report.render(res))
        if docs:
            _update_docs(parts[-1])
    if "asgi" in res:
        parts.append(asgireport.render(res))
        if docs:
            _update_docs(parts[-1], ASGI_BEGIN, ASGI_END)
    return "\n".join(parts)


def _throughput_and_memory(res: dict, params: dict, sections: list[str], work: Path) -> None:
    flavors = [HOTSWAP_T1, GUNICORN_SYNC, HOTSWAP_T2, GUNICORN_GTHREAD, NGINX]
    servers: dict[str, Server] = {}
    try:
        for flavor in flavors:
            servers[flavor.key] = Server(flavor, work / flavor.key, params["workers"],
                                         watch_window=params["watch_window"])
            servers[flavor.key].start()
            log(f"started {flavor.label} on {servers[flavor.key].url()}")
        python_servers = {k: s for k, s in servers.items() if k != NGINX.key}
        if "memory" in sections:
            res["memory"] = {"idle": {k: memory.snapshot(s) for k, s in python_servers.items()}}
        if "throughput" in sections:
            res["throughput"] = throughput.run(servers, params["rounds"], params["duration"],
                                               params["connections"], params["wrk_threads"], log)
        if "memory" in sections:
            if "throughput" not in sections:  # still measure "after load": a short hello run each
                for s in python_servers.values():
                    throughput.wrk(s.url("/"), 2, params["connections"], params["wrk_threads"], False)
            res["memory"]["after_load"] = {k: memory.snapshot(s) for k, s in python_servers.items()}
    finally:
        for server in servers.values():
            server.stop()


def _continuity(res: dict, params: dict, work: Path) -> None:
    servers = [Server(HOTSWAP_T2, work / "cont-hotswap", params["workers"], tcp=True, unix=True,
                      watch_window=params["watch_window"]),
               Server(GUNICORN_GTHREAD, work / "cont-gunicorn", params["workers"], tcp=True, unix=True)]
    try:
        for server in servers:
            server.start()
        res["continuity"] = continuity.run(servers, params["upgrades"], params["block"], params["gap"],
                                           params["load_threads"], params["load_interval"], work, log)
    finally:
        for server in servers:
            server.stop()


def _write(out: Path, res: dict, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"bench-{stamp}", "latest"):
        (out / f"{name}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        (out / f"{name}.md").write_text(text)
    log(f"wrote {out}/bench-{stamp}.md and .json (and latest.*)")


def _update_docs(text: str, begin: str = BEGIN, end: str = END) -> None:
    doc = DOCS.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"bench: {DOCS} has no {begin} … {end} block to replace")
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    DOCS.write_text(f"{head}{begin}\n{text}{end}{tail}")
    log(f"updated {DOCS}")


if __name__ == "__main__":
    sys.exit(main())
