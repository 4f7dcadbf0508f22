"""Tests of the benchmark's own moving parts: `python -m pytest scripts/bench -q`.

Kept beside the benchmark (not in tests/) because they test the harness, not hotswap.
The end-to-end test runs real servers on the bench venv's Python and is skipped when
`scripts/bench/run` has not created that venv yet.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import apps  # noqa: E402
import continuity  # noqa: E402
import loadgen  # noqa: E402
import proctree  # noqa: E402
import report  # noqa: E402
import servers  # noqa: E402
from summary import median, percentile  # noqa: E402
from throughput import parse_wrk  # noqa: E402

WRK_SAMPLE = """Running 2s test @ http://127.0.0.1:8000/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.86ms  550.81us   9.81ms   73.43%
    Req/Sec    11.71k     1.14k   13.28k    60.00%
  Latency Distribution
     50%  829.00us
     75%    1.18ms
     90%    1.47ms
     99%    2.36s
  34972 requests in 3.00s, 5.04MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  11650.07
Transfer/sec:      1.68MB
"""


def test_parse_wrk_reads_rate_percentiles_and_every_error_kind() -> None:
    res = parse_wrk(WRK_SAMPLE)
    assert res.rps == pytest.approx(11650.07)
    assert res.requests == 34972
    assert res.p50 == pytest.approx(829e-6)
    assert res.p99 == pytest.approx(2.36)
    assert res.socket_errors == {"connect": 0, "read": 3, "write": 1, "timeout": 2}
    assert res.non2xx == 4
    assert res.errors == 10


def test_parse_wrk_refuses_output_without_a_rate() -> None:
    with pytest.raises(ValueError, match="unreadable wrk output"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_percentile_is_nearest_rank_and_median_skips_unknowns() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 99) is None
    assert median([3.0, None, 1.0]) == 2.0  # type: ignore[list-item]


def test_split_by_windows_counts_a_request_overlapping_a_window_as_inside() -> None:
    rows = {"start": [0.0, 0.9, 1.5, 3.0], "latency": [0.1, 0.2, 0.1, 0.1]}
    inside, outside = continuity.split_by_windows(rows, [(1.0, 2.0)])
    assert inside == [0.2, 0.1]  # the second one started before the window but ended in it
    assert outside == [0.1, 0.1]


CLI_REPORT = {"id": "100.1", "old_pid": 100, "new_pid": 200, "generation": 2, "result": "upgraded",
              "outcome": "upgraded", "state": "committed", "reason": "", "started": 1.0,
              "ready_seconds": 0.12, "drain_seconds": 0.05, "handover_seconds": 0.2,
              "commit_seconds": 1.25, "line": "upgraded: 100 -> 200"}


def test_hotswap_result_ends_the_window_at_the_handover_and_keeps_the_commit() -> None:
    marks = {"usr2": 10.02, "handover": 10.23}
    up = servers.hotswap_result(CLI_REPORT, marks, began=10.0, returned=11.3, gone=11.31)
    assert up.ok and (up.old_pid, up.new_pid) == (100, 200)
    assert up.started == pytest.approx(10.02)  # the earlier of the USR2 line and handover line - 0.2 s
    assert up.ended == pytest.approx(10.23)  # "handover done in" reached us, not the CLI's exit
    assert (up.handover_s, up.commit_s) == (0.2, 1.25)
    assert up.commit_end == pytest.approx(11.31)  # the old master seen gone


def test_hotswap_result_without_a_handover_line_uses_the_reported_handover() -> None:
    up = servers.hotswap_result(CLI_REPORT, {"usr2": 10.02}, began=10.0, returned=11.3, gone=11.31)
    assert up.ended == pytest.approx(10.22)
    lost = servers.hotswap_result(CLI_REPORT, {"usr2": 10.02}, began=10.0, returned=11.3, gone=None)
    assert not lost.ok and "still alive" in lost.reason
    back = servers.hotswap_result(CLI_REPORT | {"outcome": "rolled back", "result": "rolled back",
                                                "reason": "new workers keep crashing"},
                                  {}, began=10.0, returned=11.3, gone=None)
    assert not back.ok and back.reason == "new workers keep crashing"


def _upgrade(started: float, handover: float, commit: float) -> servers.UpgradeResult:
    return servers.UpgradeResult(True, started, started + handover, 0.1, handover, 1, 2,
                                 commit_s=commit, committed=started + commit)


def test_tally_counts_the_watch_window_outside_the_upgrade_but_inside_the_commit_window() -> None:
    rows = {"start": [1.5, 3.0, 3.1, 5.0], "latency": [0.01, 0.02, 0.03, 0.04],
            "kind": ["ok", "ok", "connection reset", "ok"]}
    tally = continuity.Tally()
    tally.add(rows, [_upgrade(1.0, 1.0, 3.0)])  # handover at 2.0, commit at 4.0
    s = tally.summary()
    assert s["inside"]["n"] == 1 and s["outside"]["n"] == 2  # 3.0 is after the handover: outside
    assert s["to_commit"]["n"] == 2 and s["watch"]["n"] == 1
    assert (s["failed"], s["failed_inside_windows"], s["failed_to_commit"]) == (1, 0, 1)
    assert (s["handover_median"], s["commit_median"], s["commit_max"]) == (1.0, 3.0, 3.0)


def _results() -> dict:
    ours, theirs = servers.HOTSWAP_T2.key, servers.GUNICORN_GTHREAD.key
    ups = {ours: [_upgrade(1.0, 0.2, 1.3), _upgrade(5.0, 0.3, 1.4)], theirs: [_upgrade(9.0, 0.4, 0.4)]}
    rows = {"start": [1.1, 5.1, 9.1, 12.0], "latency": [0.01] * 4, "kind": ["ok"] * 4}
    modes = {}
    for key, these in ups.items():
        tally = continuity.Tally()
        tally.add(rows, these)
        modes[key] = tally.summary()
    params = {"upgrades": 2, "load_threads": 4, "load_interval": 0.005, "watch_window": 1.0}
    flat = [{"mode": "keep-alive tcp", "server": k, **asdict(u)} for k, these in ups.items() for u in these]
    return {"params": params, "continuity": {"modes": {"keep-alive tcp": modes}, "upgrades": flat}}


def test_report_judges_the_handover_and_reports_the_commit_beside_it() -> None:
    targets = {t["target"]: t for t in report.judge(_results())}
    handover = next(t for name, t in targets.items() if name.startswith("median handover"))
    assert "old generation no longer serves" in next(n for n in targets if n.startswith("median handover"))
    assert handover["met"] is True and handover["measured"].startswith("0.25 s over 2")
    commit = next(t for name, t in targets.items() if name.startswith("median commit"))
    assert commit["met"] is None and commit["measured"].startswith("1.35 s over 2")
    assert "| – |" in report._targets(list(targets.values()))


def test_continuity_table_has_commit_beside_handover_and_says_gunicorn_has_no_watch_window() -> None:
    text = report._continuity(_results()["continuity"], _results()["params"])
    head = next(line for line in text.splitlines() if line.startswith("| mode |"))
    assert head.index("handover med / max s") < head.index("commit med / max s")
    assert "--watch-window 1 " in text
    hotswap_row = next(line for line in text.splitlines() if line.startswith("| keep-alive tcp | hotswap"))
    assert hotswap_row.endswith("| 0.25 / 0.30 | 1.35 / 1.40 |")
    gunicorn_row = next(line for line in text.splitlines() if "| gunicorn" in line)
    assert gunicorn_row.endswith("| 0.40 / 0.40 | 0.40 / 0.40 |")
    assert "gunicorn has no watch window: its commit is its handover" in text


def _soak(files: list[str], records: list[str]) -> dict:
    snap = {"master": 1, "master_fds": 10, "master_fd_kinds": {}, "master_rss_kb": 20000, "workers": 2,
            "worker_rss_kb": [1, 2], "zombies": 0, "leftover_processes": [], "files": ["hotswap.pid"]}
    return {"upgrades": 3, "upgrades_ok": 3, "upgrade_failures": [], "requests": 9, "failed": 0,
            "failures": {}, "watch_window": 0.2, "handover_median": 0.2, "handover_max": 0.3,
            "commit_median": 0.5, "commit_max": 0.6, "start": snap, "end": snap,
            "series": [{"upgrade": 0, "master": 1, "master_fds": 10, "master_rss_kb": 20000, "zombies": 0,
                        "leftovers": 0}],
            "after_stop": {"files": files, "records": records, "processes": []}}


def test_soak_keeps_the_upgrade_records_apart_from_leftovers() -> None:
    import soak

    records = sorted(soak.upgrade_records(Path("run/hotswap.pid")))
    assert records == ["hotswap.pid.history", "hotswap.pid.upgrade"]
    clean = {"soak": _soak([], records), "params": {}}
    line = next(t for t in report.judge(clean) if t["target"].startswith("soak: 0 failed"))
    assert line["met"] is True
    text = report._soak(clean["soak"], {"soak_threads": 2, "soak_interval": 0.02, "soak_every": 1,
                                        "soak_watch_window": 0.2})
    assert "commit median 0.50 s, max 0.60 s (watch window 0.2 s)" in text
    assert "upgrade records kept on purpose: hotswap.pid.history, hotswap.pid.upgrade" in text
    leaked = {"soak": _soak(["hotswap.pid.oldbin"], records), "params": {}}
    line = next(t for t in report.judge(leaked) if t["target"].startswith("soak: 0 failed"))
    assert line["met"] is False


def test_http_date_matches_the_email_package() -> None:
    from email.utils import formatdate

    from hotswap.http.response import http_date

    for stamp in (0, 784111777, 951782400, 1700000000, 4102444799):
        assert http_date(stamp) == formatdate(stamp, usegmt=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(30)
def test_classify_names_refused_tcp_and_missing_unix_socket(tmp_path: Path) -> None:
    try:
        requests.get(f"http://127.0.0.1:{_closed_port()}/", timeout=5)
    except requests.RequestException as exc:
        assert loadgen.classify(exc) == "connection refused"
    else:
        pytest.fail("a closed port answered")
    session = requests.Session()
    session.mount("http://", loadgen.UnixAdapter(str(tmp_path / "absent.sock")))
    try:
        session.get("http://localhost/", timeout=5)
    except requests.RequestException as exc:
        assert loadgen.classify(exc) == "unix socket missing"
    else:
        pytest.fail("a missing unix socket answered")


def test_nginx_config_keeps_every_path_in_its_folder(tmp_path: Path) -> None:
    server = servers.Server(servers.NGINX, tmp_path / "nginx", workers=2)
    conf = server._nginx_conf().read_text()
    assert (tmp_path / "nginx" / "16k.bin").read_bytes() == apps.BIG
    assert f"listen 127.0.0.1:{server.port}" in conf
    assert "access_log off" in conf
    for line in conf.splitlines():
        if "_temp_path" in line or line.startswith(("pid ", "error_log ")):
            assert str(tmp_path) in line, line


needs_venv = pytest.mark.skipif(not (servers.VENV / "bin" / "gunicorn").exists()
                                or not servers.PYTHON.exists(),
                                reason="run scripts/bench/run once to create the bench venv")


@needs_venv
@pytest.mark.timeout(120)
@pytest.mark.parametrize("flavor", [servers.HOTSWAP_T2, servers.GUNICORN_GTHREAD])
def test_load_through_one_upgrade_then_nothing_is_left(tmp_path: Path, flavor: servers.Flavor) -> None:
    """A real server under real load through one real upgrade, and a clean stop after."""
    proctree.become_subreaper()
    before = {p.pid for p in proctree.descendants(os.getpid())}
    server = servers.Server(flavor, tmp_path / "srv", workers=2, tcp=True, unix=True)
    server.start()
    try:
        for unix in (False, True):
            first = server.master_pid()
            load = continuity.Load(server.target(unix), tmp_path / f"load-{unix}.json", threads=2,
                                   close=False, interval=0.01)
            try:
                up = server.upgrade()
            finally:
                rows = load.stop()
            assert up.ok, up
            assert up.old_pid == first and up.new_pid not in (None, first)
            assert up.handover_s is not None and 0 < up.handover_s <= up.ended - up.started + 1e-6
            assert up.commit_s is not None and up.handover_s <= up.commit_s
            assert up.started < up.ended <= up.commit_end
            assert up.old_pid is not None and not proctree.alive(up.old_pid)
            if flavor.kind == "hotswap":  # the old master stays for the whole watch window
                assert up.commit_s >= server.watch_window
            else:
                assert up.commit_s == up.handover_s
            assert rows["kind"], "the load generator sent nothing"
            assert set(rows["kind"]) == {"ok"}, rows["kind"]
            assert proctree.wait_until(lambda new=up.new_pid: server.master_pid() == new, 10)
    finally:
        server.stop()
    time.sleep(0.1)
    left = [p for p in proctree.descendants(os.getpid()) if p.pid not in before and p.state != "Z"]
    assert not left, left
    assert not (tmp_path / "srv" / "s.sock").exists() or flavor.kind == "gunicorn"


@pytest.mark.timeout(60)
def test_run_refuses_cleanly_without_its_tools(tmp_path: Path) -> None:
    """bench.py alone, with no wrk on PATH, says what is missing in one line."""
    env = dict(os.environ, PATH=str(tmp_path), HOTSWAP_BENCH_VENV=str(tmp_path / "no-venv"))
    done = subprocess.run([sys.executable, str(HERE / "bench.py"), "--quick"], capture_output=True,
                          text=True, env=env, timeout=50)
    assert done.returncode != 0
    assert "missing wrk, nginx, gunicorn" in done.stderr
    assert "Traceback" not in done.stderr


# -- the ASGI section (issue 11) -------------------------------------------------------

import asgiapps  # noqa: E402
import asgibench  # noqa: E402
import asgireport  # noqa: E402
import wsload  # noqa: E402
from throughput import summarize  # noqa: E402


def test_accept_value_is_the_rfc_6455_example() -> None:
    assert wsload.accept_value(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size, head_len", [(0, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)])
def test_client_frame_is_masked_and_unmasks_to_the_payload(size: int, head_len: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = wsload.client_frame(payload, wsload.OP_BINARY, mask=b"\x01\x02\x03\x04")
    assert frame[0] == 0x80 | wsload.OP_BINARY and frame[1] & 0x80  # final, masked
    assert len(frame) == head_len + size
    assert frame[head_len - 4:head_len] == b"\x01\x02\x03\x04"
    assert wsload.apply_mask(frame[head_len:], b"\x01\x02\x03\x04") == payload


def test_parse_frame_waits_for_whole_frames_and_refuses_masked_ones() -> None:
    buf = bytearray(b"\x01\x03abc" + b"\x80\x02de" + b"\x81\x7e\x00")
    assert wsload.parse_frame(buf) == (False, wsload.OP_TEXT, b"abc")
    assert wsload.parse_frame(buf) == (True, wsload.OP_CONT, b"de")
    assert wsload.parse_frame(buf) is None and buf == bytearray(b"\x81\x7e\x00")  # length still partial
    buf += b"\x80" + b"x" * 127
    assert wsload.parse_frame(buf) is None  # 128 announced, 127 here
    buf += b"y"
    assert wsload.parse_frame(buf) == (True, wsload.OP_TEXT, b"x" * 127 + b"y") and not buf
    with pytest.raises(wsload.ProtocolError, match="masked"):
        wsload.parse_frame(bytearray(wsload.client_frame(b"hi")))


def test_messages_are_distinct_and_of_the_asked_size() -> None:
    msgs = wsload.messages(1000, 32)
    assert len(set(msgs)) == 1000 and {len(m) for m in msgs} == {32}


async def _toy_ws_server(mode: str) -> tuple[asyncio.AbstractServer, int]:
    """A minimal WebSocket server for the client's own tests: echo, echo wrongly, or refuse."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await exchange(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):  # the client aborts after a wrong echo
            writer.close()

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if mode == "refuse":
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + wsload.accept_value(key) + b"\r\n\r\n")
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F  # the client's test messages are short
            mask = await reader.readexactly(4)
            payload = wsload.apply_mask(await reader.readexactly(n), mask)
            if b0 & 0x0F == wsload.OP_CLOSE:
                writer.write(bytes([0x88, len(payload)]) + payload)
                writer.close()
                return
            if mode == "wrong":
                payload = payload[:-1] + b"?"
            writer.write(bytes([0x80 | (b0 & 0x0F), len(payload)]) + payload)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _wsload_against(mode: str) -> dict:
    server, port = await _toy_ws_server(mode)
    async with server:
        return await wsload.run(f"ws://127.0.0.1:{port}/ws", 3, 20, 16, timeout=20)


