"""Where settings come from: defaults < config file < HOTSWAP_CMD_ARGS < command line
(gunicorn's order with GUNICORN_CMD_ARGS), --check-config and --print-config."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

from support import MasterFactory, free_port, get, wait_for, workers_of, write_app

ROOT = Path(__file__).resolve().parents[2]
APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def hotswap(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    inherited = {k: v for k, v in os.environ.items() if k != "HOTSWAP_CMD_ARGS"}
    full_env = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "hotswap", "start", *args], cwd=tmp,
                          env=full_env, capture_output=True, text=True, timeout=30)


def printed(tmp: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    done = hotswap(tmp, "--print-config", *args, env=env)
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout)


def test_command_line_beats_env_beats_file_beats_defaults(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('workers = 1\nname = "fromfile"\nmax_requests = 7\n'
                                     'backlog = 100\n')
    env = {"HOTSWAP_CMD_ARGS": "--workers 2 --name fromenv --backlog=200 --config a.toml"}
    settings = printed(tmp_path, "--name", "fromcli", env=env)
    assert settings["name"] == "fromcli"  # command line over the variable
    assert settings["workers"] == 2 and settings["backlog"] == 200  # the variable over the file
    assert settings["max_requests"] == 7  # the file over the defaults
    assert settings["threads"] == 1  # a default
    # A --config on the command line wins over the one in the variable.
    (tmp_path / "b.py").write_text('max_requests = 9\nname = "b"\n')
    settings = printed(tmp_path, "--config", "b.py", env=env)
    assert settings["max_requests"] == 9 and settings["name"] == "fromenv"
    assert settings["workers"] == 2


def test_env_args_are_checked_like_flags(tmp_path: Path) -> None:
    for value, reason in [("--workers many", "HOTSWAP_CMD_ARGS: Invalid value for '--workers'"),
                          ("--bogus", "HOTSWAP_CMD_ARGS: No such option '--bogus'"),
                          ("'--name", "HOTSWAP_CMD_ARGS: No closing quotation"),
                          ("myapp:app", "HOTSWAP_CMD_ARGS: options only"),
                          ("--check-config", "HOTSWAP_CMD_ARGS: --check-config and --print-config")]:
        done = hotswap(tmp_path, "--check-config", env={"HOTSWAP_CMD_ARGS": value})
        assert done.returncode == 1, (value, done.stderr)
        assert done.stderr.startswith(f"hotswap: error: {reason}"), done.stderr
        assert done.stderr.count("\n") == 1


def test_a_running_master_applies_the_env_over_its_file_at_start_and_on_hup(
        masters: MasterFactory, tmp_path: Path) -> None:
    write_app(tmp_path, "cfgapp", APP)
    conf = tmp_path / "app.conf.py"
    conf.write_text('workers = 1\nname = "file1"\n')
    port = free_port()
    m = masters("cfgapp:app", "--config", str(conf),
                env={"HOTSWAP_CMD_ARGS": f"--workers 2 --bind 127.0.0.1:{port}"})
    assert titles(workers_of(m.pid)) == ["hotswap: worker [file1]"] * 2  # the env's 2, not 1
    # HUP re-reads the file with the same precedence: its workers = 3 stays under the
    # env's 2; its new name is taken (new workers carry it in their title).
    conf.write_text('workers = 3\nname = "file2"\n')
    old = set(workers_of(m.pid))
    m.signal(signal.SIGHUP)
    wait_for(lambda: not old & set(workers_of(m.pid)) and len(workers_of(m.pid)) == 2,
             what="the reload to replace both workers")
    assert titles(workers_of(m.pid)) == ["hotswap: worker [file2]"] * 2
    assert get(f"http://127.0.0.1:{port}/").text == "ok"


def titles(pids: list[int]) -> list[str]:
    return [Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode() for pid in pids]


def test_check_config_exit_codes_and_it_binds_nothing(tmp_path: Path) -> None:
    port = free_port()
    sock = tmp_path / "http.sock"
    pidfile = tmp_path / "hotswap.pid"
    marker = tmp_path / "hook-ran"
    # The app binds the very port itself while being imported: had --check-config bound
    # it first, the import would fail and the check would exit 1.
    write_app(tmp_path, "checkapp", APP + f'''
import socket
_probe = socket.socket()
_probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
_probe.bind(("127.0.0.1", {port}))
_probe.close()
''')
    (tmp_path / "good.conf.py").write_text(
        f'bind = ["127.0.0.1:{port}", "unix:{sock}"]\npidfile = "{pidfile}"\n'
        f'def on_starting(server):\n    open("{marker}", "w").close()\n')
    done = hotswap(tmp_path, "--check-config", "--config", "good.conf.py", "checkapp:app")
    assert done.returncode == 0, done.stderr
    assert "configuration ok" in done.stderr
    assert not sock.exists() and not pidfile.exists() and not marker.exists()
    with socket.socket() as probe:  # nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0

    (tmp_path / "bad.toml").write_text("wokers = 2\n")
    done = hotswap(tmp_path, "--check-config", "--config", "bad.toml", "checkapp:app")
    assert done.returncode == 1
    assert done.stderr == f"hotswap: error: config file {tmp_path / 'bad.toml'}: unknown key 'wokers'\n"

    done = hotswap(tmp_path, "--check-config", "no_such_module:app")
    assert done.returncode == 1
    assert done.stderr == "hotswap: error: cannot import APP module 'no_such_module': no such module\n"

    write_app(tmp_path, "brokenapp", "raise RuntimeError('half deployed')\n")
    done = hotswap(tmp_path, "--check-config", "brokenapp:app")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("hotswap: error: cannot import APP module 'brokenapp': "
                                  "RuntimeError: half deployed")


def test_print_config_is_toml_that_round_trips(tmp_path: Path) -> None:
    args = ["--bind", "127.0.0.1:9001", "--bind", "unix:/tmp/x y.sock", "--workers", "3",
            "--umask", "027", "--user", "nobody", "--forwarded-allow-ips", "10.0.0.1, 10.0.0.2",
            "--name", 'quote"and\\backslash', "--timeout", "12.5", "--preload", "--keepalive", "0",
            "myapp:app"]
    first = hotswap(tmp_path, "--print-config", *args)
    assert first.returncode == 0, first.stderr
    settings = tomllib.loads(first.stdout)
    assert settings["umask"] == 0o27 and settings["bind"] == ["127.0.0.1:9001", "unix:/tmp/x y.sock"]
    assert settings["name"] == 'quote"and\\backslash' and settings["preload"] is True
    assert settings["forwarded_allow_ips"] == ["10.0.0.1", "10.0.0.2"]
    assert all(" = " in line or line.startswith("# ") for line in first.stdout.splitlines())
    (tmp_path / "printed.toml").write_text(first.stdout)
    again = hotswap(tmp_path, "--print-config", "--config", "printed.toml")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout

