"""Tests of the benchmark's own moving parts: `python -m pytest scripts/bench -q`.

Kept beside the benchmark (not in tests/) because they test the harness, not hotswap.
The end-to-end test runs real servers on the bench venv's Python and is skipped when
`scripts/bench/run` has not created that venv yet.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import apps  # noqa: E402
import continuity  # noqa: E402
import loadgen  # noqa: E402
import proctree  # noqa: E402
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


def test_http_date_matches_the_email_package() -> None:
    from email.utils import formatdate

    from hotswap.response import http_date

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
