"""The access-log format compiler and the statsd address parser, without processes: the
documented equivalent of the default line renders the same bytes, format mistakes are
one-line errors, client-sent quotes cannot break a quoted field."""

from __future__ import annotations

import json

import pytest

from hotswap.accesslog import DEFAULT_FORMAT, FormatError, compile_format, default_line, parse
from hotswap.errors import StartupError
from hotswap.statsd import parse_host_port

ENVIRON = {"REQUEST_METHOD": "GET", "RAW_URI": "/a?b=c", "SERVER_PROTOCOL": "HTTP/1.1",
           "REMOTE_ADDR": "10.0.0.7", "HTTP_USER_AGENT": "curl/8", "PATH_INFO": "/a",
           "QUERY_STRING": "b=c"}


def test_default_format_renders_exactly_the_default_line() -> None:
    render = compile_format(DEFAULT_FORMAT)
    for size in (512, None):
        assert render(ENVIRON, "200 OK", size, 0.0123) == default_line(ENVIRON, "200 OK", size, 0.0123)
    line = default_line(ENVIRON, "200 OK", None, 0.0123)
    assert line.startswith("10.0.0.7 - - [")
    assert line.endswith('] "GET /a?b=c HTTP/1.1" 200 - "-" "curl/8" 12300')


@pytest.mark.parametrize("fmt, message", [
    ("%(zz)s", "unknown atom %(zz)s"),
    ("%(h)d", "only %(...)s conversions"),
    ("100% %(h)s", "a lone '%'"),
    ("no atoms at all", "no atom"),
    ("%({x}z)s", "unknown atom"),
])
def test_format_mistakes_are_one_line_errors(fmt: str, message: str) -> None:
    with pytest.raises(FormatError) as caught:
        compile_format(fmt)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_percent_signs_widths_and_escapes() -> None:
    template, atoms = parse("%(s)s 100%% %(h)-12s|")
    assert (template, atoms) == ("%s 100%% %-12s|", ["s", "h"])
    environ = {**ENVIRON, "HTTP_USER_AGENT": 'evil" injected \\', "HTTP_REFERER": "x"}
    line = compile_format('"%(a)s" %(s)s 100%%')(environ, "404 Not Found", 0, 0.5)
    assert line == '"evil\\" injected \\\\" 404 100%'


def test_json_keeps_types_and_escapes_through_json() -> None:
    environ = {**ENVIRON, "HTTP_USER_AGENT": 'a "b"', "HTTP_X_ID": "7"}
    line = compile_format("%(a)s %(s)s %(b)s %(B)s %({x-id}i)s %({nope}o)s", as_json=True)(
        environ, "204 No Content", None, 0.001, [("X-Out", "1")])
    assert json.loads(line) == {"user_agent": 'a "b"', "status": 204, "size": None, "bytes": 0,
                                "request_headers": {"x-id": "7"}, "response_headers": {"nope": None}}


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9125", ("127.0.0.1", 9125)), ("[::1]:9125", ("::1", 9125)),
    ("stats.internal", ("stats.internal", 8125)),
])
def test_statsd_host_forms(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value) == expected


@pytest.mark.parametrize("value", ["host:0", "host:99999", "host:x", ":8125", "[::1]x"])
def test_statsd_host_mistakes(value: str) -> None:
    with pytest.raises(StartupError, match="statsd-host must be HOST:PORT"):
        parse_host_port(value)
