"""Creating, adopting and closing listening sockets.

A listening socket may outlive the process that created it (it is handed to
the next generation on upgrade), so this module is careful about two things:
never closing an fd it was only lent (adoption validates without taking
ownership until everything checks out), and never unlinking a unix socket path
that another server has bound since (the path's inode is remembered).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass

from .spec import BindSpec

_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_FRIENDLY_ERRORS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class ListenerError(Exception):
    """A socket that cannot be opened or adopted; str() is one line for operators."""


@dataclass(eq=False)
class Listener:
    """A listening socket plus what it was opened for, so it can be matched and cleaned up."""

    sock: socket.socket
    spec: BindSpec
    unix_identity: tuple[int, int] | None = None

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def address(self) -> str:
        """The address actually bound (real port even for port 0), for logs."""
        try:
            return str(_spec_from_socket(self.sock))
        except OSError:
            return str(self.spec)

    def matches(self, spec: BindSpec) -> bool:
        """Whether this socket already serves `spec`, so an upgrade keeps it instead of rebinding.

        A spec with port 0 asks for a fresh port and so never matches.
        """
        if spec.kind == "fd":
            return self.sock.fileno() == spec.fd
        try:
            mine = _spec_from_socket(self.sock)
        except OSError:
            return False
        if spec.kind == "unix":
            return (
                mine.kind == "unix"
                and bool(mine.path)
                and os.path.abspath(mine.path or "") == os.path.abspath(spec.path or "")
            )
        return self._matches_tcp(mine, spec)

    def _matches_tcp(self, mine: BindSpec, spec: BindSpec) -> bool:
        if mine.kind != "tcp" or not spec.port or mine.port != spec.port:
            return False
        try:
            family, _, _, _, sockaddr = _resolve(spec)
        except OSError:
            return False
        return family == self.sock.family and _same_ip(sockaddr[0], mine.host or "")


def open_listener(spec: BindSpec, backlog: int = 2048, reuse_port: bool = False) -> Listener:
    """Open a non-blocking, non-inheritable listening socket for `spec`.

    `reuse_port` sets SO_REUSEPORT on a TCP socket (other processes of the same user may
    then bind the same port, each with its own accept queue); unix sockets ignore it.
    """
    if spec.kind == "tcp":
        return _open_tcp(spec, backlog, reuse_port)
    if spec.kind == "unix":
        return _open_unix(spec, backlog)
    if spec.kind == "fd" and spec.fd is not None:
        return adopt_fd(spec.fd)
    raise ListenerError(f"cannot bind {spec}: unknown kind of bind {spec.kind!r}")


def adopt_fd(fd: int, claimed: BindSpec | None = None) -> Listener:
    """Take over an inherited listening fd, keeping its number (the old generation shares it).

    Nothing is closed on failure: the fd was lent to us, and whoever lent it decides.
    """
    try:
        mode = os.fstat(fd).st_mode
    except (OSError, OverflowError):
        raise ListenerError(f"fd://{fd} is not an open file descriptor") from None
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"fd {fd} is not a socket (it is {_file_kind(mode)})")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        raise ListenerError(f"fd {fd}: cannot inspect the socket: {_describe(err)}") from err
    try:
        return _adopt_socket(sock, fd, claimed)
    except BaseException:
        sock.detach()  # the socket object must not close the fd when collected
        raise


def close_listener(listener: Listener, unlink: bool) -> None:
    """Close the socket and, if asked, remove its unix path, but only while the path is still ours.

    Another server may have re-bound the same path after us (e.g. the next
    generation after a rollback); its file has another inode and is left alone.
    """
    path = listener.spec.path if listener.spec.kind == "unix" else None
    try:
        if unlink and path and listener.unix_identity is not None:
            _unlink_if_ours(path, listener.unix_identity)
    finally:
        listener.sock.close()


# --- tcp -------------------------------------------------------------------


def _resolve(spec: BindSpec) -> tuple:
    """First getaddrinfo answer, the one we bind to (so matching agrees with opening)."""
    infos = socket.getaddrinfo(
        spec.host, spec.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    return infos[0]


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def _open_tcp(spec: BindSpec, backlog: int, reuse_port: bool = False) -> Listener:
    try:
        family, socktype, proto, _, sockaddr = _resolve(spec)
    except socket.gaierror as err:
        raise ListenerError(
            f"cannot bind {spec}: cannot resolve host {spec.host!r}: {_describe(err)}"
        ) from err
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Without V6ONLY, [::]:80 would also grab 0.0.0.0:80 and clash with an explicit v4 bind.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        why = _describe(err)
        if err.errno == errno.EACCES and spec.port and spec.port < 1024:
            why += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        raise ListenerError(f"cannot bind {spec}: {why}") from err
    return Listener(sock=sock, spec=spec)


# --- unix ------------------------------------------------------------------


def _open_unix(spec: BindSpec, backlog: int) -> Listener:
    path = spec.path or ""
    _check_parent_folder(spec, path)
    _remove_if_stale(spec, path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as err:
        sock.close()
        raise ListenerError(f"cannot bind {spec}: {_describe(err)}") from err
    identity = _identity_of(path)
    try:
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        if identity is not None:
            _unlink_if_ours(path, identity)
        raise ListenerError(f"cannot listen on {spec}: {_describe(err)}") from err
    return Listener(sock=sock, spec=spec, unix_identity=identity)


def _check_parent_folder(spec: BindSpec, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise ListenerError(f"cannot bind {spec}: folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise ListenerError(f"cannot bind {spec}: {folder} is not a folder")


def _remove_if_stale(spec: BindSpec, path: str) -> None:
    """Remove a socket file left by a dead server; refuse anything else that is in the way."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise ListenerError(f"cannot bind {spec}: {_describe(err)}") from err
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"cannot bind {spec}: {path} exists and is not a socket")
    if _someone_listens(spec, path):
        raise ListenerError(f"cannot bind {spec}: address already in use")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise ListenerError(
            f"cannot bind {spec}: cannot remove stale socket {path}: {_describe(err)}"
        ) from err


