"""The public face of upgrade/ (`Upgrader`, `Flag`, `report_startup_failure`), with real
processes, sockets and signals.

Most tests make this test process the old generation: it builds an Upgrader whose command
line starts `gen.py` (written below) from a temporary folder, so the new generation is a
real process that inherits the sockets and speaks the readiness protocol, and a child of
ours that we reap. What the new generation does is chosen by the MODE variable.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import setproctitle

from upgrade import Upgrader, UpgradeRefused, names, report_startup_failure
from upgrade.flag import Flag
from upgrade.record import read_state

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]

GEN = '''\
"""A new generation for test_upgrader.py: MODE says how it behaves, OUT gets what it saw."""
import json, os, sys, time
from upgrade import Upgrader, report_startup_failure

mode = os.environ["MODE"]
if mode == "startup-failure":
    report_startup_failure("bad configuration: PORT=x is not a number")
    sys.exit(2)
up = Upgrader(pidfile=os.environ["PIDFILE"])
socks = {addr: up.listen(addr) for addr in os.environ["ADDRS"].split(",") if addr}
seen = {addr: [s.fileno(), os.fstat(s.fileno()).st_ino] for addr, s in socks.items()}
with open(os.environ["OUT"] + ".tmp", "w") as fh:
    json.dump({"pid": os.getpid(), "generation": up.generation, "socks": seen}, fh)
os.rename(os.environ["OUT"] + ".tmp", os.environ["OUT"])
if mode == "hang":
    time.sleep(120)
up.install_signals()
up.ready()
if mode == "fail-after-ready":
    up.fail("health check failed after ready")
up.exit.wait()
up.close()
'''


def wait_for(condition: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def reap(pid: int, timeout: float = 10.0) -> int | None:
    """Our child's exit code once it exited (None if someone reaped it already)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"child {pid} did not exit within {timeout:g} s")
        time.sleep(0.02)


class Old:
    """This test process as the old generation: Upgraders whose next generation is gen.py.

    Everything is undone at teardown: our process title, every new generation (killed and
    reaped), the Upgraders closed, the folder removed."""

    def __init__(self) -> None:
        # Short: a unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="upg", dir="/tmp"))
        (self.dir / "gen.py").write_text(GEN)
        self.pidfile = self.dir / "app.pid"
        self.out = self.dir / "out.json"
        self.ups: list[Upgrader] = []
        self.title = setproctitle.getproctitle()

    def upgrader(self, mode: str = "ok", addrs: tuple[str, ...] = (), **kwargs: Any) -> Upgrader:
        env = {**os.environ, "MODE": mode, "ADDRS": ",".join(addrs), "OUT": str(self.out),
               "PIDFILE": str(self.pidfile), "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        up = Upgrader(self.pidfile, argv=[sys.executable, "gen.py"], start_dir=str(self.dir),
                      environ=env, **kwargs)
        self.ups.append(up)
        return up

    def seen(self) -> dict[str, Any]:
        """What the new generation wrote about itself (once it got that far)."""
        wait_for(self.out.exists, 15, what="the new generation's report")
        return json.loads(self.out.read_text())

    def record(self) -> Any:
        return read_state(str(self.pidfile))

    def close(self) -> None:
        for up in self.ups:
            pid = up.handover.pid if up.handover else None
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
            if pid is not None:
                reap(pid)
            if up.listeners:
                up.close()
        setproctitle.setproctitle(self.title)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def old() -> Iterator[Old]:
    o = Old()
    try:
        yield o
    finally:
        o.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_child(pid: int) -> int | None:
    """TERM a new generation (it installed its signals: exit, then close) and reap it."""
    os.kill(pid, signal.SIGTERM)
    return reap(pid)


# -- listen() ------------------------------------------------------------------------------


def test_listen_the_same_address_twice_gives_the_same_socket(old: Old) -> None:
    up = old.upgrader()
    tcp, unix = f"127.0.0.1:{free_port()}", f"unix:{old.dir}/a.sock"
    first, again = up.listen(tcp), up.listen(tcp)
    assert again is first
    assert up.listen(unix) is up.listen(unix)
    assert up.listen(unix) is not first
    assert len(up.listeners) == 2
    up.close()
    assert not (old.dir / "a.sock").exists()  # ours, nobody else serves it: unlinked


# -- the next generation -----------------------------------------------------------------


def test_new_generation_inherits_the_same_sockets_tcp_and_unix(old: Old) -> None:
    tcp, unix = f"127.0.0.1:{free_port()}", f"unix:{old.dir}/a.sock"
    up = old.upgrader(addrs=(tcp, unix))
    mine = {addr: [up.listen(addr).fileno(), os.fstat(up.listen(addr).fileno()).st_ino]
            for addr in (tcp, unix)}
    up.ready()
    result = up.upgrade()
    assert result.ok, result.reason
    assert up.exit.is_set() and up.wait_commit(5)
    seen = old.seen()
    assert seen["pid"] == result.pid and seen["generation"] == 2
    assert seen["socks"] == mine  # same fd numbers, same sockets (inodes)
    assert int(old.pidfile.read_text()) == result.pid
    up.close()
    assert old.record().state == names.STATE_COMMITTED
    assert (old.dir / "a.sock").exists()  # the new generation serves it: never unlinked
    assert stop_child(result.pid) == 0


# -- the guards ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_upgrade_refused_while_one_runs(old: Old) -> None:
    up = old.upgrader(mode="hang", upgrade_timeout=20)
    up.ready()
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(up.upgrade()))
    first.start()
    try:
        running = wait_for(lambda: (r := old.record()) and r.state == names.STATE_STARTING and r,
                           what="the first upgrade to start")
        second = up.upgrade()
        assert not second.ok and second.pid is None
        assert "already running" in second.reason
        refused = old.record()  # a client following PIDFILE.upgrade learns it at once
        assert refused.state == names.STATE_REFUSED and refused.id != running.id
        assert "already running" in refused.reason
        with pytest.raises(UpgradeRefused):
            up.start_upgrade()  # the loop-driven face refuses the same way
    finally:
        if up.handover is not None:
            os.kill(up.handover.pid, signal.SIGKILL)
        first.join(15)
    assert results and not results[0].ok  # the first upgrade failed (its child was killed)


def test_upgrade_refused_while_the_previous_generation_lives(old: Old) -> None:
    """The new generation's USR2 is refused while its parent (this test) is alive."""
    up = old.upgrader()
    up.ready()
    result = up.upgrade()
    assert result.ok, result.reason
    up.close()  # record: committed; but this process (its parent) lives on
    committed = old.record()
    os.kill(result.pid, signal.SIGUSR2)
    refused = wait_for(lambda: (r := old.record()) and r.id != committed.id and r,
                       what="the new generation to answer USR2")
    assert refused.state == names.STATE_REFUSED and refused.old == result.pid
    assert "has not exited yet" in refused.reason
    assert not Path(f"{old.pidfile}.oldbin").exists()
    assert stop_child(result.pid) == 0


# -- failures --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_close_during_a_starting_upgrade_stops_the_new_generation(old: Old) -> None:
    """TERM (exit, then close()) while upgrade() waits for a new generation: that one must
    not live on as an orphan serving our sockets, and the record must say why."""
    unix = f"unix:{old.dir}/a.sock"
    up = old.upgrader(mode="hang", addrs=(unix,), upgrade_timeout=20)
    up.listen(unix)
    up.ready()
    results: list[Any] = []
    upgrading = threading.Thread(target=lambda: results.append(up.upgrade()))
    upgrading.start()
    child = old.seen()["pid"]  # it adopted our sockets and hangs before ready()
    up.close()
    upgrading.join(15)
    assert not alive(child), "the new generation outlived the old one's close()"
    assert results and not results[0].ok
    rec = old.record()
    assert rec.state == names.STATE_FAILED and "stopping" in rec.reason
    assert not (old.dir / "a.sock").exists()  # nobody serves it any more
    assert not old.pidfile.exists()




