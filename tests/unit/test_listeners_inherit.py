"""export_env / adopt_from_env / reconcile, with real child processes."""

import gc
import json
import os
import selectors
import socket
import subprocess
import sys
import time

import pytest

from listeners import (
    ENV_FDS,
    InheritError,
    Listener,
    ListenerError,
    adopt_from_env,
    close_listener,
    export_env,
    open_listener,
    parse_bind,
    reconcile,
)

pytestmark = pytest.mark.timeout(60)

# Adopts from the environment, reports what it got, then serves one real
# connection on its first listener by sending back that listener's address.
CHILD_ADOPT = r"""
import json, os, socket, sys
from listeners import adopt_from_env
leftover = [k for k in ("HOTSWAP_FDS", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
            if k in os.environ]
listeners = adopt_from_env(os.environ)
print(json.dumps({
    "fds": [l.fd for l in listeners],
    "addresses": [l.address() for l in listeners],
    "inheritable": [os.get_inheritable(l.fd) for l in listeners],
    "blocking": [l.sock.getblocking() for l in listeners],
    "leftover": [k for k in leftover if k in os.environ],
}), flush=True)
first = listeners[0].sock
first.settimeout(30)
conn, _ = first.accept()
with conn:
    conn.sendall(listeners[0].address().encode())
"""

# Acts like systemd before exec: moves the given fds to 3, 4, ... and sets
# LISTEN_PID to its own pid, then runs CHILD_ADOPT in the same process.
CHILD_SYSTEMD = r"""
import fcntl, os, sys
sources = [int(a) for a in sys.argv[1:]]
parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in sources]
for fd in sources:
    os.close(fd)
for index, fd in enumerate(parked):
    target = 3 + index
    try:
        os.fstat(target)
    except OSError:
        pass
    else:
        sys.exit(f"fd {target} is already in use in the child")
    os.dup2(fd, target)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(sources))
os.environ["LISTEN_PID"] = str(os.getpid())
""" + CHILD_ADOPT


@pytest.fixture
def spawn(tmp_path):
    """Start child processes that are killed and reaped whatever happens."""
    procs: list[subprocess.Popen] = []

    def start(code: str, *args: str, **kwargs) -> subprocess.Popen:
        stderr = open(tmp_path / f"stderr-{len(procs)}.txt", "w+b")
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE, stderr=stderr, **kwargs,
        )
        proc.stderr_file = stderr
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr_file.close()


@pytest.fixture
def opened():
    listeners: list[Listener] = []
    yield listeners
    for listener in listeners:
        if listener.sock.fileno() != -1:
            close_listener(listener, unlink=True)


def _stderr(proc: subprocess.Popen) -> str:
    proc.stderr_file.seek(0)
    return proc.stderr_file.read().decode(errors="replace")


def _read_report(proc: subprocess.Popen, timeout: float = 20) -> dict:
    """The child's first stdout line, polled with a deadline."""
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no report from child; stderr: {_stderr(proc)}"
            if selector.select(remaining):
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"child exited early; stderr: {_stderr(proc)}"
                buffer += chunk
    return json.loads(buffer.split(b"\n", 1)[0])