@pytest.mark.timeout(30)
def test_wsload_counts_every_echo_and_a_clean_close() -> None:
    out = asyncio.run(_wsload_against("echo"))
    assert (out["messages"], out["expected"], out["errors"]) == (60, 60, {})
    assert out["close_codes"] == {"1000": 3} and out["rate"] > 0 and out["p50"] <= out["p99"]


@pytest.mark.timeout(30)
def test_wsload_reports_a_wrong_echo_and_a_refused_handshake() -> None:
    wrong = asyncio.run(_wsload_against("wrong"))
    assert wrong["errors"] == {"wrong echo": 3} and wrong["messages"] == 0
    refused = asyncio.run(_wsload_against("refuse"))
    assert refused["errors"] == {"handshake refused": 3} and refused["messages"] == 0


async def _call_asgi(scope: dict, events: list[dict]) -> list[dict]:
    sent: list[dict] = []
    queue = list(events)

    async def receive() -> dict:
        return queue.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    await asgiapps.app(scope, receive, send)
    return sent


def test_asgi_app_answers_the_wsgi_hello_bytes_echoes_and_does_lifespan() -> None:
    sent = asyncio.run(_call_asgi({"type": "http", "path": "/"}, []))
    assert sent[0]["status"] == 200 and sent[1]["body"] == apps.HELLO
    assert dict(sent[0]["headers"]) == {k.lower().encode(): v.encode() for k, v in apps._HELLO_HEADERS}
    assert asyncio.run(_call_asgi({"type": "http", "path": "/16k"}, []))[1]["body"] == apps.BIG
    assert asyncio.run(_call_asgi({"type": "http", "path": "/nope"}, []))[0]["status"] == 404
    echo = asyncio.run(_call_asgi({"type": "websocket", "path": "/ws"}, [
        {"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"},
        {"type": "websocket.receive", "bytes": b"\x00\x01"}, {"type": "websocket.disconnect", "code": 1000}]))
    assert echo == [{"type": "websocket.accept"}, {"type": "websocket.send", "text": "hi"},
                    {"type": "websocket.send", "bytes": b"\x00\x01"}]
    life = asyncio.run(_call_asgi({"type": "lifespan"}, [{"type": "lifespan.startup"},
                                                          {"type": "lifespan.shutdown"}]))
    assert [m["type"] for m in life] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_asgi_rounds_rotate_and_ratios_are_taken_within_each_round() -> None:
    a, b, c = asgibench.ORDER
    assert [asgibench.round_order(r, [a, b, c]) for r in range(4)] == [
        [a, b, c], [b, c, a], [c, a, b], [a, b, c]]
    rates = {(0, a.key): 200.0, (0, b.key): 100.0, (1, a.key): 90.0, (1, b.key): 100.0}
    runs = [{"round": r, "path": "/ws", "connection": "echo", "server": k, "rps": v, "p50": 0.001,
             "p99": 0.002, "errors": 0} for (r, k), v in rates.items()]
    cell = summarize(runs, 2, asgibench.CELLS, [a, b], [(a, b)])["/ws echo"]
    assert cell["ratios"][f"{a.key}/{b.key}"] == {"median": pytest.approx(1.45), "per_round": [2.0, 0.9]}
    assert cell["servers"][a.key]["rps_all"] == [200, 90]


