"""Out of file descriptors, a worker backs off instead of spinning (issue 9, item 3).

The master runs under `prlimit --nofile=64`; 200 clients connect and send nothing, so
the worker runs out of fds with connections still queued and the listener readable.
It must stay nearly idle (below 5 % of a CPU) and log at most a few lines a second,
then serve again once the clients are gone.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import requests
from support import free_port, wait_for, write_app

pytestmark = pytest.mark.timeout(60)

APP = '''
import os


def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

CLIENTS = 200
FAILED = "Too many open files"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serves(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_worker_out_of_fds_backs_off_and_recovers(masters, tmp_path: Path) -> None:
    port = free_port()
    write_app(tmp_path, "app", APP)
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", cwd=tmp_path,
                prefix=["prlimit", "--nofile=64", "--"])
    [worker] = m.workers()
    clients: list[socket.socket] = []
    try:
        for _ in range(CLIENTS):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        wait_for(lambda: FAILED in m.log(), 10, what="the worker to run out of fds")
        lines_before = m.log().count(FAILED)
        cpu_before, started = cpu_seconds(worker), time.monotonic()
        time.sleep(2.0)  # the measurement window, not a synchronisation
        cpu_share = (cpu_seconds(worker) - cpu_before) / (time.monotonic() - started)
        lines = m.log().count(FAILED) - lines_before
        assert cpu_share < 0.05, f"the worker used {cpu_share:.0%} of a CPU while out of fds"
        assert lines <= 6, f"{lines} log lines about accept in 2 s"
    finally:
        for sock in clients:
            sock.close()
    wait_for(lambda: serves(port), 20, what="the worker to serve again")
    assert m.workers() == [worker]