def _someone_listens(spec: BindSpec, path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a full backlog must not hang the start
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except BlockingIOError:
        return True  # alive, just busy
    except OSError as err:
        if err.errno == errno.EPROTOTYPE:
            return True  # a live socket of another type (e.g. datagram)
        raise ListenerError(
            f"cannot bind {spec}: cannot tell whether {path} is in use: {_describe(err)}"
        ) from err
    finally:
        probe.close()
    return True


def _identity_of(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a socket file, or None if the path is not a socket now."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return (st.st_dev, st.st_ino)


def _unlink_if_ours(path: str, identity: tuple[int, int]) -> None:
    if _identity_of(path) != identity:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise ListenerError(f"cannot remove unix socket {path}: {_describe(err)}") from err


def _unix_name(raw: str | bytes) -> tuple[str, bool]:
    """Socket name as text plus whether it is in Linux's abstract namespace (no file)."""
    text = os.fsdecode(raw)
    if text.startswith("\0"):
        return "@" + text[1:], True
    return text, False


# --- adoption --------------------------------------------------------------


def _adopt_socket(sock: socket.socket, fd: int, claimed: BindSpec | None) -> Listener:
    _check_listening(sock, fd)
    spec = _spec_from_socket(sock)
    identity = None
    if sock.family == socket.AF_UNIX:
        path, abstract = _unix_name(sock.getsockname())
        if path and not abstract:
            identity = _identity_of(path)
    listener = Listener(sock=sock, spec=spec, unix_identity=identity)
    if claimed is not None and not listener.matches(claimed):
        raise ListenerError(f"fd {fd} claims {claimed} but is bound to {listener.address()}")
    sock.setblocking(False)
    os.set_inheritable(fd, False)  # only a re-exec child should get it, and it asks explicitly
    return listener


def _check_listening(sock: socket.socket, fd: int) -> None:
    try:
        socktype = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as err:
        raise ListenerError(f"fd {fd}: cannot inspect the socket: {_describe(err)}") from err
    if sock.family not in (*_INET_FAMILIES, socket.AF_UNIX):
        raise ListenerError(f"fd {fd} is not a TCP or unix socket (family {sock.family!r})")
    if socktype != socket.SOCK_STREAM:
        raise ListenerError(f"fd {fd} is not a stream socket (SO_TYPE {socktype})")
    if not accepting:
        raise ListenerError(f"fd {fd} is not listening")


def _spec_from_socket(sock: socket.socket) -> BindSpec:
    """What the socket is really bound to, expressed as a spec."""
    name = sock.getsockname()
    if sock.family in _INET_FAMILIES:
        return BindSpec(kind="tcp", host=name[0], port=name[1])
    if sock.family == socket.AF_UNIX:
        return BindSpec(kind="unix", path=_unix_name(name)[0])
    raise OSError(errno.EAFNOSUPPORT, f"unsupported socket family {sock.family!r}")


# --- messages --------------------------------------------------------------


def _describe(err: OSError) -> str:
    """One lower-case line for an OSError, without the '[Errno N]' noise."""
    if err.errno in _FRIENDLY_ERRORS and not isinstance(err, socket.gaierror):
        return _FRIENDLY_ERRORS[err.errno]
    text = err.strerror or str(err) or type(err).__name__
    text = " ".join(text.split())
    return text[:1].lower() + text[1:]


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    )
    for test, label in kinds:
        if test(mode):
            return label
    return "something else"