def _asgi_results(hotswap: str, ratio_ka: float) -> dict:
    a, b = servers.HOTSWAP_ASGI, servers.UVICORN
    flavors = [a, b] if hotswap == "measured" else [b]
    runs = [{"round": 0, "path": p, "connection": c, "server": f.key,
             "rps": (ratio_ka if f is a else 1.0) * 1000, "p50": 0.001, "p99": 0.002, "errors": 0,
             "cpu_us_per_req": 50.0 if f is a else 100.0, "busiest_worker": 0.875 if f is a else None,
             **({"client_cpu": 0.5, "client_loop": "uvloop"} if c == "echo" else {})}
            for p, c in asgibench.CELLS for f in flavors]
    pairs = [(a, b)] if hotswap == "measured" else []
    return {"contenders": [f.key for f in flavors], "hotswap": hotswap, "runs": runs, "elapsed_s": 3.0,
            "summary": summarize(runs, 1, asgibench.CELLS, flavors, pairs)}


def test_asgi_report_judges_hotswap_against_uvicorn_or_says_it_was_not_measured() -> None:
    met = asgireport.judge(_asgi_results("measured", 1.2))
    assert [t["met"] for t in met] == [True, True, True] and met[0]["measured"] == "1.20×"
    assert [t["met"] for t in asgireport.judge(_asgi_results("measured", 0.8))] == [False] * 3
    absent = asgireport.judge(_asgi_results("not measured: no ASGI worker", 1.0))
    assert [t["met"] for t in absent] == [None] * 3 and "not measured" in absent[0]["measured"]
    params = {"wrk_threads": 1, "connections": 16, "duration": 1.0, "ws_connections": 4, "ws_messages": 10,
              "ws_size": 32, "rounds": 1, "workers": 2}
    text = asgireport.render({"asgi": _asgi_results("measured", 1.2), "params": params, "when": "now",
                              "command": "scripts/bench/run --only asgi", "machine": {"cpu": "x"}})
    assert "| WebSocket echo | 1.20× (1.2) |" in text
    assert "| CPU per request, per-round ratios | hotswap / uvicorn |" in text
    assert "| WebSocket echo | 0.50× (0.5) |" in text
    assert "| hello (13 B), keep-alive | 0.88 | – |" in text
    assert "4 connections × 10 messages of 32 B" in text
    assert "Echo client (one process, on uvloop): its CPU time over wall time, median per server: " \
           "hotswap 50 %, uvicorn 50 %. Echo errors: none." in text


