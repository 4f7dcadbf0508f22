"""scripts/ansible against a fleet of three real hotswap hosts behind a real HAProxy.

Three "hosts" (web1..web3) live on this machine: each an inventory host with
`ansible_connection=local`, its own port, pidfile, releases/ and `current` symlink, and a
real `hotswap start --chdir .../current` master. HAProxy (started here, on free ports,
with its admin socket in tmp_path) balances across them, and the load of load.py runs
through it while `ansible-playbook` runs:

- rolling-upgrade.yml (HAProxy drain on): every host serves the new release after, each
  under a new master, with 0 failed requests; rollback.yml (no drain: hotswap alone keeps
  the requests) brings every host back to the release before, with 0 failed requests;
- a release that raises at import: the play fails at web1, which still serves the old
  release with the same master (hotswap rolled it back) and its `current` link switched
  back; web2 and web3 are untouched; 0 failed requests; every backend enabled again;
- a release that boots and commits but fails the health URL: the role upgrades web1 back
  to the old release; no client request ever reached the sick release (drained).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from load import ClientSpec, LoadGenerator, app_source, failure_report, fetch
from support import MasterFactory, free_port, wait_for, write_app

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "scripts" / "ansible"
HOSTS = ("web1", "web2", "web3")
BACKEND = "app"


def _tool(name: str) -> str | None:
    """The tool next to this interpreter (a virtualenv's bin/) first, then on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


ANSIBLE_PLAYBOOK = _tool("ansible-playbook")
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)

pytestmark = [
    pytest.mark.skipif(ANSIBLE_PLAYBOOK is None, reason="needs ansible-playbook (scripts/test-deps.sh)"),
    pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (scripts/test-deps.sh installs it)"),
]

