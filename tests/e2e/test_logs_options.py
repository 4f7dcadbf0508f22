"""The logging options operators bring from gunicorn, on real masters: --access-logformat
(every atom checked against a request whose every value is known), --access-log-json,
--capture-output, --log-config and syslog over UDP; each still honoured after USR1 (and
the format after a live upgrade).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
from pathlib import Path

import pytest
from support import free_port, http_raw, wait_for, write_app
from udpsink import UdpSink

APP = '''\
import sys
import time


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/print":
        print("app-print", environ["QUERY_STRING"])  # no flush: --capture-output must not lose it
        sys.stderr.write("app-stderr %s\\n" % environ["QUERY_STRING"])
    time.sleep(0.02)
    body = b"hello"
    start_response("201 Created", [("Content-Type", "text/plain"), ("X-Out", "out-value"),
                                   ("Content-Length", str(len(body)))])
    return [body]
'''

ATOMS = ["h", "l", "u", "t", "r", "m", "U", "q", "H", "s", "B", "b", "f", "a", "T", "M", "D", "L",
         "p", "{x-in}i", "{x-out}o", "{REMOTE_PORT}e"]
FORMAT = "|".join(f"%({atom})s" for atom in ATOMS)
CLF_TIME = re.compile(r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]")


def _request(port: int, method: str = "GET") -> int:
    """One request with every value the atoms report known; returns the client's port."""
    auth = base64.b64encode(b"alice:secret").decode()
    head = (f"{method} /p/a?b=c HTTP/1.1\r\nHost: example.test\r\nAuthorization: Basic {auth}\r\n"
            f"Referer: http://ref.example/\r\nUser-Agent: agent \"7\"\r\nX-In: in-value\r\n"
            f"Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201 "), answer
    return client_port


def _lines(path: Path, count: int) -> list[str]:
    return wait_for(lambda: path.exists() and len(lines := path.read_text().splitlines()) >= count
                    and lines, what=f"{count} line(s) in {path}")


def _check_atoms(line: str, client_port: int, workers: list[int], method: str = "GET") -> None:
    values = dict(zip(ATOMS, line.split("|"), strict=True))
    assert values["h"] == "127.0.0.1"
    assert values["l"] == "-"
    assert values["u"] == "alice"
    assert CLF_TIME.fullmatch(values["t"]), values["t"]
    assert values["r"] == f"{method} /p/a?b=c HTTP/1.1"
    assert (values["m"], values["U"], values["q"], values["H"]) == (method, "/p/a", "b=c", "HTTP/1.1")
    assert values["s"] == "201"
    if method == "HEAD":  # no body sent: CLF's '-' for b, 0 for B
        assert (values["B"], values["b"]) == ("0", "-")
    else:
        assert (values["B"], values["b"]) == ("5", "5")
    assert values["f"] == "http://ref.example/"
    assert values["a"] == 'agent \\"7\\"'  # a client's quote cannot end the field
    micros = int(values["D"])
    assert micros >= 20_000  # the app sleeps 20 ms
    # each atom is computed from the same float: they agree but for rounding at a boundary
    assert -1 <= micros - int(values["M"]) * 1000 <= 1000
    assert -1 <= micros - int(values["T"]) * 1_000_000 <= 1_000_000
    assert re.fullmatch(r"\d+\.\d{6}", values["L"]) and abs(float(values["L"]) * 1e6 - micros) <= 1
    assert values["p"].startswith("<") and int(values["p"][1:-1]) in workers
    assert values["{x-in}i"] == "in-value"
    assert values["{x-out}o"] == "out-value"
    assert values["{REMOTE_PORT}e"] == str(client_port)


