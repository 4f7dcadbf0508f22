"""The ASGI section's markdown for docs/performance.md, and its target, judged, never asserted.

The target is issue 11's: at least uvicorn's throughput with the same workers, in every
cell (hello keep-alive, hello Connection: close, WebSocket echo), read as the median of
the per-round ratios hotswap/uvicorn.
"""

from __future__ import annotations

from asgibench import CELL_NAMES, CELLS, PAIRS
from servers import GUNICORN_ASGI, HOTSWAP_ASGI, UVICORN
from summary import median, ms, ratio

LABELS = {f.key: f.label for f in (HOTSWAP_ASGI, UVICORN, GUNICORN_ASGI)}
UVICORN_TARGET = 1.0


def judge(asgi: dict) -> list[dict]:
    """One line per cell: hotswap/uvicorn ≥ 1.0, or why it could not be judged."""
    out = []
    for path, conn in CELLS:
        name = f"{CELL_NAMES[f'{path} {conn}']}: hotswap ≥ {UVICORN_TARGET:.1f}× uvicorn, same workers"
        ratios = asgi["summary"].get(f"{path} {conn}", {}).get("ratios", {})
        r = ratios.get(f"{HOTSWAP_ASGI.key}/{UVICORN.key}")
        if asgi.get("hotswap") != "measured" or not r or r["median"] is None:
            out.append({"target": name, "measured": f"hotswap {asgi.get('hotswap', 'not measured')}",
                        "met": None})
            continue
        out.append({"target": name, "measured": ratio(r["median"]), "met": r["median"] >= UVICORN_TARGET})
    return out


def render(res: dict) -> str:
    asgi = res["asgi"]
    parts = [_machine(res, asgi), _targets(judge(asgi)), _table(asgi, res["params"]), _ratios(asgi),
             _balance(asgi), _client(asgi)]
    return "\n\n".join(parts) + "\n"


def _machine(res: dict, asgi: dict) -> str:
    rows = [f"| {k} | {v} |" for k, v in res["machine"].items()]
    return "\n".join([f"### ASGI run of {res['when']} (`{res['command']}`, {asgi['elapsed_s']:.0f} s)", "",
                      "| machine | |", "| --- | --- |", *rows,
                      f"| load average at end | {asgi.get('load_at_end', '–')} |",
                      f"| hotswap ASGI worker | {asgi['hotswap']} |"])


def _targets(targets: list[dict]) -> str:
    verdict = {None: "–", True: "met", False: "**missed**"}
    rows = [f"| {t['target']} | {t['measured']} | {verdict[t['met']]} |" for t in targets]
    return "\n".join(["#### Target", "", "| target | measured | |", "| --- | --- | --- |", *rows])


def _table(asgi: dict, params: dict) -> str:
    head = (f"#### 5. ASGI and WebSocket (wrk -t{params['wrk_threads']} -c{params['connections']}, "
            f"{params['duration']:g} s per run; echo: {params['ws_connections']} connections × "
            f"{params['ws_messages']} messages of {params['ws_size']} B; {params['rounds']} interleaved "
            f"round(s), medians; {params['workers']} workers each)")
    lines = [head, "", "| cell | server | req/s or msg/s | p50 ms | p99 ms | CPU µs per req or msg | errors "
             "| runs (per s) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for path, conn in CELLS:
        cell = asgi["summary"].get(f"{path} {conn}")
        if not cell:
            continue
        for key, s in cell["servers"].items():
            lines.append(f"| {CELL_NAMES[f'{path} {conn}']} | {LABELS[key]} | {s['rps']:.0f} "
                         f"| {ms(s['p50'], 2)} | {ms(s['p99'], 2)} | {_us(s.get('cpu_us'))} | {s['errors']} "
                         f"| {' '.join(map(str, s['rps_all']))} |")
    return "\n".join(lines)


def _us(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _ratios(asgi: dict) -> str:
    """Throughput ratios (above 1: the first is faster), then CPU per request (below 1: it spends less)."""
    pairs = [(a, b) for a, b in PAIRS if a.key in asgi["contenders"] and b.key in asgi["contenders"]]
    names = {HOTSWAP_ASGI.key: "hotswap", UVICORN.key: "uvicorn", GUNICORN_ASGI.key: "gunicorn -k asgi"}
    tables = []
    for what, med, per in (("throughput", "median", "per_round"), ("CPU per request", "cpu_median",
                                                                   "cpu_per_round")):
        lines = [f"| {what}, per-round ratios | "
                 + " | ".join(f"{names[a.key]} / {names[b.key]}" for a, b in pairs) + " |",
                 "| --- |" + " ---: |" * len(pairs)]
        for path, conn in CELLS:
            cell = asgi["summary"].get(f"{path} {conn}")
            if not cell:
                continue
            cols = []
            for a, b in pairs:
                r = cell["ratios"].get(f"{a.key}/{b.key}", {})
                cols.append(f"{ratio(r.get(med))} ({' '.join(map(str, r.get(per, [])))})")
            lines.append(f"| {CELL_NAMES[f'{path} {conn}']} | " + " | ".join(cols) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def _balance(asgi: dict) -> str:
    """Per run, the busiest worker's part of the workers' CPU (0.50: an even split over two)."""
    lines = ["| busiest worker's share of the workers' CPU, per run | "
             + " | ".join(LABELS[k].split(" ")[0] for k in asgi["contenders"]) + " |",
             "| --- |" + " --- |" * len(asgi["contenders"])]
    for path, conn in CELLS:
        cell = asgi["summary"].get(f"{path} {conn}")
        if not cell:
            continue
        shares = [cell["servers"].get(k, {}).get("busiest_all", []) for k in asgi["contenders"]]
        cols = [" ".join("–" if x is None else f"{x:.2f}" for x in these) or "–" for these in shares]
        lines.append(f"| {CELL_NAMES[f'{path} {conn}']} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def _client(asgi: dict) -> str:
    """How busy the echo client was: near 100 % of a core, it, not the server, set the pace."""
    echoes = [r for r in asgi["runs"] if r["connection"] == "echo"]
    shares = []
    for key in asgi["contenders"]:
        cpu = median([r.get("client_cpu") for r in echoes if r["server"] == key])  # skips unknowns
        if cpu is not None:
            shares.append(f"{LABELS[key].split(' ')[0]} {cpu * 100:.0f} %")
    kinds = sorted({f"{k}: {n}" for r in echoes for k, n in (r.get("error_kinds") or {}).items()})
    loop = echoes[0].get("client_loop", "?") if echoes else "?"
    return (f"Echo client (one process, on {loop}): its CPU time over wall time, median per server: "
            f"{', '.join(shares) or '–'}. Echo errors: {', '.join(kinds) or 'none'}.")