def _ask_address(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        data = b""
        while chunk := client.recv(100):
            data += chunk
    return data.decode()


def _finish(proc: subprocess.Popen) -> None:
    assert proc.wait(timeout=20) == 0, _stderr(proc)


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _closed_fd_number() -> int:
    probe = socket.socket()
    number = probe.fileno()
    probe.close()
    return number


def _adoptable_fd() -> tuple[int, int]:
    """A listening TCP fd owned by nobody in Python yet (so adopting it cannot double-close)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    port = sock.getsockname()[1]
    return sock.detach(), port


def _error_after_gc(exc_type, fn, *args, **kwargs) -> str:
    """The message of the error `fn` raises, after dropping the exception and its frames
    and running gc: a socket object `fn` left behind would have closed its fd by then."""
    try:
        fn(*args, **kwargs)
    except exc_type as err:
        message = str(err)
    else:
        pytest.fail(f"{fn.__name__} did not raise {exc_type.__name__}")
    gc.collect()
    assert "\n" not in message
    return message


def _one_line(err: Exception) -> str:
    text = str(err)
    assert text and "\n" not in text
    return text


# --- export_env -----------------------------------------------------------


def test_export_env_lists_fds_without_touching_inheritability(opened):
    opened.extend(open_listener(parse_bind("127.0.0.1:0")) for _ in range(2))
    env = export_env([listener.fd for listener in opened])
    assert env == {ENV_FDS: f"{opened[0].fd},{opened[1].fd}"}
    assert not any(os.get_inheritable(listener.fd) for listener in opened)
    assert export_env([]) == {ENV_FDS: ""}


def test_round_trip_through_a_real_child(opened, spawn, tmp_path):
    opened.append(open_listener(parse_bind("127.0.0.1:0")))
    opened.append(open_listener(parse_bind(f"unix:{tmp_path / 'rt.sock'}")))
    fds = [listener.fd for listener in opened]
    env = {**os.environ, **export_env(fds)}
    proc = spawn(CHILD_ADOPT, env=env, pass_fds=fds)
    report = _read_report(proc)
    assert report["fds"] == fds
    assert report["addresses"] == [opened[0].address(), f"unix:{tmp_path / 'rt.sock'}"]
    assert report["inheritable"] == [False, False]
    assert report["blocking"] == [False, False]
    assert report["leftover"] == []
    port = opened[0].sock.getsockname()[1]
    assert _ask_address(port) == f"127.0.0.1:{port}"
    _finish(proc)


@pytest.mark.parametrize("with_own_var", [False, True])
def test_systemd_listen_fds_for_our_pid(opened, spawn, tmp_path, with_own_var):
    opened.append(open_listener(parse_bind("127.0.0.1:0")))
    opened.append(open_listener(parse_bind(f"unix:{tmp_path / 'sd.sock'}")))
    env = {**os.environ, "LISTEN_FDNAMES": "web:admin"}
    env.pop(ENV_FDS, None)
    if with_own_var:
        env[ENV_FDS] = "3"  # also named by our own variable: adopted once
    fds = [listener.fd for listener in opened]
    proc = spawn(CHILD_SYSTEMD, *map(str, fds), env=env, pass_fds=fds)
    report = _read_report(proc)
    assert report["fds"] == [3, 4]
    assert report["addresses"] == [opened[0].address(), f"unix:{tmp_path / 'sd.sock'}"]
    assert report["leftover"] == []
    port = opened[0].sock.getsockname()[1]
    assert _ask_address(port) == f"127.0.0.1:{port}"
    _finish(proc)


# --- adopt_from_env in this process ----------------------------------------


def test_listen_vars_for_another_pid_are_ignored_and_removed():
    environ = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid() + 1),
               "LISTEN_FDNAMES": "a:b", "OTHER": "kept"}
    assert adopt_from_env(environ) == []
    assert environ == {"OTHER": "kept"}


def test_listen_fds_without_listen_pid_are_ignored_and_removed():
    environ = {"LISTEN_FDS": "1"}
    assert adopt_from_env(environ) == []
    assert environ == {}


def test_zero_listen_fds_for_us_is_nothing():
    environ = {"LISTEN_FDS": "0", "LISTEN_PID": "4242", "LISTEN_FDNAMES": ""}
    assert adopt_from_env(environ, pid=4242) == []
    assert environ == {}


def test_nothing_to_adopt():
    environ = {"PATH": "/bin"}
    assert adopt_from_env(environ) == []
    assert environ == {"PATH": "/bin"}
    assert adopt_from_env({ENV_FDS: ""}) == []


def test_adopt_own_variable_in_process():
    fd, port = _adoptable_fd()
    environ = {ENV_FDS: str(fd)}
    [listener] = adopt_from_env(environ)
    try:
        assert environ == {}
        assert listener.fd == fd
        assert listener.address() == f"127.0.0.1:{port}"
    finally:
        close_listener(listener, unlink=False)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({ENV_FDS: "3,x"}, "HOTSWAP_FDS='3,x': 'x' is not a file descriptor number"),
        ({ENV_FDS: "3,,4"}, "HOTSWAP_FDS='3,,4': '' is not a file descriptor number"),
        ({ENV_FDS: " 3"}, "HOTSWAP_FDS=' 3': ' 3' is not a file descriptor number"),
        ({ENV_FDS: "-4"}, "HOTSWAP_FDS='-4': '-4' is negative, not a file descriptor number"),
        ({ENV_FDS: "1"}, "HOTSWAP_FDS='1': fd 1 is stdin, stdout or stderr, not a listener"),
        ({ENV_FDS: "7,7"}, "HOTSWAP_FDS='7,7': fd 7 is listed twice"),
        ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "LISTEN_PID='abc' is not a process id"),
        ({"LISTEN_PID": "PID", "LISTEN_FDS": "x"},
         "LISTEN_FDS='x' is not a number of file descriptors"),
        ({"LISTEN_PID": "PID", "LISTEN_FDS": "-1"},
         "LISTEN_FDS='-1' is not a number of file descriptors"),
        ({"LISTEN_PID": "PID", "LISTEN_FDS": "99999999999"},
         "LISTEN_FDS='99999999999' is more file descriptors than a process can have open"),
        ({"LISTEN_PID": "PID", "LISTEN_FDS": "0", "LISTEN_FDNAMES": "a:b"},
         "LISTEN_FDNAMES='a:b' names 2 file descriptors but LISTEN_FDS='0' passes 0"),
    ],
)
def test_malformed_values_are_one_line_errors(environ, expected):
    environ = {k: v.replace("PID", str(os.getpid())) if k == "LISTEN_PID" else v
               for k, v in environ.items()}
    environ["OTHER"] = "kept"
    with pytest.raises(InheritError) as caught:
        adopt_from_env(environ)
    assert _one_line(caught.value) == expected
    assert environ == {"OTHER": "kept"}


def test_closed_fd_is_an_error():
    fd = _closed_fd_number()
    with pytest.raises(InheritError) as caught:
        adopt_from_env({ENV_FDS: str(fd)})
    assert _one_line(caught.value) == (
        f"HOTSWAP_FDS='{fd}': fd://{fd} is not an open file descriptor"
    )


def test_regular_file_is_an_error_and_stays_open(tmp_path):
    with open(tmp_path / "f", "w") as handle:
        fd = handle.fileno()
        message = _error_after_gc(InheritError, adopt_from_env, {ENV_FDS: str(fd)})
        assert message == f"HOTSWAP_FDS='{fd}': fd {fd} is not a socket (it is a regular file)"
        assert _fd_is_open(fd)


def test_failure_detaches_what_was_already_adopted():
    good, port = _adoptable_fd()
    bad = socket.socket()  # bound but not listening
    bad.bind(("127.0.0.1", 0))
    value = f"{good},{bad.fileno()}"
    try:
        message = _error_after_gc(InheritError, adopt_from_env, {ENV_FDS: value})
        assert message == f"HOTSWAP_FDS={value!r}: fd {bad.fileno()} is not listening"
        assert _fd_is_open(good) and _fd_is_open(bad.fileno())
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # still listening
    finally:
        bad.close()
        os.close(good)


# --- reconcile --------------------------------------------------------------


def test_reconcile_keeps_matching_opens_new_returns_unwanted(opened, tmp_path):
    kept = open_listener(parse_bind("127.0.0.1:0"))
    extra = open_listener(parse_bind(f"unix:{tmp_path / 'old.sock'}"))
    opened.extend([kept, extra])
    kept_port = kept.sock.getsockname()[1]
    wanted = [parse_bind(f"unix:{tmp_path / 'new.sock'}"), parse_bind(f"127.0.0.1:{kept_port}")]
    serving, unwanted = reconcile([kept, extra], wanted)
    opened.extend(serving)
    assert len(serving) == 2
    assert serving[1] is kept
    assert serving[0].spec == wanted[0] and serving[0] not in (kept, extra)
    assert serving[0].address() == f"unix:{tmp_path / 'new.sock'}"
    assert unwanted == [extra]


def test_reconcile_fd_spec_uses_adopted_or_adopts_fresh(opened):
    adopted = open_listener(parse_bind("127.0.0.1:0"))
    opened.append(adopted)
    fresh_fd, fresh_port = _adoptable_fd()
    wanted = [parse_bind(f"fd://{adopted.fd}"), parse_bind(f"fd://{fresh_fd}")]
    serving, unwanted = reconcile([adopted], wanted)
    opened.extend(serving[1:])
    assert serving[0] is adopted
    assert serving[1].fd == fresh_fd
    assert serving[1].address() == f"127.0.0.1:{fresh_port}"
    assert unwanted == []


def test_reconcile_without_wanted_serves_everything_adopted(opened):
    adopted = [open_listener(parse_bind("127.0.0.1:0")) for _ in range(2)]
    opened.extend(adopted)
    assert reconcile(adopted, []) == (adopted, [])
    assert reconcile([], []) == ([], [])


def test_reconcile_port_zero_always_opens_new(opened):
    adopted = open_listener(parse_bind("127.0.0.1:0"))
    opened.append(adopted)
    serving, unwanted = reconcile([adopted], [parse_bind("127.0.0.1:0")])
    opened.extend(serving)
    assert serving[0] is not adopted
    assert unwanted == [adopted]


def test_reconcile_duplicate_specs_share_one_socket(opened):
    adopted = open_listener(parse_bind("127.0.0.1:0"))
    opened.append(adopted)
    spec = parse_bind(f"127.0.0.1:{adopted.sock.getsockname()[1]}")
    assert reconcile([adopted], [spec, spec]) == ([adopted], [])


def test_reconcile_failure_closes_what_it_opened(opened, tmp_path):
    adopted = open_listener(parse_bind("127.0.0.1:0"))
    opened.append(adopted)
    new_path = tmp_path / "new.sock"
    wanted = [parse_bind(f"unix:{new_path}"), parse_bind(f"unix:{tmp_path / 'no' / 'x.sock'}")]
    with pytest.raises(ListenerError) as caught:
        reconcile([adopted], wanted)
    assert "does not exist" in _one_line(caught.value)
    assert not new_path.exists()
    assert adopted.sock.fileno() != -1
    with socket.create_connection(adopted.sock.getsockname(), timeout=5):
        pass