# The fleet's health URL: /release names the release this generation serves, or says 503
# in a release that sets SICK (it boots and serves, but is not healthy).
RELEASE_ROUTE = '''
_load_app = app


def app(environ, start_response):
    if environ.get("PATH_INFO") != "/release":
        return _load_app(environ, start_response)
    body = ("release " + VERSION).encode()
    status = "503 Service Unavailable" if globals().get("SICK") else "200 OK"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

HAPROXY_CONFIG = """\
global
    stats socket {socket} mode 600 level admin
    maxconn 512

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout check 5s
    # No retry, no redispatch: a request a backend fails is a failed request here.
    retries 0
    # One backend connection per request: no race between a backend closing an idle
    # kept-alive connection and HAProxy reusing it.
    option http-server-close

frontend fleet
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    balance roundrobin
    option httpchk GET /healthz
{servers}
"""


def release_source(version: str, prelude: str = "") -> str:
    return app_source(version, prelude) + RELEASE_ROUTE


class Host:
    """One fleet host: its folders, its port and the master serving `current`."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.root = root / name
        self.releases = self.root / "releases"
        self.current = self.root / "current"
        self.previous = self.root / "previous"
        self.pidfile = self.root / "hotswap.pid"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.releases.mkdir(parents=True)

    def add_release(self, version: str, prelude: str = "") -> Path:
        folder = self.releases / version
        folder.mkdir()
        write_app(folder, "app", release_source(version, prelude))
        return folder

    def release(self, version: str) -> Path:
        return (self.releases / version).resolve()

    def master_pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def link(self, which: Path) -> Path:
        """The folder a link names (links may be relative, as the first one is)."""
        return (self.root / os.readlink(which)).resolve()

    def serving(self) -> tuple[str, int]:
        """(release, master pid) of a fresh request straight to this host."""
        answer = fetch(self.base)
        return answer["version"], answer["master"]


class HAProxy:
    """HAProxy in the foreground on a free port, reaped by pid at the end."""

    def __init__(self, tmp: Path, hosts: list[Host]) -> None:
        self.port = free_port()
        self.socket = tmp / "haproxy.sock"
        self.config = tmp / "haproxy.cfg"
        servers = "\n".join(f"    server {h.name} 127.0.0.1:{h.port} check inter 300ms fall 3 rise 1"
                            for h in hosts)
        self.config.write_text(HAPROXY_CONFIG.format(socket=self.socket, port=self.port,
                                                     backend=BACKEND, servers=servers))
        self.log = open(tmp / "haproxy.log", "ab")
        assert HAPROXY is not None
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        self.names = [h.name for h in hosts]

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def statuses(self) -> dict[str, str]:
        """The status HAProxy gives each server of the backend (UP, DOWN, MAINT, DRAIN...)."""
        lines = self.command("show stat").lstrip("# ").splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows
                if r["pxname"] == BACKEND and r["svname"] in self.names}

    def all_up(self) -> bool:
        """Every server enabled and UP ("UP 1/3": up, its check counter still climbing after
        it left maintenance), none in MAINT, DRAIN or DOWN."""
        try:
            statuses = self.statuses()
        except OSError:
            return False
        return len(statuses) == len(self.names) and all(s.startswith("UP") for s in statuses.values())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Fleet:
    """Three hosts on v1 behind HAProxy, an inventory, and the playbooks to run."""

    def __init__(self, tmp: Path, masters: MasterFactory) -> None:
        self.tmp = tmp
        self.hosts = [Host(tmp, name) for name in HOSTS]
        self.plays = 0
        for host in self.hosts:
            host.add_release("v1")
            host.current.symlink_to("releases/v1")  # relative, as many deploy tools make it
            masters("app:app", "--chdir", str(host.current), "--bind", f"127.0.0.1:{host.port}",
                    "--pidfile", str(host.pidfile), "--workers", "2", "--watch-window", "1",
                    "--name", host.name, cwd=host.root)
        self.bin = self._hotswap_bin()
        self.inventory = self._inventory()
        self.lb = HAProxy(tmp, self.hosts)
        try:
            wait_for(self.lb.all_up, 15, what="HAProxy to see every backend UP")
        except AssertionError as exc:
            self.lb.stop()
            raise AssertionError(f"{exc}; HAProxy's log:\n{self.lb_log()}") from None

    def lb_log(self) -> str:
        return (self.tmp / "haproxy.log").read_text(errors="replace")[-3000:]

    def _hotswap_bin(self) -> Path:
        """What a virtualenv's bin/hotswap is to a host: here, this worktree's code."""
        path = self.tmp / "bin" / "hotswap"
        path.parent.mkdir()
        path.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}" '
                        f'exec "{sys.executable}" -m hotswap "$@"\n')
        path.chmod(0o755)
        return path

    def _inventory(self) -> Path:
        local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        inventory = {
            "hotswap": {
                "hosts": {h.name: {"app_root": str(h.root), "http_port": h.port} for h in self.hosts},
                "vars": {
                    **local,
                    "current_link": "{{ app_root }}/current",
                    "hotswap_pidfile": "{{ app_root }}/hotswap.pid",
                    "health_url": "http://127.0.0.1:{{ http_port }}/release",
                    "hotswap_bin": str(self.bin),
                    "hotswap_upgrade_timeout": 60,
                    "haproxy_socket": str(self.tmp / "haproxy.sock"),
                },
            },
            "haproxy": {"hosts": {"lb": local}},
        }
        path = self.tmp / "inventory.yml"
        path.write_text(json.dumps(inventory, indent=2))  # JSON is YAML
        return path

    def add_release(self, version: str, prelude: str = "") -> None:
        for host in self.hosts:
            host.add_release(version, prelude)

    def play(self, playbook: str, **extra: object) -> subprocess.CompletedProcess[str]:
        """ansible-playbook, as an operator runs it; bounded, its output kept for the report."""
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "1",
               "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-local"),
               "ANSIBLE_REMOTE_TMP": str(self.tmp / "ansible-remote"),
               "ANSIBLE_DEPRECATION_WARNINGS": "0"}
        argv = [str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), str(PLAYBOOKS / playbook)]
        if extra:
            argv += ["-e", json.dumps(extra)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=self.tmp, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # ansible-playbook and the modules it runs
            out, err = proc.communicate(timeout=10)
            raise AssertionError(f"{playbook} still running after 150 s:\n{out[-6000:]}") from None
        self.plays += 1
        (self.tmp / f"play-{self.plays}-{playbook}.log").write_text(out + err)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def upgrade_to(self, version: str, **extra: object) -> subprocess.CompletedProcess[str]:
        return self.play("rolling-upgrade.yml", release_dir="{{ app_root }}/releases/" + version,
                         health_expect=f"release {version}", lb_backend=BACKEND,
                         haproxy_wait_interval=1, **extra)

    def load(self) -> LoadGenerator:
        clients = [ClientSpec("keepalive-0"), ClientSpec("keepalive-1"),
                   ClientSpec("close-0", keepalive=False), ClientSpec("slow-0", kind="slow"),
                   ClientSpec("pauser-0", kind="pauser")]
        return LoadGenerator(self.lb.base, None, clients, max_seconds=220, max_requests=5000,
                             think=0.05)

    def close(self) -> None:
        self.lb.stop()


@pytest.fixture
def fleet(tmp_path: Path, masters: MasterFactory) -> Iterator[Fleet]:
    built = Fleet(tmp_path, masters)
    try:
        yield built
    finally:
        built.close()


def _explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"


def _served_under_load(load: LoadGenerator) -> set[tuple[str | None, int | None]]:
    return {(r.version, r.master) for r in load.records if r.ok}


def _check_load(load: LoadGenerator) -> None:
    load.stop()
    print("load through HAProxy:", json.dumps(load.summary()))  # shown with -rP
    assert not load.crashed, load.crashed
    assert load.records, "the load sent nothing"
    assert not load.failures(), failure_report(load.records)


@pytest.mark.timeout(300)
def test_rolling_upgrade_then_rollback_under_load(fleet: Fleet) -> None:
    fleet.add_release("v2")
    v1_masters = {h.name: h.master_pid() for h in fleet.hosts}
    with fleet.load() as load:
        wait_for(lambda: len(load.records) > 20, 15, what="the load to flow through HAProxy")
        done = fleet.upgrade_to("v2")
        assert done.returncode == 0, _explain(done)
        for host in fleet.hosts:
            version, master = host.serving()
            assert version == "v2", f"{host.name} serves {version}"
            assert master == host.master_pid() != v1_masters[host.name], host.name
            assert host.link(host.current) == host.release("v2")
            assert host.link(host.previous) == host.release("v1")
        assert fleet.lb.all_up(), fleet.lb.statuses()
        v2_masters = {h.name: h.master_pid() for h in fleet.hosts}
        # The clients were answered by all three hosts on v1, then on v2, through HAProxy.
        wait_for(lambda: {("v2", pid) for pid in v2_masters.values()} <= _served_under_load(load),
                 15, what="the load to reach every upgraded host")
        assert {("v1", pid) for pid in v1_masters.values()} <= _served_under_load(load)

        # Back, without the HAProxy drain: hotswap's own upgrade keeps every request.
        done = fleet.play("rollback.yml")
        assert done.returncode == 0, _explain(done)
        for host in fleet.hosts:
            version, master = host.serving()
            assert version == "v1", f"{host.name} serves {version}"
            assert master == host.master_pid() != v2_masters[host.name], host.name
            assert host.link(host.current) == host.release("v1")
            assert host.link(host.previous) == host.release("v2")
        assert fleet.lb.all_up(), fleet.lb.statuses()
        wait_for(lambda: len({pid for v, pid in _served_under_load(load) if v == "v1"}) == 6, 15,
                 what="the load to reach every rolled-back host")
    _check_load(load)


@pytest.mark.timeout(240)
def test_a_failing_host_stops_the_rollout_on_its_old_release(fleet: Fleet) -> None:
    fleet.add_release("v2", prelude="raise RuntimeError('v2 is broken at import')")
    fleet.add_release("v3", prelude="SICK = True")
    before = {h.name: h.master_pid() for h in fleet.hosts}
    web1, others = fleet.hosts[0], fleet.hosts[1:]
    with fleet.load() as load:
        wait_for(lambda: len(load.records) > 20, 15, what="the load to flow through HAProxy")

        done = fleet.upgrade_to("v2")
        assert done.returncode != 0, _explain(done)
        # hotswap's own record, in the failure message: the old master never stopped serving.
        assert f"upgrade failed, old master {before['web1']} still serving" in done.stdout, _explain(done)
        assert "v2 is broken at import" in done.stdout, _explain(done)
        _assert_stopped_at_web1(fleet, done)
        assert web1.serving() == ("v1", before["web1"]), "web1 is back on v1 under the same master"
        assert web1.link(web1.current) == web1.release("v1"), "the link was switched back"

        # v3 boots and commits, but its health URL says 503: the role upgrades web1 back.
        done = fleet.upgrade_to("v3")
        assert done.returncode != 0, _explain(done)
        assert "Check that the health URL serves the new release" in done.stdout, _explain(done)
        _assert_stopped_at_web1(fleet, done)
        version, master = web1.serving()
        assert version == "v1" and master == web1.master_pid() != before["web1"]
        assert web1.link(web1.current) == web1.release("v1")

        for host in others:  # untouched: same master, same release, same link
            assert host.serving() == ("v1", before[host.name]), host.name
            assert host.link(host.current) == host.release("v1")
            assert not host.previous.exists()
        assert fleet.lb.all_up(), fleet.lb.statuses()
    _check_load(load)
    served = {version for version, _ in _served_under_load(load)}
    assert served == {"v1"}, f"clients were answered by {served}: v3 ran drained, v2 never ran"


def _assert_stopped_at_web1(fleet: Fleet, done: subprocess.CompletedProcess[str]) -> None:
    """web1 failed; the play stopped there: web2 and web3 were never even looked at."""
    assert "web1" in done.stdout and "failed=1" in done.stdout, _explain(done)
    for name in ("web2", "web3"):
        assert f"[{name}]" not in done.stdout, _explain(done)
