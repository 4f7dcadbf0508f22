"""gunicorn's request corpus (tests/data/gunicorn-requests), served by a real master.

Every valid request must reach the app with the right method, path, query, headers and
body; every invalid one must be answered 4xx by the server without the app seeing it.
The exceptions are listed in VALID_CHOICES / INVALID_CHOICES, each with its reason; README "HTTP choices" says
the same for users. Cases share one master per set of limits (most use the defaults).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import pytest
from support import MasterFactory, free_port
from test_http import Raw

DATA = Path(__file__).resolve().parent.parent / "data" / "gunicorn-requests"
APP = Path(__file__).resolve().parent.parent / "apps" / "rfcapp.py"
EXPECTED = json.loads((DATA / "expected.json").read_text())

# Cases where hotswap answers differently from gunicorn, on purpose (README, HTTP choices):
# name -> (status hotswap answers, why).
# With --proxy-protocol (these cases' config), a missing or malformed PROXY header closes
# the connection unanswered, as HAProxy does; gunicorn answers 400 (README, Behind a proxy).
PROXY_CLOSED = {"valid": {"pp_03"}, "invalid": {"pp_01", "pp_02", "pp_03"}}
NOT_CHUNKED = (501, "only the chunked transfer coding is implemented (RFC 9112 §6.1: 501)")
IDENTITY = (501, "'identity' is no transfer coding since RFC 7230: 501 like any unknown one")
UNDERSCORE = (200, "gunicorn's header_map=refuse setting; hotswap drops names with '_'")
VALID_CHOICES = {
    "compat_obs_fold": (400, "obs-fold is refused (RFC 9112 §5.2 allows rejecting it)"),
    "compat_obs_fold_huge": (400, "obs-fold is refused (RFC 9112 §5.2 allows rejecting it)"),
    "028": (400, "whitespace before the colon is refused (RFC 9112 §5.1: MUST reject)"),
    "rfc9112_smuggle_gzip_chunked_01": NOT_CHUNKED, "025": NOT_CHUNKED, "025_line": NOT_CHUNKED,
    "029": IDENTITY, "030": IDENTITY, "rfc9112_smuggle_te_identity_chunked_01": IDENTITY,
    "009": (400, "Transfer-Encoding with Content-Length is refused (RFC 9112 §6.3 allows it)"),
    "027": (400, "raw non-ASCII bytes in the target are refused (RFC 9112 §3.2: URIs are ASCII)"),
    "031compat": (200, "methods are case-sensitive (RFC 9110 §9.1): '-blargh' is not folded"),
    "040_compat": (200, "header names with '_' are dropped, never mapped onto '-' names"),
}
INVALID_CHOICES = {
    "003c": (200, "'-bl' is a valid method token (RFC 9110 §9.1): an extension method"),
    "019": (200, "X-Forwarded-Ssl is not read; only X-Forwarded-Proto from trusted peers"),
    "040": UNDERSCORE, "chunked_07": UNDERSCORE,
    "version_02": (505, "HTTP/2.0 in HTTP/1 syntax: 505 (RFC 9110 §15.6.6)"),
}

# Requests the corpus leaves unfinished: the server waits for the rest, and once the
# client closes, nothing reaches the client (valid 099's body is 8599 of 17914 bytes).
UNFINISHED = {"valid": {"099"}, "invalid": {"001", "rfc9112_chunked_missing_final_crlf_01"}}

LIMIT_ARGS = {"limit_request_line": "--limit-request-line",
              "limit_request_fields": "--limit-request-fields",
              "limit_request_field_size": "--limit-request-field-size"}


def decode_http(text: bytes) -> bytes:
    """The corpus' escaping: real newlines are layout only; \\r\\n, \\n, \\t, \\0, \\xHH."""
    data = text.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n").replace(b"\\0", b"\0")
    data = data.replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)


def limits_of(config: dict) -> tuple[str, ...]:
    args: list[str] = []
    for key, flag in LIMIT_ARGS.items():
        value = config.get(key)
        if value:  # 0 means "gunicorn's default" there
            args += [flag, str(value)]
    if config.get("proxy_protocol"):
        args.append("--proxy-protocol")
    return tuple(args)