@pytest.mark.timeout(90)
def test_custom_format_every_atom_after_usr1_and_an_upgrade(masters, tmp_path: Path) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    access = tmp_path / "access.log"
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--watch-window", "0",
                "--access-log", str(access), "--access-logformat", FORMAT)
    client_port = _request(port)
    _check_atoms(_lines(access, 1)[0], client_port, m.workers())
    client_port = _request(port, "HEAD")
    _check_atoms(_lines(access, 2)[1], client_port, m.workers(), "HEAD")

    access.rename(tmp_path / "access.log.1")
    m.signal(signal.SIGUSR1)
    wait_for(lambda: "USR1: log files reopened" in m.log(), what="USR1 in the master")
    workers = m.workers()
    wait_for(lambda: all(_opened(w, access) for w in workers), what="the worker to reopen")
    client_port = _request(port)
    _check_atoms(_lines(access, 1)[0], client_port, workers)

    old = m.pid
    m.signal(signal.SIGUSR2)
    wait_for(lambda: m.current_pid() not in (None, old), timeout=30, what="the new master")
    new = m.current_pid()
    m.extra_pids.add(new)
    wait_for(lambda: m.proc.poll() is not None, timeout=30, what="the old master to commit and exit")
    new_workers = wait_for(lambda: m.workers(new), what="the new master's workers")
    client_port = _request(port)
    _check_atoms(_lines(access, 2)[1], client_port, new_workers)