def test_upgrade_timeout_stops_a_hung_new_generation(old: Old) -> None:
    up = old.upgrader(mode="hang", upgrade_timeout=1)
    up.ready()
    result = up.upgrade()
    assert not result.ok
    assert "not ready within 1 s" in result.reason
    assert result.pid is not None and not alive(result.pid)  # stopped (TERM) and reaped
    assert old.record().state == names.STATE_FAILED
    assert int(old.pidfile.read_text()) == os.getpid()
    assert not Path(f"{old.pidfile}.oldbin").exists()
    assert "not ready within" in Path(f"{old.pidfile}.upgrade-failed").read_text()
    assert not up.exit.is_set()


def test_report_startup_failure_fails_the_upgrade_with_its_reason(old: Old) -> None:
    up = old.upgrader(mode="startup-failure")
    up.ready()
    result = up.upgrade()
    assert not result.ok
    assert result.reason == "bad configuration: PORT=x is not a number"
    rec = old.record()
    assert rec.state == names.STATE_FAILED and rec.reason == result.reason
    assert int(old.pidfile.read_text()) == os.getpid()


def test_report_startup_failure_without_a_previous_generation_is_harmless() -> None:
    report_startup_failure("nobody listens", environ={})


@pytest.mark.timeout(30)
def test_rollback_when_the_new_generation_fails_in_the_watch_window(old: Old) -> None:
    tcp = f"127.0.0.1:{free_port()}"
    up = old.upgrader(mode="fail-after-ready", addrs=(tcp,), watch_window=10)
    sock = up.listen(tcp)
    up.ready()
    result = up.upgrade()
    assert result.ok  # it said READY...
    assert up.wait_commit(15) is False  # ...then FAILED during the window
    assert not up.exit.is_set()  # this generation serves again
    rec = old.record()
    assert rec.state == names.STATE_ROLLED_BACK
    assert rec.reason == "health check failed after ready"
    wait_for(lambda: not alive(result.pid), what="the new generation to leave (QUIT)")
    assert int(old.pidfile.read_text()) == os.getpid()
    assert not Path(f"{old.pidfile}.oldbin").exists()
    with socket.create_connection(sock.getsockname(), timeout=5):
        assert select.select([sock], [], [], 5)[0], "the old generation's socket is not served"
        conn, _ = sock.accept()
        conn.close()


# -- the asyncio face --------------------------------------------------------------------------


def test_upgrade_async_and_wait_exit_in_a_running_loop(old: Old) -> None:
    up = old.upgrader()
    up.ready()

    async def main() -> tuple[Any, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await up.upgrade_async()
        during = ticks
        await asyncio.wait_for(up.wait_exit(), 5)
        task.cancel()
        return result, during

    result, ticks = asyncio.run(main())
    assert result.ok, result.reason
    assert ticks >= 5  # the loop ran while the new generation booted (>= 100 ms)
    up.close()
    assert stop_child(result.pid) == 0


@pytest.mark.timeout(20)
def test_wait_exit_is_woken_from_another_thread() -> None:
    flag = Flag()

    async def main() -> None:
        threading.Timer(0.2, flag.set).start()
        await asyncio.wait_for(flag.wait_async(), 5)

    asyncio.run(main())
    assert flag.is_set()


@pytest.mark.timeout(20)
def test_main_thread_wait_runs_a_signal_delivered_to_another_thread() -> None:
    """`up.exit.wait()` in the main thread must not keep a signal handler from running when
    the kernel gave the signal to another thread (it did, now and then, and USR2 was lost)."""
    assert threading.current_thread() is threading.main_thread()
    flag, handled = Flag(), Flag()
    previous = signal.signal(signal.SIGUSR2, lambda *_: (handled.set(), flag.set()))
    try:
        def send() -> None:
            time.sleep(0.3)  # the main thread is in flag.wait() by then
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)

        sender = threading.Thread(target=send)
        sender.start()
        assert flag.wait(timeout=5), "the handler did not run while the main thread waited"
        assert handled.is_set()
        sender.join(5)
    finally:
        signal.signal(signal.SIGUSR2, previous)