class Servers:
    """One master per distinct set of limits, started on first use."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.factory = MasterFactory(tmp)
        self.ports: dict[tuple[str, ...], int] = {}

    def port(self, limits: tuple[str, ...]) -> int:
        if limits not in self.ports:
            port = free_port()
            self.factory("rfcapp:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                         "--threads", "2", *limits, cwd=self.tmp, pidfile=False)
            self.ports[limits] = port
        return self.ports[limits]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("gunicorn-corpus")
    shutil.copy(APP, tmp / "rfcapp.py")
    pool = Servers(tmp)
    try:
        yield pool
    finally:
        pool.factory.close()


def environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def target_parts(method: str, uri: str) -> tuple[str, str, str]:
    """(path, query, authority) the way RFC 9112 §3.2 reads each form of target."""
    if method == "CONNECT" or uri == "*":
        return "", "", ""
    if "://" in uri:
        parts = urlsplit(uri)
        return parts.path or "/", parts.query, parts.netloc
    path, _, query = uri.partition("?")
    return path, query.partition("#")[0], ""


def check_served(answer, expected: dict) -> None:
    assert answer.status == 200, answer.wire
    env = json.loads(answer.body)
    path, query, authority = target_parts(expected["method"], expected["uri"])
    assert env["REQUEST_METHOD"] == expected["method"]
    assert env["PATH_INFO"] == unquote_to_bytes(path).decode("latin-1")
    assert env["QUERY_STRING"] == query
    assert env["SERVER_PROTOCOL"] == "HTTP/{}.{}".format(*expected["version"])
    seen: dict[str, list[str]] = {}
    for name, value in expected["headers"]:
        seen.setdefault(environ_key(name), []).append(value)
    for key, values in seen.items():
        if key == "HTTP_HOST" and authority:
            continue  # an absolute-form target's authority replaces Host (RFC 9112 §3.2.2)
        if key == "CONTENT_LENGTH" and any(h[0].upper() == "TRANSFER-ENCODING"
                                           for h in expected["headers"]):
            continue
        assert env.get(key) == ",".join(values), (key, env.get(key), values)
    assert base64.b64decode(env["body_b64"]) == base64.b64decode(expected["body_b64"])


def cases(kind: str) -> list:
    return [pytest.param(name, entry, id=name) for name, entry in EXPECTED[kind].items()]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "entry"), cases("valid"))
def test_valid_request_served(servers: Servers, name: str, entry: dict) -> None:
    data = decode_http((DATA / "valid" / f"{name}.http").read_bytes())
    with Raw(servers.port(limits_of(entry["config"])), timeout=10) as raw:
        raw.send(data)
        if name in PROXY_CLOSED["valid"]:
            assert raw.read_to_eof() == b""
            return
        if name in VALID_CHOICES:
            assert raw.response().status == VALID_CHOICES[name][0]
            return
        if name in UNFINISHED["valid"]:
            raw.sock.shutdown(socket.SHUT_WR)
            assert raw.read_to_eof() == b""
            return
        for expected in entry["requests"]:
            answer = raw.response(head_request=expected["method"] == "HEAD")
            check_served(answer, expected)
            if answer.headers["connection"] == "close":
                break  # RFC 9112 §9.6: nothing after a closing request is processed
        if answer.headers["connection"] == "close":
            assert raw.closed_by_server()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "entry"), cases("invalid"))
def test_invalid_request_refused(servers: Servers, name: str, entry: dict) -> None:
    data = decode_http((DATA / "invalid" / f"{name}.http").read_bytes())
    with Raw(servers.port(limits_of(entry["config"])), timeout=10) as raw:
        raw.send(data)
        if name in UNFINISHED["invalid"]:
            raw.sock.shutdown(socket.SHUT_WR)
            assert raw.read_to_eof() == b""
            return
        if name in PROXY_CLOSED["invalid"]:
            assert raw.read_to_eof() == b""
            return
        answer = raw.response()
        if name in INVALID_CHOICES:
            assert answer.status == INVALID_CHOICES[name][0], answer.wire
            return
        assert 400 <= answer.status < 500, answer.wire
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"  # the server's
        assert raw.closed_by_server()
