"""open_listener / adopt_fd / close_listener / Listener.matches on real sockets and files."""

import gc
import os
import socket
import stat
import time

import pytest

from listeners import (
    BindSpec,
    Listener,
    ListenerError,
    adopt_fd,
    close_listener,
    open_listener,
    parse_bind,
)

pytestmark = pytest.mark.timeout(30)


def _ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback")


@pytest.fixture
def opened():
    """Listeners a test opens; closed (and unix paths removed) even if the test fails."""
    listeners: list[Listener] = []
    yield listeners
    for listener in listeners:
        if listener.sock.fileno() != -1:
            close_listener(listener, unlink=True)


@pytest.fixture
def raw_sockets():
    """Plain sockets a test creates; closed at teardown."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def _accept_one(listener: Listener, client_address, family: int) -> None:
    """Connect a real client and poll accept() until its connection arrives.

    Connections that arrive already closed are skipped: the liveness probe of
    a refused unix bind leaves one in the backlog.
    """
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(client_address)
        client.sendall(b"ping")
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, "the connection never reached accept()"
            try:
                conn, _ = listener.sock.accept()
            except BlockingIOError:
                time.sleep(0.01)
                continue
            with conn:
                conn.settimeout(5)
                if conn.recv(4) == b"ping":
                    conn.sendall(b"hi")
                    break
        assert client.recv(2) == b"hi"


def _closed_fd_number() -> int:
    """An fd number that is certainly not open right now."""
    probe = socket.socket()
    number = probe.fileno()
    probe.close()
    with pytest.raises(OSError):
        os.fstat(number)
    return number


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


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


def _stream_listener(raw_sockets, family=socket.AF_INET, address=("127.0.0.1", 0)):
    sock = socket.socket(family, socket.SOCK_STREAM)
    raw_sockets.append(sock)
    sock.bind(address)
    sock.listen(8)
    return sock


# --- tcp -------------------------------------------------------------------


def test_open_tcp_v4_on_port_zero(opened):
    listener = open_listener(parse_bind("127.0.0.1:0"))
    opened.append(listener)
    host, port = listener.sock.getsockname()
    assert host == "127.0.0.1" and port > 0
    assert listener.address() == f"127.0.0.1:{port}"
    assert str(listener.spec) == "127.0.0.1:0"
    assert listener.sock.getblocking() is False
    assert os.get_inheritable(listener.fd) is False
    assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    assert listener.unix_identity is None
    _accept_one(listener, ("127.0.0.1", port), socket.AF_INET)


@needs_ipv6
def test_open_tcp_v6_loopback(opened):
    listener = open_listener(parse_bind("[::1]:0"))
    opened.append(listener)
    port = listener.sock.getsockname()[1]
    assert listener.sock.family == socket.AF_INET6
    assert listener.address() == f"[::1]:{port}"
    assert listener.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert listener.sock.getblocking() is False
    _accept_one(listener, ("::1", port), socket.AF_INET6)


def test_port_in_use_is_one_clear_line(opened):
    first = open_listener(parse_bind("127.0.0.1:0"))
    opened.append(first)
    port = first.sock.getsockname()[1]
    with pytest.raises(ListenerError) as caught:
        open_listener(parse_bind(f"127.0.0.1:{port}"))
    assert str(caught.value) == f"cannot bind 127.0.0.1:{port}: address already in use"
    _accept_one(first, ("127.0.0.1", port), socket.AF_INET)


def test_unresolvable_host_is_one_clear_line():
    with pytest.raises(ListenerError) as caught:
        open_listener(parse_bind("no-such-host.invalid:80"))
    message = str(caught.value)
    assert message.startswith("cannot bind no-such-host.invalid:80: cannot resolve host")
    assert "\n" not in message


# --- unix ------------------------------------------------------------------


def test_open_unix_records_identity_and_serves(opened, tmp_path):
    path = tmp_path / "app.sock"
    listener = open_listener(parse_bind(f"unix:{path}"))
    opened.append(listener)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert listener.unix_identity == (st.st_dev, st.st_ino)
    assert listener.address() == f"unix:{path}"
    assert listener.sock.getblocking() is False
    assert os.get_inheritable(listener.fd) is False
    _accept_one(listener, str(path), socket.AF_UNIX)


def test_stale_unix_socket_file_is_replaced(opened, tmp_path):
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays behind, nobody listens: a crashed server's leftover
    listener = open_listener(parse_bind(f"unix:{path}"))
    opened.append(listener)
    assert listener.unix_identity == (os.lstat(path).st_dev, os.lstat(path).st_ino)
    _accept_one(listener, str(path), socket.AF_UNIX)


def test_live_unix_socket_is_refused_and_left_alone(opened, tmp_path):
    path = tmp_path / "live.sock"
    first = open_listener(parse_bind(f"unix:{path}"))
    opened.append(first)
    with pytest.raises(ListenerError) as caught:
        open_listener(parse_bind(f"unix:{path}"))
    assert str(caught.value) == f"cannot bind unix:{path}: address already in use"
    assert first.unix_identity == (os.lstat(path).st_dev, os.lstat(path).st_ino)
    _accept_one(first, str(path), socket.AF_UNIX)


def test_unix_socket_in_missing_folder(tmp_path):
    path = tmp_path / "no" / "such" / "x.sock"
    with pytest.raises(ListenerError) as caught:
        open_listener(parse_bind(f"unix:{path}"))
    assert str(caught.value) == (
        f"cannot bind unix:{path}: folder {tmp_path / 'no' / 'such'} does not exist"
    )


def test_unix_socket_whose_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ListenerError) as caught:
        open_listener(parse_bind(f"unix:{tmp_path / 'file' / 'x.sock'}"))
    assert str(caught.value).endswith(f"{tmp_path / 'file'} is not a folder")


def test_unix_path_that_is_a_regular_file_is_refused(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("do not delete")
    with pytest.raises(ListenerError) as caught:
        open_listener(parse_bind(f"unix:{path}"))
    assert str(caught.value) == f"cannot bind unix:{path}: {path} exists and is not a socket"
    assert path.read_text() == "do not delete"


def test_relative_unix_path(opened, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listener = open_listener(parse_bind("unix:rel.sock"))
    opened.append(listener)
    assert stat.S_ISSOCK(os.lstat(tmp_path / "rel.sock").st_mode)
    assert listener.matches(parse_bind(f"unix:{tmp_path / 'rel.sock'}"))
    assert listener.matches(parse_bind("unix:./rel.sock"))


# --- close_listener --------------------------------------------------------


def test_close_unlinks_own_path(tmp_path):
    path = tmp_path / "mine.sock"
    listener = open_listener(parse_bind(f"unix:{path}"))
    close_listener(listener, unlink=True)
    assert not path.exists()
    assert listener.sock.fileno() == -1


def test_close_without_unlink_keeps_path(tmp_path):
    path = tmp_path / "kept.sock"
    listener = open_listener(parse_bind(f"unix:{path}"))
    close_listener(listener, unlink=False)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert listener.sock.fileno() == -1


def test_close_leaves_a_path_rebound_by_another_server(opened, tmp_path):
    path = tmp_path / "shared.sock"
    first = open_listener(parse_bind(f"unix:{path}"))
    os.unlink(path)
    second = open_listener(parse_bind(f"unix:{path}"))
    opened.append(second)
    assert second.unix_identity != first.unix_identity
    close_listener(first, unlink=True)
    assert first.sock.fileno() == -1
    assert second.unix_identity == (os.lstat(path).st_dev, os.lstat(path).st_ino)
    _accept_one(second, str(path), socket.AF_UNIX)
    close_listener(second, unlink=True)
    assert not path.exists()


def test_close_with_path_already_gone_does_not_raise(tmp_path):
    path = tmp_path / "gone.sock"
    listener = open_listener(parse_bind(f"unix:{path}"))
    os.unlink(path)
    close_listener(listener, unlink=True)
    assert listener.sock.fileno() == -1
    assert not path.exists()


def test_close_tcp_listener(opened):
    listener = open_listener(parse_bind("127.0.0.1:0"))
    port = listener.sock.getsockname()[1]
    close_listener(listener, unlink=True)
    assert listener.sock.fileno() == -1
    with socket.socket() as client, pytest.raises(ConnectionRefusedError):
        client.connect(("127.0.0.1", port))


# --- adopt_fd --------------------------------------------------------------


def test_adopt_keeps_fd_number_and_derives_spec(raw_sockets):
    original = _stream_listener(raw_sockets)
    port = original.getsockname()[1]
    fd = original.detach()
    os.set_inheritable(fd, True)  # as it arrives after an exec
    listener = adopt_fd(fd)
    raw_sockets.append(listener.sock)
    assert listener.fd == fd
    assert listener.spec == BindSpec("tcp", host="127.0.0.1", port=port)
    assert listener.address() == f"127.0.0.1:{port}"
    assert listener.sock.getblocking() is False
    assert os.get_inheritable(fd) is False
    _accept_one(listener, ("127.0.0.1", port), socket.AF_INET)


def test_open_listener_with_fd_spec_adopts(raw_sockets):
    fd = _stream_listener(raw_sockets).detach()
    listener = open_listener(parse_bind(f"fd://{fd}"))
    raw_sockets.append(listener.sock)
    assert listener.fd == fd
    assert listener.spec.kind == "tcp"


def test_adopt_unix_records_identity(raw_sockets, tmp_path):
    path = tmp_path / "adopted.sock"
    fd = _stream_listener(raw_sockets, socket.AF_UNIX, str(path)).detach()
    listener = adopt_fd(fd)
    raw_sockets.append(listener.sock)
    st = os.lstat(path)
    assert listener.spec == BindSpec("unix", path=str(path))
    assert listener.unix_identity == (st.st_dev, st.st_ino)


def test_adopt_abstract_unix_socket(raw_sockets):
    name = f"\0hotswap-test-{os.getpid()}-{time.monotonic_ns()}"
    fd = _stream_listener(raw_sockets, socket.AF_UNIX, name).detach()
    listener = adopt_fd(fd)
    raw_sockets.append(listener.sock)
    assert listener.spec.path == "@" + name[1:]
    assert listener.unix_identity is None


def test_adopt_refuses_a_regular_file(tmp_path):
    with open(tmp_path / "f", "w") as handle:
        fd = handle.fileno()
        message = _error_after_gc(ListenerError, adopt_fd, fd)
        assert message == f"fd {fd} is not a socket (it is a regular file)"
        assert _fd_is_open(fd)


def test_adopt_refuses_a_pipe():
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ListenerError) as caught:
            adopt_fd(read_end)
        assert str(caught.value) == f"fd {read_end} is not a socket (it is a pipe)"
        assert _fd_is_open(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_adopt_refuses_a_non_listening_socket_without_closing_it(raw_sockets):
    sock = socket.socket()
    raw_sockets.append(sock)
    sock.bind(("127.0.0.1", 0))
    message = _error_after_gc(ListenerError, adopt_fd, sock.fileno())
    assert message == f"fd {sock.fileno()} is not listening"
    assert _fd_is_open(sock.fileno())
    assert sock.getsockname()[0] == "127.0.0.1"


def test_adopt_refuses_a_datagram_socket(raw_sockets):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw_sockets.append(sock)
    message = _error_after_gc(ListenerError, adopt_fd, sock.fileno())
    assert message.startswith(f"fd {sock.fileno()} is not a stream socket")
    assert _fd_is_open(sock.fileno())


def test_adopt_refuses_a_closed_fd():
    fd = _closed_fd_number()
    with pytest.raises(ListenerError) as caught:
        adopt_fd(fd)
    assert str(caught.value) == f"fd://{fd} is not an open file descriptor"


def test_adopt_refuses_a_claimed_address_mismatch(raw_sockets):
    sock = _stream_listener(raw_sockets)
    port = sock.getsockname()[1]
    other = 1 if port != 1 else 2
    claimed = parse_bind(f"127.0.0.1:{other}")
    message = _error_after_gc(ListenerError, adopt_fd, sock.fileno(), claimed=claimed)
    assert message == (
        f"fd {sock.fileno()} claims 127.0.0.1:{other} but is bound to 127.0.0.1:{port}"
    )
    assert _fd_is_open(sock.fileno())


def test_adopt_refuses_claimed_unix_path_mismatch(raw_sockets, tmp_path):
    sock = _stream_listener(raw_sockets, socket.AF_UNIX, str(tmp_path / "real.sock"))
    claimed = parse_bind(f"unix:{tmp_path / 'other.sock'}")
    message = _error_after_gc(ListenerError, adopt_fd, sock.fileno(), claimed=claimed)
    real = tmp_path / "real.sock"
    assert message == f"fd {sock.fileno()} claims {claimed} but is bound to unix:{real}"
    assert _fd_is_open(sock.fileno())


def test_adopt_accepts_a_matching_claim(raw_sockets):
    original = _stream_listener(raw_sockets)
    port = original.getsockname()[1]
    fd = original.detach()
    listener = adopt_fd(fd, claimed=parse_bind(f"127.0.0.1:{port}"))
    raw_sockets.append(listener.sock)
    assert listener.fd == fd


# --- matches ---------------------------------------------------------------


def test_matches_tcp(opened):
    listener = open_listener(parse_bind("127.0.0.1:0"))
    opened.append(listener)
    port = listener.sock.getsockname()[1]
    assert listener.matches(parse_bind(f"127.0.0.1:{port}"))
    assert not listener.matches(parse_bind(f"127.0.0.1:{port + 1 if port < 65535 else 1}"))
    assert not listener.matches(parse_bind("127.0.0.1:0"))
    assert not listener.matches(parse_bind(f"0.0.0.0:{port}"))
    assert not listener.matches(parse_bind(f"[::1]:{port}"))
    assert not listener.matches(parse_bind(f"unix:/tmp/{port}.sock"))
    assert listener.matches(parse_bind(f"fd://{listener.fd}"))
    assert not listener.matches(parse_bind(f"fd://{listener.fd + 1}"))


@needs_ipv6
def test_matches_tcp_v6(opened):
    listener = open_listener(parse_bind("[::1]:0"))
    opened.append(listener)
    port = listener.sock.getsockname()[1]
    assert listener.matches(parse_bind(f"[::1]:{port}"))
    assert listener.matches(parse_bind(f"[0:0::1]:{port}"))
    assert not listener.matches(parse_bind(f"127.0.0.1:{port}"))


def test_matches_nothing_once_closed():
    listener = open_listener(parse_bind("127.0.0.1:0"))
    port = listener.sock.getsockname()[1]
    close_listener(listener, unlink=False)
    assert not listener.matches(parse_bind(f"127.0.0.1:{port}"))
    assert listener.address() == "127.0.0.1:0"
