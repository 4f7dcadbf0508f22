"""Live upgrades under systemd: socket activation and sd_notify, with the real tools.

Under systemd the listening sockets belong to the unit (fds 3..N, LISTEN_FDS), and
systemd follows the service through READY=1 / RELOADING=1 / MAINPID= messages. If an
upgrade lost or renumbered those sockets, a socket-activated service would stop
answering on them or be restarted by systemd; if it sent the wrong messages, systemd
would kill the new master or think the service died. So this proves, with
`systemd-socket-activate` (which execs the master in place, as systemd does):

- the master serves the LISTEN_FDS sockets without --bind, and after each of two
  upgrades (`hotswap upgrade`, then the script) the new master holds the very same
  sockets (same inode) at the very same fd numbers 3 and 4, and both ports serve the
  new code;
- on a datagram socket bound by the test as NOTIFY_SOCKET, with the sender's pid taken
  from the kernel (SCM_CREDENTIALS): READY=1 from the first master; at each upgrade
  RELOADING=1 with a current MONOTONIC_USEC from the old master, then MAINPID=<new> and
  READY=1 from the new master, and never STOPPING=1; after a failed upgrade, READY=1
  again from the master that kept serving.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from load import REPO, app_source, fetch, run_upgrade_tool
from support import free_port, wait_for, write_app

from pidfiles import procs

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass
class Notification:
    sender: int
    fields: dict[str, str]
    received: float  # time.monotonic()


class NotifySocket:
    """What systemd would receive on $NOTIFY_SOCKET, with each sender's pid from the kernel."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.1)
        self.messages: list[Notification] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-socket", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(CREDENTIALS.size))
            except TimeoutError:
                continue
            sender = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = CREDENTIALS.unpack(payload[:CREDENTIALS.size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append(Notification(sender, fields, time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.messages)

    def wait(self, sender: int, key: str, after: int = 0) -> Notification:
        """The first message from `sender` carrying `key`, among those after index `after`."""
        def find() -> Notification | None:
            return next((n for n in self.received()[after:]
                         if n.sender == sender and key in n.fields), None)
        return wait_for(find, 15, what=f"{key} from {sender}; got {self.received()[after:]}")


def _fd_inode(pid: int, fd: int) -> int:
    link = os.readlink(f"/proc/{pid}/fd/{fd}")
    assert link.startswith("socket:"), f"fd {fd} of {pid} is {link}"
    return os.stat(f"/proc/{pid}/fd/{fd}").st_ino


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed")
@pytest.mark.timeout(90)
def test_socket_activation_and_sd_notify_through_two_upgrades(masters, tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        write_app(tmp_path, "app", app_source("v1"))
        prefix = [str(SOCKET_ACTIVATE), "-l", f"127.0.0.1:{p1}", "-l", f"127.0.0.1:{p2}",
                  "-E", f"PYTHONPATH={REPO}", "-E", "PYTHONUNBUFFERED=1",
                  "-E", f"NOTIFY_SOCKET={notify.path}"]
        m = masters("app:app", "--workers", "2", prefix=prefix, cwd=tmp_path, ready=False)
        wait_for(lambda: f"127.0.0.1:{p2}" in m.log(), what="systemd-socket-activate to listen")
        # Like systemd, it execs the service on the first connection, which is then served.
        assert fetch(f"http://127.0.0.1:{p1}")["master"] == m.pid
        m.wait_ready()
        first = notify.wait(m.pid, "READY")
        assert first.fields["READY"] == "1" and "MAINPID" not in first.fields
        inodes = {fd: _fd_inode(m.pid, fd) for fd in (3, 4)}

        old = m.pid
        for number, tool in ((2, "cli"), (3, "script")):
            mark = len(notify.received())
            write_app(tmp_path, "app", app_source(f"v{number}"))
            before = time.monotonic()
            run = run_upgrade_tool(tool, m.pidfile)
            assert run.returncode == 0, run.explain()
            new = m.current_pid()
            assert new is not None and new != old and not procs.is_alive(old)
            for fd, inode in inodes.items():
                assert _fd_inode(new, fd) == inode, f"fd {fd} of the new master is another socket"
            for port in (p1, p2):
                answer = fetch(f"http://127.0.0.1:{port}")
                assert (answer["version"], answer["master"]) == (f"v{number}", new)
            reloading = notify.wait(old, "RELOADING", after=mark)
            usec = int(reloading.fields["MONOTONIC_USEC"])
            assert before * 1e6 <= usec <= reloading.received * 1e6, "MONOTONIC_USEC is not now"
            ready = notify.wait(new, "READY", after=mark)
            assert ready.fields["MAINPID"] == str(new) and ready.fields["READY"] == "1"
            assert ready.received >= reloading.received
            old = new

        # A failed upgrade: the master that keeps serving says READY=1 again.
        mark = len(notify.received())
        write_app(tmp_path, "app", app_source("v4", 'raise RuntimeError("v4 is broken")'))
        run = run_upgrade_tool("cli", m.pidfile)
        assert run.returncode == 1 and "v4 is broken" in run.report["reason"], run.explain()
        assert notify.wait(old, "RELOADING", after=mark)
        again = notify.wait(old, "READY", after=mark)
        assert again.fields["READY"] == "1" and "upgrade failed" in again.fields.get("STATUS", "")
        assert m.current_pid() == old
        for fd, inode in inodes.items():
            assert _fd_inode(old, fd) == inode
        assert fetch(f"http://127.0.0.1:{p2}")["version"] == "v3"

        messages = notify.received()
        assert not [n for n in messages if "STOPPING" in n.fields], messages
        senders = {n.sender for n in messages}
        assert senders <= {m.pid, *[int(n.fields["MAINPID"]) for n in messages
                                    if "MAINPID" in n.fields]}, messages
    finally:
        notify.close()
