"""Turn the results into the markdown tables of docs/performance.md and judge the targets.

The targets are the ones of issue 4; they are checked here and printed, never asserted:
a benchmark that fails a build because a shared 2-core machine was busy would be noise.
Some lines of the targets table are figures reported beside them with no target (met None).

Two moments end an upgrade: the *handover* (USR2 until the old generation no longer
serves), which the targets and the inside/outside split use, and the *commit* (USR2 until
the old master exits, after hotswap's watch window), reported beside it.
"""

from __future__ import annotations

from memory import total_anon_kb
from servers import GUNICORN_GTHREAD, GUNICORN_SYNC, HOTSWAP_T1, HOTSWAP_T2, NGINX
from summary import median, ms, ratio, secs
from throughput import APP_NAMES, CELLS

LABELS = {f.key: f.label for f in (HOTSWAP_T1, GUNICORN_SYNC, HOTSWAP_T2, GUNICORN_GTHREAD, NGINX)}
HANDOVER_TARGET = 0.4
P99_RATIO_TARGET = 1.5
SYNC_CLOSE_TARGET = 1.3
GTHREAD_KA_TARGET = 1.5


def render(res: dict) -> str:
    parts = [_machine(res)]
    if "targets" in res:
        parts.append(_targets(res["targets"]))
    if "throughput" in res:
        parts.append(_throughput(res["throughput"]["summary"], res["params"]))
    if "continuity" in res:
        parts.append(_continuity(res["continuity"], res["params"]))
    if "memory" in res:
        parts.append(_memory(res["memory"]))
    if "soak" in res:
        parts.append(_soak(res["soak"], res["params"]))
    return "\n\n".join(parts) + "\n"


def _machine(res: dict) -> str:
    m = res["machine"]
    rows = [f"| {k} | {v} |" for k, v in m.items()]
    return "\n".join([f"### Run of {res['when']} (`{res['command']}`, {res['elapsed_s']:.0f} s)", "",
                      "| machine | |", "| --- | --- |", *rows])


# -- targets ---------------------------------------------------------------------------

def judge(res: dict) -> list[dict]:
    """Each target of the issue: what was measured, and met or missed."""
    out: list[dict] = []
    cont = res.get("continuity", {}).get("modes", {})
    if cont:
        fails = {mode: s[HOTSWAP_T2.key]["failed"] for mode, s in cont.items()}
        out.append(_t("0 failed requests through every hotswap upgrade, every mode",
                      ", ".join(f"{m}: {n}" for m, n in fails.items()), all(n == 0 for n in fails.values())))
        ours = [u for u in res["continuity"]["upgrades"] if u["server"] == HOTSWAP_T2.key and u["ok"]]
        handovers = [u["handover_s"] for u in ours if u["handover_s"] is not None]
        med = median(handovers)
        out.append(_t(f"median handover (USR2 → old generation no longer serves) ≤ {HANDOVER_TARGET} s",
                      f"{secs(med)} s over {len(handovers)} upgrades",
                      med is not None and med <= HANDOVER_TARGET))
        commits = [u["commit_s"] for u in ours if u.get("commit_s") is not None]
        if commits:
            out.append(_t(f"median commit (USR2 → old master exits, after the {_watch(res['params'])} "
                          "watch window): reported, no target",
                          f"{secs(median(commits))} s over {len(commits)} upgrades, max "
                          f"{secs(max(commits))} s", None))
        ratios = {mode: s[HOTSWAP_T2.key]["p99_ratio"] for mode, s in cont.items()}
        out.append(_t(f"p99 inside upgrade windows ≤ {P99_RATIO_TARGET}× p99 outside",
                      ", ".join(f"{m}: {ratio(r)}" for m, r in ratios.items()),
                      all(r is not None and r <= P99_RATIO_TARGET for r in ratios.values())))
    thr = res.get("throughput", {}).get("summary", {})
    for path in ("/", "/16k"):
        close = thr.get(f"{path} close", {}).get("ratios", {}).get(f"{HOTSWAP_T1.key}/{GUNICORN_SYNC.key}")
        if close:
            out.append(_t(f"{APP_NAMES[path]}: req/s ≥ {SYNC_CLOSE_TARGET}× gunicorn sync, Connection: close",
                          ratio(close["median"]), (close["median"] or 0) >= SYNC_CLOSE_TARGET))
        ka = thr.get(f"{path} keep-alive", {}).get("ratios", {}).get(
            f"{HOTSWAP_T2.key}/{GUNICORN_GTHREAD.key}")
        if ka:
            out.append(_t(f"{APP_NAMES[path]}: req/s ≥ {GTHREAD_KA_TARGET}× gunicorn gthread, keep-alive",
                          ratio(ka["median"]), (ka["median"] or 0) >= GTHREAD_KA_TARGET))
    mem = res.get("memory")
    if mem:
        for ours, theirs in ((HOTSWAP_T1, GUNICORN_SYNC), (HOTSWAP_T2, GUNICORN_GTHREAD)):
            for when in ("idle", "after_load"):
                a = mem[when].get(ours.key, {}).get("master", {}).get("rss_kb")
                b = mem[when].get(theirs.key, {}).get("master", {}).get("rss_kb")
                if a and b:
                    out.append(_t(f"master RSS ≤ gunicorn's ({ours.label} vs {theirs.label}, "
                                  f"{when.replace('_', ' ')})", f"{a / 1024:.1f} vs {b / 1024:.1f} MiB",
                                  a <= b))
    soak = res.get("soak")
    if soak:
        s, e = soak["start"], soak["end"]
        flat_rss = (e["master_rss_kb"] or 0) <= (s["master_rss_kb"] or 0) * 1.05 + 1024
        out.append(_t(f"soak of {soak['upgrades']} upgrades: master fds, RSS and zombies flat",
                      f"fds {s['master_fds']} → {e['master_fds']}, RSS {_mib(s['master_rss_kb'])} → "
                      f"{_mib(e['master_rss_kb'])} MiB, zombies {s['zombies']} → {e['zombies']}",
                      s["master_fds"] == e["master_fds"] and flat_rss and e["zombies"] == 0))
        out.append(_t("soak: 0 failed requests, no leftover process or file after stop",
                      f"{soak['failed']} failed of {soak['requests']}; after stop: "
                      f"{len(soak['after_stop']['processes'])} processes, files "
                      f"{soak['after_stop']['files'] or 'none'}",
                      soak["failed"] == 0 and not soak["after_stop"]["processes"]
                      and not soak["after_stop"]["files"]))
    return out


def _t(name: str, measured: str, met: bool | None) -> dict:
    """One line of the targets table; met None for a figure reported with no target."""
    return {"target": name, "measured": measured, "met": None if met is None else bool(met)}


def _verdict(met: bool | None) -> str:
    return "–" if met is None else "met" if met else "**missed**"


def _watch(params: dict, key: str = "watch_window") -> str:
    """hotswap's --watch-window of a run, '–' for results from before the harness set it."""
    value = params.get(key)
    return f"{value:g} s" if value is not None else "– s"


def _targets(targets: list[dict]) -> str:
    rows = [f"| {t['target']} | {t['measured']} | {_verdict(t['met'])} |" for t in targets]
    return "\n".join(["#### Targets", "", "| target | measured | |", "| --- | --- | --- |", *rows])


# -- sections ----------------------------------------------------------------------------

def _throughput(summary: dict, params: dict) -> str:
    head = (f"#### 1. Throughput (wrk -t{params['wrk_threads']} -c{params['connections']}, "
            f"{params['duration']:g} s per run, {params['rounds']} interleaved round(s), medians; "
            f"{params['workers']} workers each)")
    lines = [head, "",
             "| app | connection | server | req/s | p50 ms | p99 ms | errors | runs (req/s) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for path, conn in CELLS:
        cell = summary.get(f"{path} {conn}")
        if not cell:
            continue
        for key, s in cell["servers"].items():
            lines.append(f"| {APP_NAMES[path]} | {conn} | {LABELS[key]} | {s['rps']:.0f} | {ms(s['p50'], 2)} "
                         f"| {ms(s['p99'], 2)} | {s['errors']} | {' '.join(map(str, s['rps_all']))} |")
    lines += ["", "| app | connection | hotswap t1 / gunicorn sync | hotswap t2 / gunicorn gthread |",
              "| --- | --- | ---: | ---: |"]
    for path, conn in CELLS:
        cell = summary.get(f"{path} {conn}")
        if not cell:
            continue
        r = cell["ratios"]
        a = r.get(f"{HOTSWAP_T1.key}/{GUNICORN_SYNC.key}", {})
        b = r.get(f"{HOTSWAP_T2.key}/{GUNICORN_GTHREAD.key}", {})
        lines.append(f"| {APP_NAMES[path]} | {conn} | {ratio(a.get('median'))} "
                     f"({' '.join(map(str, a.get('per_round', [])))}) | {ratio(b.get('median'))} "
                     f"({' '.join(map(str, b.get('per_round', [])))}) |")
    return "\n".join(lines)


def _continuity(cont: dict, params: dict) -> str:
    head = (f"#### 2. Upgrade continuity ({params['upgrades']} upgrades per server and mode, "
            f"{params['load_threads']} `requests` threads, ≤ {1 / params['load_interval']:.0f} req/s each; "
            f"hotswap --threads 2 --watch-window {_watch(params)[:-2]} "
            "vs gunicorn gthread --threads 2, 2 workers)")
    lines = [head, "",
             "| mode | server | requests | failed (kinds) | inside p50 / p99 / max ms | "
             "outside p50 / p99 / max ms | p99 in/out | p99 boot / drain ms "
             "| to commit p99 / max ms | ready med / max s | handover med / max s | commit med / max s |",
             "| --- | --- | ---: | --- | --- | --- | ---: | --- | --- | --- | --- | --- |"]
    for mode, per in cont["modes"].items():
        for key, s in per.items():
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(s["failures"].items()))
            i, o = s["inside"], s["outside"]
            ups = "" if s["upgrades_ok"] == s["upgrades"] else \
                f" ({s['upgrades'] - s['upgrades_ok']} upgrade(s) failed)"
            failed = f"{s['failed']}{f' ({kinds})' if kinds else ''}{ups}"
            lines.append(
                f"| {mode} | {LABELS[key]} | {s['requests']} | {failed} "
                f"| {ms(i['p50'])} / {ms(i['p99'])} / {ms(i['max'])} "
                f"| {ms(o['p50'])} / {ms(o['p99'])} / {ms(o['max'])} | {ratio(s['p99_ratio'])} "
                f"| {ms(s.get('boot', {}).get('p99'))} / {ms(s.get('drain', {}).get('p99'))} "
                f"| {ms(s.get('to_commit', {}).get('p99'))} / {ms(s.get('to_commit', {}).get('max'))} "
                f"| {secs(s['ready_median'])} / {secs(s['ready_max'])} "
                f"| {secs(s['handover_median'])} / {secs(s['handover_max'])} "
                f"| {secs(s.get('commit_median'))} / {secs(s.get('commit_max'))} |")
    lines += ["", WINDOWS_NOTE.format(watch=_watch(params))]
    return "\n".join(lines)


