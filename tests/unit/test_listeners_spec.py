"""parse_bind: the accepted forms and the one-line refusals."""

import pytest

from listeners import BindError, BindSpec, parse_bind


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("127.0.0.1:8000", BindSpec("tcp", host="127.0.0.1", port=8000), "127.0.0.1:8000"),
        ("0.0.0.0:80", BindSpec("tcp", host="0.0.0.0", port=80), "0.0.0.0:80"),
        ("localhost:0", BindSpec("tcp", host="localhost", port=0), "localhost:0"),
        ("example.com:65535", BindSpec("tcp", host="example.com", port=65535),
         "example.com:65535"),
        ("[::1]:8000", BindSpec("tcp", host="::1", port=8000), "[::1]:8000"),
        ("[::]:443", BindSpec("tcp", host="::", port=443), "[::]:443"),
        ("unix:/tmp/x.sock", BindSpec("unix", path="/tmp/x.sock"), "unix:/tmp/x.sock"),
        ("unix:run/app.sock", BindSpec("unix", path="run/app.sock"), "unix:run/app.sock"),
        ("fd://3", BindSpec("fd", fd=3), "fd://3"),
        ("fd://17", BindSpec("fd", fd=17), "fd://17"),
    ],
)
@pytest.mark.timeout(10)
def test_good_forms_parse_and_print_canonically(text, expected, canonical):
    spec = parse_bind(text)
    assert spec == expected
    assert str(spec) == canonical
    assert parse_bind(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "it is empty"),
        ("foo:bar", "port must be a number"),
        ("127.0.0.1", "missing port"),
        ("127.0.0.1:", "missing port"),
        ("8000", "missing host"),
        (":8000", "missing host"),
        ("127.0.0.1:65536", "out of range"),
        ("127.0.0.1:-1", "port must be a number"),
        ("127.0.0.1:+80", "port must be a number"),
        ("::1:8000", "must be written in brackets"),
        ("[::1]", "missing port"),
        ("[::1]8000", "expected ':port'"),
        ("[::1:8000", "without a matching ']'"),
        ("::1]:8000", "brackets must enclose"),
        ("[]:8000", "is empty"),
        ("[127.0.0.1]:80", "is not an IPv6 address"),
        ("[[::1]]:80", "unbalanced brackets"),
        ("a b:80", "not a valid host name"),
        ("unix:", "path is empty"),
        ("unix://tmp/x.sock", "not unix://"),
        ("unix:/tmp/a\0b", "NUL byte"),
        ("fd://", "number is missing"),
        ("fd://x", "'x' is not a file descriptor number"),
        ("fd://2", "fd must be 3 or more"),
        ("fd://0", "fd must be 3 or more"),
        ("fd:3", "write fd://N"),
        ("tcp://127.0.0.1:80", "unknown scheme 'tcp://'"),
    ],
)
@pytest.mark.timeout(10)
def test_bad_forms_raise_one_clear_line(text, why):
    with pytest.raises(BindError) as caught:
        parse_bind(text)
    message = str(caught.value)
    assert message.startswith(f"invalid bind {text!r}: ")
    assert why in message
    assert "\n" not in message


@pytest.mark.timeout(10)
def test_bind_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_bind("nope")