def _opened(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` (the file now at that path) open."""
    try:
        target = path.stat()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                return True
    except OSError:
        return False
    return False


@pytest.mark.timeout(60)
def test_json_access_log_parses_line_by_line(masters, tmp_path: Path) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    default_log, custom_log = tmp_path / "default.jsonl", tmp_path / "custom.jsonl"
    first = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                    "--access-log", str(default_log), "--access-log-json")
    client_port = _request(port)
    _request(port, "HEAD")
    entries = [json.loads(line) for line in _lines(default_log, 2)]
    assert set(entries[0]) == {"remote_addr", "time", "request", "status", "size", "referer",
                               "user_agent", "duration_us"}
    assert entries[0]["remote_addr"] == "127.0.0.1"
    assert entries[0]["request"] == "GET /p/a?b=c HTTP/1.1"
    assert (entries[0]["status"], entries[0]["size"], entries[1]["size"]) == (201, 5, None)
    assert entries[0]["user_agent"] == 'agent "7"'
    assert entries[0]["referer"] == "http://ref.example/"
    assert entries[0]["duration_us"] >= 20_000
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", entries[0]["time"])
    first.stop()

    masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--access-log",
            str(custom_log), "--access-log-json", "--access-logformat",
            '%(m)s "%(U)s" %(u)s %(L)s %(p)s %({x-in}i)s %({x-missing}i)s %({x-out}o)s %({REMOTE_PORT}e)s')
    client_port = _request(port)
    entry = json.loads(_lines(custom_log, 1)[0])
    assert entry == {
        "method": "GET", "path": "/p/a", "user": "alice", "duration": entry["duration"],
        "pid": entry["pid"],
        "request_headers": {"x-in": "in-value", "x-missing": None},
        "response_headers": {"x-out": "out-value"},
        "environ": {"REMOTE_PORT": str(client_port)},
    }
    assert isinstance(entry["duration"], float) and isinstance(entry["pid"], int)


@pytest.mark.timeout(60)
def test_capture_output_puts_app_prints_in_the_error_log_across_usr1(masters, tmp_path: Path) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    err = tmp_path / "err.log"
    # Unbuffered stdio off: a print() without flush must still reach the log.
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--error-log", str(err),
                "--capture-output", ready=False, env={"PYTHONUNBUFFERED": ""})
    wait_for(lambda: err.exists() and "ready:" in err.read_text(), what=f"ready; terminal:\n{m.log()}")
    assert http_raw(port, b"GET /print?one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") \
        .startswith(b"HTTP/1.1 201")
    wait_for(lambda: "app-print one" in err.read_text() and "app-stderr one" in err.read_text(),
             what=f"the app's print in the error log:\n{err.read_text()}")
    assert "app-print" not in m.log()

    err.rename(tmp_path / "err.log.1")
    m.signal(signal.SIGUSR1)
    wait_for(lambda: err.exists() and "USR1: log files reopened" in err.read_text(), what="USR1")
    worker = m.workers()[0]
    wait_for(lambda: os.path.samefile(f"/proc/{worker}/fd/1", err), what="the worker's stdout to move")
    http_raw(port, b"GET /print?two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    wait_for(lambda: "app-print two" in err.read_text() and "app-stderr two" in err.read_text(),
             what=f"the second print in the new error log:\n{err.read_text()}")
    assert "two" not in (tmp_path / "err.log.1").read_text()


LOG_CONFIG_TOML = '''\
version = 1

[formatters.plain]
format = "CFG|%(levelname)s|%(message)s"

[handlers.errors]
class = "logging.FileHandler"
filename = "{errors}"
formatter = "plain"

[handlers.access]
class = "logging.FileHandler"
filename = "{access}"
formatter = "plain"

[loggers."hotswap.error"]
handlers = ["errors"]
level = "INFO"

[loggers."hotswap.access"]
handlers = ["access"]
'''


# gunicorn's --log-config format (fileConfig), accepted for an .ini file
LOG_CONFIG_INI = '''\
[loggers]
keys = root, errors, access

[handlers]
keys = errors, access

[formatters]
keys = plain

[logger_root]
handlers =

[logger_errors]
qualname = hotswap.error
handlers = errors
level = INFO
propagate = 0

[logger_access]
qualname = hotswap.access
handlers = access
propagate = 0

[handler_errors]
class = FileHandler
formatter = plain
args = ("{errors}", "a")

[handler_access]
class = FileHandler
formatter = plain
args = ("{access}", "a")

[formatter_plain]
format = CFG|%(levelname)s|%(message)s
'''


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["toml", "json", "ini"])
def test_log_config_applies_handlers_and_formats(masters, tmp_path: Path, kind: str) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    errors, access = tmp_path / "cfg-error.log", tmp_path / "cfg-access.log"
    text = (LOG_CONFIG_INI if kind == "ini" else LOG_CONFIG_TOML).format(errors=errors, access=access)
    if kind == "json":
        import tomllib

        text = json.dumps(tomllib.loads(text))
    config = tmp_path / f"logging.{kind}"
    config.write_text(text)
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--log-config", str(config),
                ready=False)
    wait_for(lambda: errors.exists() and "CFG|INFO|ready:" in errors.read_text(),
             what=f"the master's lines through the configured handler; terminal:\n{m.log()}")
    assert "ready:" not in m.log()  # the file took hotswap.error over from stderr
    _request(port)
    line = _lines(access, 1)[0]
    assert line.startswith('CFG|INFO|127.0.0.1 - - [') and '"GET /p/a?b=c HTTP/1.1" 201 5' in line

    access.rename(tmp_path / "cfg-access.log.1")  # USR1 applies the file again: new handlers
    m.signal(signal.SIGUSR1)
    wait_for(lambda: "CFG|INFO|USR1: log files reopened" in errors.read_text(), what="USR1")
    worker = m.workers()[0]
    wait_for(lambda: _opened(worker, access), what="the worker to reopen the configured file")
    _request(port)
    assert _lines(access, 1)[0].startswith("CFG|INFO|127.0.0.1 - - [")


@pytest.mark.timeout(60)
def test_syslog_over_udp_with_prefix_and_facility(masters, tmp_path: Path, udp: UdpSink) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--log-syslog",
                "--log-syslog-to", f"udp://127.0.0.1:{udp.port}", "--log-syslog-prefix", "shop",
                "--log-syslog-facility", "local3")
    priority = 19 * 8 + 6  # local3, info
    ready = f"<{priority}>shop[{m.pid}]: [INFO] ready:".encode()
    udp.wait(lambda got: any(d.startswith(ready) for d in got), "the master's ready line")
    _request(port)
    worker = m.workers()[0]
    access = f'<{priority}>shop[{worker}]: [INFO] 127.0.0.1 - - ['.encode()
    udp.wait(lambda got: any(d.startswith(access) and b'"GET /p/a?b=c HTTP/1.1" 201 5' in d
                             for d in got), "the access line from the worker")
    assert "ready:" in m.log()  # syslog is added to the error log, not instead of it

    m.signal(signal.SIGUSR1)  # new syslog handlers, in the master and the worker
    udp.wait(lambda got: any(d.startswith(f"<{priority}>shop[{m.pid}]: [INFO] USR1:".encode())
                             for d in got), "USR1 over syslog")
    before = len(udp.drain())
    _request(port)
    udp.wait(lambda got: any(d.startswith(access) for d in got[before:]), "an access line after USR1")