WINDOWS_NOTE = (
    "*inside* is a request overlapping an upgrade window, USR2 until the *handover*: the old "
    "generation no longer serves (hotswap: its workers are parked and hold no connection; "
    "gunicorn: its old master is gone and the new one has its workers). *to commit* is a "
    "request overlapping USR2 until the *commit*, when the old master exits: for hotswap that "
    "is after its {watch} watch window, during which the parked old workers keep the old code "
    "for a rollback. gunicorn has no watch window: its commit is its handover.")


def _memory(mem: dict) -> str:
    lines = ["#### 3. Memory (MiB; heap total = anonymous PSS of master + workers, shared pages once)",
             "", "| server | when | master RSS | worker RSS (each) | heap total |",
             "| --- | --- | ---: | --- | ---: |"]
    for when in ("idle", "after_load"):
        for key, snap in mem[when].items():
            if "master" not in snap:
                continue
            workers = " / ".join(_mib(w["rss_kb"]) for w in snap["workers"])
            lines.append(f"| {LABELS[key]} | {when.replace('_', ' ')} | {_mib(snap['master']['rss_kb'])} "
                         f"| {workers} | {_mib(total_anon_kb(snap))} |")
    return "\n".join(lines)


def _soak(soak: dict, params: dict) -> str:
    s, e = soak["start"], soak["end"]
    lines = [f"#### 4. Soak ({soak['upgrades']} consecutive `hotswap upgrade`s, {params['soak_threads']} "
             f"keep-alive threads at ≤ {1 / params['soak_interval']:.0f} req/s each)",
             "", "| | start | end |", "| --- | --- | --- |",
             f"| current master pid | {s['master']} | {e['master']} |",
             f"| its open fds | {s['master_fds']} {_kinds(s)} | {e['master_fds']} {_kinds(e)} |",
             f"| its RSS MiB | {_mib(s['master_rss_kb'])} | {_mib(e['master_rss_kb'])} |",
             f"| workers (RSS MiB) | {s['workers']} ({' / '.join(map(_mib, s['worker_rss_kb']))}) "
             f"| {e['workers']} ({' / '.join(map(_mib, e['worker_rss_kb']))}) |",
             f"| zombies below the harness | {s['zombies']} | {e['zombies']} |",
             f"| leftover processes | {len(s['leftover_processes'])} | {len(e['leftover_processes'])} |",
             f"| files in the run folder | {', '.join(s['files'])} | {', '.join(e['files'])} |",
             "",
             f"Upgrades: {soak['upgrades_ok']}/{soak['upgrades']} succeeded, handover median "
             f"{secs(soak['handover_median'])} s, max {secs(soak['handover_max'])} s; commit median "
             f"{secs(soak.get('commit_median'))} s, max {secs(soak.get('commit_max'))} s "
             f"(watch window {_watch(params, 'soak_watch_window')}). "
             f"Requests: {soak['requests']}, failed: {soak['failed']}"
             f"{' (' + str(soak['failures']) + ')' if soak['failures'] else ''}. After the final stop: "
             f"files left {soak['after_stop']['files'] or 'none'}, processes left "
             f"{soak['after_stop']['processes'] or 'none'}"
             + (f" (upgrade records kept on purpose: {', '.join(soak['after_stop']['records'])})"
                if soak["after_stop"].get("records") else "") + ".",
             "",
             "Every " + str(params["soak_every"]) + " upgrades (upgrade: fds / RSS MiB / zombies): "
             + ", ".join(f"{p['upgrade']}: {p['master_fds']} / {_mib(p['master_rss_kb'])} / {p['zombies']}"
                         for p in soak["series"]) + "."]
    return "\n".join(lines)


def _kinds(snap: dict) -> str:
    kinds = snap.get("master_fd_kinds") or {}
    return "(" + ", ".join(f"{k} {v}" for k, v in kinds.items()) + ")" if kinds else ""


def _mib(kb: int | None) -> str:
    return "–" if kb is None else f"{kb / 1024:.1f}"