def test_busiest_share_is_the_top_workers_part_and_ignores_the_master_and_idle_runs() -> None:
    assert asgibench.busiest_share({1: 5.0, 2: 0.3, 3: 0.1}, master=1) == pytest.approx(0.75)
    assert asgibench.busiest_share({1: 0.0, 2: 0.5, 3: 0.5}, master=1) == pytest.approx(0.5)
    assert asgibench.busiest_share({1: 0.0, 2: 0.01, 3: 0.0}, master=1) is None  # one tick: too little


def test_tree_cpu_seconds_grows_with_work_done() -> None:
    before = proctree.tree_cpu_seconds(os.getpid())
    end = time.process_time() + 0.1
    while time.process_time() < end:  # bounded: 0.1 s of this process's CPU
        pass
    assert proctree.tree_cpu_seconds(os.getpid()) - before >= 0.05


def test_docs_update_replaces_only_the_asgi_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench

    doc = tmp_path / "performance.md"
    doc.write_text(f"a\n{bench.BEGIN}\nwsgi\n{bench.END}\nb\n{bench.ASGI_BEGIN}\nold\n{bench.ASGI_END}\nc\n")
    monkeypatch.setattr(bench, "DOCS", doc)
    bench._update_docs("new\n", bench.ASGI_BEGIN, bench.ASGI_END)
    assert doc.read_text() == (f"a\n{bench.BEGIN}\nwsgi\n{bench.END}\nb\n{bench.ASGI_BEGIN}\nnew\n"
                               f"{bench.ASGI_END}\nc\n")


needs_uvicorn = pytest.mark.skipif(not (servers.VENV / "bin" / "uvicorn").exists(),
                                   reason="run scripts/bench/run once to create the bench venv with uvicorn")


@needs_uvicorn
@pytest.mark.timeout(180)  # about 20 s alone; three servers and wrk on 2 busy cores can take 3x that
def test_asgi_section_quick_runs_every_contender_in_every_cell_and_leaves_nothing(tmp_path: Path) -> None:
    """The whole ASGI section on real servers with tiny loads: seconds, not minutes."""
    proctree.become_subreaper()
    before = {p.pid for p in proctree.descendants(os.getpid())}
    params = {"rounds": 2, "duration": 1.0, "connections": 8, "wrk_threads": 1, "workers": 2,
              "ws_connections": 4, "ws_messages": 50, "ws_size": 32}
    out = asgibench.run(tmp_path, params, lambda _msg: None)
    expected = [f.key for f in asgibench.ORDER if f is not servers.HOTSWAP_ASGI
                or servers.hotswap_serves_asgi()]
    assert out["contenders"] == expected
    for path, conn in asgibench.CELLS:
        cell = out["summary"][f"{path} {conn}"]
        assert list(cell["servers"]) == expected
        for key, s in cell["servers"].items():
            assert s["runs"] == 2 and s["errors"] == 0 and s["rps"] > 0, (path, conn, key, s)
        assert all(len(r["per_round"]) == 2 for r in cell["ratios"].values())
    assert all(r["cpu_us_per_req"] is not None for r in out["runs"]), out["runs"]
    # /proc counts CPU in 10 ms ticks: a 1 s wrk run always shows some; a 200-message echo may not
    assert all(r["cpu_us_per_req"] > 0 for r in out["runs"] if r["connection"] != "echo"), out["runs"]
    echoes = [r for r in out["runs"] if r["connection"] == "echo"]
    assert all(r["requests"] == 4 * 50 and r["close_codes"] == {"1000": 4} for r in echoes), echoes
    orders = [[r["server"] for r in echoes if r["round"] == n] for n in (0, 1)]
    assert orders[1] == orders[0][1:] + orders[0][:1]  # rotated by one
    time.sleep(0.1)
    left = [p for p in proctree.descendants(os.getpid()) if p.pid not in before and p.state != "Z"]
    assert not left, left
