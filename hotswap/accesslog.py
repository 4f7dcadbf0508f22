"""Access-log lines: gunicorn's format atoms, compiled once, rendered as text or JSON.

A format such as `%(h)s "%(r)s" %(s)s %({x-request-id}i)s` is parsed once (in the master,
before the workers fork) into a %-template and one small function per atom; a request
then costs one call per atom and one `%`, never a regex. The default line (combined log
format plus the request time in µs) has its own hand-written function, so the common
case pays for no generality at all.

Atoms (gunicorn's list, same meanings):

    h remote address           l '-'                       u user (HTTP Basic auth) or '-'
    t [time] (CLF)             r request line              m method
    U path (no query)          q query string              H protocol
    s status code              B body bytes (0 if none)    b body bytes or '-'
    f Referer                  a User-Agent                p <pid>
    T request seconds (int)    M request ms (int)          D request µs (int)
    L request seconds (decimal)
    {name}i request header     {name}o response header     {name}e WSGI environ variable
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

Headers = Sequence[tuple[str, str]]
Render = Callable[[dict[str, Any], str, "int | None", float, Headers], str]
Getter = Callable[[dict[str, Any], str, "int | None", float, Headers], Any]

# The documented equivalent of the built-in default (which `default_line` renders faster).
DEFAULT_FORMAT = '%(h)s - - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s'
# The fields of a JSON line when no --access-logformat is given: the default line's.
DEFAULT_JSON_FORMAT = "%(h)s %(t)s %(r)s %(s)s %(b)s %(f)s %(a)s %(D)s"

_ATOM = re.compile(r"%(?:\((?P<key>[^)]*)\)(?P<spec>[-#0 +]*\d*)(?P<conv>.)|(?P<pct>%)|(?P<bad>.?))",
                   re.DOTALL)
_BRACED = re.compile(r"\{(?P<name>[^{}]+)\}(?P<kind>[ioe])")


class FormatError(ValueError):
    """An --access-logformat that cannot be compiled; the message says why, in one line."""


# -- the clock: strftime once a second, not once a request ---------------------------------

_clf_cache: tuple[int, str] = (-1, "")


def clf_now() -> str:
    """`30/Nov/2026:07:54:32 +0000`, recomputed only when the second changes.

    Threads may race on the cache; the worst case is computing the same string twice."""
    global _clf_cache
    now = int(time.time())
    second, text = _clf_cache
    if second != now:
        text = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
        _clf_cache = (now, text)
    return text


def default_line(environ: dict[str, Any], status: str, size: int | None, duration: float,
                 headers: Headers = ()) -> str:
    """hotswap's own line: combined log format, then the request time in µs."""
    get = environ.get
    return (f'{get("REMOTE_ADDR") or "-"} - - [{clf_now()}] '
            f'"{environ["REQUEST_METHOD"]} {environ["RAW_URI"]} {environ["SERVER_PROTOCOL"]}" '
            f'{status[:3]} {"-" if size is None else size} '
            f'"{get("HTTP_REFERER", "-")}" "{get("HTTP_USER_AGENT", "-")}" {int(duration * 1_000_000)}')


# -- atoms -----------------------------------------------------------------------------------
# Each atom has a text getter (a str, "-" when absent) and a JSON key and getter (typed,
# None when absent). Values a client controls are escaped in text lines like Apache does
# (backslash before `"` and `\`), so a quoted field cannot be broken out of.


def _escape(value: str) -> str:
    if '"' in value or "\\" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"')
    return value


def _user(environ: dict[str, Any]) -> str | None:
    """The user name of HTTP Basic auth, as gunicorn's `u` reports it."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None
    user, sep, _ = decoded.partition(":")
    return user if sep else None


def _request_line(e: dict[str, Any]) -> str:
    return f"{e['REQUEST_METHOD']} {e['RAW_URI']} {e['SERVER_PROTOCOL']}"


def _iso_now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


# name -> (JSON key, text getter, JSON getter); getters take (environ, status, size, duration, headers)
_ATOMS: dict[str, tuple[str, Getter, Getter]] = {
    "h": ("remote_addr", lambda e, s, n, d, o: e.get("REMOTE_ADDR") or "-",
          lambda e, s, n, d, o: e.get("REMOTE_ADDR") or None),
    "l": ("ident", lambda e, s, n, d, o: "-", lambda e, s, n, d, o: None),
    "u": ("user", lambda e, s, n, d, o: _escape(_user(e) or "-"), lambda e, s, n, d, o: _user(e)),
    "t": ("time", lambda e, s, n, d, o: f"[{clf_now()}]", lambda e, s, n, d, o: _iso_now()),
    "r": ("request", lambda e, s, n, d, o: _escape(_request_line(e)),
          lambda e, s, n, d, o: _request_line(e)),
    "m": ("method", lambda e, s, n, d, o: e["REQUEST_METHOD"], lambda e, s, n, d, o: e["REQUEST_METHOD"]),
    "U": ("path", lambda e, s, n, d, o: _escape(e.get("PATH_INFO", "")),
          lambda e, s, n, d, o: e.get("PATH_INFO", "")),
    "q": ("query", lambda e, s, n, d, o: _escape(e.get("QUERY_STRING", "")),
          lambda e, s, n, d, o: e.get("QUERY_STRING", "")),
    "H": ("protocol", lambda e, s, n, d, o: e["SERVER_PROTOCOL"], lambda e, s, n, d, o: e["SERVER_PROTOCOL"]),
    "s": ("status", lambda e, s, n, d, o: s[:3], lambda e, s, n, d, o: int(s[:3])),
    "B": ("bytes", lambda e, s, n, d, o: str(n or 0), lambda e, s, n, d, o: n or 0),
    "b": ("size", lambda e, s, n, d, o: "-" if n is None else str(n), lambda e, s, n, d, o: n),
    "f": ("referer", lambda e, s, n, d, o: _escape(e.get("HTTP_REFERER", "-")),
          lambda e, s, n, d, o: e.get("HTTP_REFERER")),
    "a": ("user_agent", lambda e, s, n, d, o: _escape(e.get("HTTP_USER_AGENT", "-")),
          lambda e, s, n, d, o: e.get("HTTP_USER_AGENT")),
    "T": ("duration_s", lambda e, s, n, d, o: str(int(d)), lambda e, s, n, d, o: int(d)),
    "M": ("duration_ms", lambda e, s, n, d, o: str(int(d * 1000)), lambda e, s, n, d, o: int(d * 1000)),
    "D": ("duration_us", lambda e, s, n, d, o: str(int(d * 1_000_000)),
          lambda e, s, n, d, o: int(d * 1_000_000)),
    "L": ("duration", lambda e, s, n, d, o: f"{d:.6f}", lambda e, s, n, d, o: round(d, 6)),
    "p": ("pid", lambda e, s, n, d, o: f"<{os.getpid()}>", lambda e, s, n, d, o: os.getpid()),
}
ATOM_NAMES = tuple(_ATOMS)
JSON_GROUPS = {"i": "request_headers", "o": "response_headers", "e": "environ"}


def _header_key(name: str) -> str:
    """The environ key of request header `name` (Content-Type and -Length have no HTTP_)."""
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def _braced(name: str, kind: str) -> Getter:
    """The raw value (None when absent) of a {name}i, {name}o or {name}e atom."""
    if kind == "i":
        key = _header_key(name)
        return lambda e, s, n, d, o: e.get(key)
    if kind == "o":
        lowered = name.lower()

        def response_header(e: dict[str, Any], s: str, n: int | None, d: float, o: Headers) -> str | None:
            for field, value in o:
                if field.lower() == lowered:
                    return value
            return None
        return response_header
    # gunicorn matches environ names without regard to case; the exact name is the fast path
    lowered = name.lower()

    def environ_value(e: dict[str, Any], s: str, n: int | None, d: float, o: Headers) -> Any:
        value = e.get(name)
        if value is None:
            value = next((v for k, v in e.items() if k.lower() == lowered), None)
        return value
    return environ_value


def _as_text(raw: Getter) -> Getter:
    def text(e: dict[str, Any], s: str, n: int | None, d: float, o: Headers) -> str:
        value = raw(e, s, n, d, o)
        return "-" if value is None else _escape(str(value))
    return text


def _as_json(raw: Getter) -> Getter:
    def value(e: dict[str, Any], s: str, n: int | None, d: float, o: Headers) -> Any:
        found = raw(e, s, n, d, o)
        return found if found is None or isinstance(found, str | int | float | bool) else str(found)
    return value


def parse(fmt: str) -> tuple[str, list[str]]:
    """(a %-template with one `%s`-like slot per atom, the atoms in order); FormatError if bad."""
    template: list[str] = []
    atoms: list[str] = []
    pos = 0
    for match in _ATOM.finditer(fmt):
        template.append(fmt[pos:match.start()].replace("%", "%%"))
        pos = match.end()
        if match.group("pct"):
            template.append("%%")
            continue
        if match.group("bad") is not None:
            raise FormatError(f"a lone '%' at position {match.start()}: write %% for a percent sign "
                              "and %(X)s for an atom")
        key, conv = match.group("key"), match.group("conv")
        if conv != "s":
            raise FormatError(f"%({key}){match.group('spec')}{conv}: only %(...)s conversions are "
                              "supported (every atom is text)")
        if key not in _ATOMS and not _BRACED.fullmatch(key):
            raise FormatError(f"unknown atom %({key})s; atoms are {', '.join(ATOM_NAMES)}, "
                              "{header}i, {header}o and {variable}e")
        template.append(f"%{match.group('spec')}s")
        atoms.append(key)
    template.append(fmt[pos:].replace("%", "%%"))
    if not atoms:
        raise FormatError("the format has no atom such as %(h)s or %(r)s")
    return "".join(template), atoms


def _text_getter(atom: str) -> Getter:
    if atom in _ATOMS:
        return _ATOMS[atom][1]
    braced = _BRACED.fullmatch(atom)
    assert braced is not None
    return _as_text(_braced(braced["name"], braced["kind"]))


def compile_text(fmt: str | None) -> Render:
    """A function rendering one text line; the default line when `fmt` is None."""
    if fmt is None:
        return default_line
    template, atoms = parse(fmt)
    getters = tuple(_text_getter(atom) for atom in atoms)

    def render(environ: dict[str, Any], status: str, size: int | None, duration: float,
               headers: Headers = ()) -> str:
        return template % tuple([g(environ, status, size, duration, headers) for g in getters])
    return render


def compile_json(fmt: str | None) -> Render:
    """A function rendering one JSON object per line, one key per atom of `fmt`.

    Plain atoms get readable keys (`remote_addr`, `status`, ...; see README); {name}i,
    {name}o and {name}e atoms go into `request_headers`, `response_headers` and `environ`
    objects under their own names. Absent values are null, numbers are numbers."""
    _, atoms = parse(fmt or DEFAULT_JSON_FORMAT)
    flat: list[tuple[str, Getter]] = []
    grouped: list[tuple[str, str, Getter]] = []
    for atom in dict.fromkeys(atoms):
        if atom in _ATOMS:
            key, _text, value = _ATOMS[atom]
            flat.append((key, value))
        else:
            braced = _BRACED.fullmatch(atom)
            assert braced is not None
            grouped.append((JSON_GROUPS[braced["kind"]], braced["name"],
                            _as_json(_braced(braced["name"], braced["kind"]))))
    dumps = json.JSONEncoder(separators=(",", ":")).encode

    def render(environ: dict[str, Any], status: str, size: int | None, duration: float,
               headers: Headers = ()) -> str:
        obj: dict[str, Any] = {key: g(environ, status, size, duration, headers) for key, g in flat}
        for group, name, g in grouped:
            obj.setdefault(group, {})[name] = g(environ, status, size, duration, headers)
        return dumps(obj)
    return render


def compile_format(fmt: str | None, as_json: bool = False) -> Render:
    """The renderer for --access-logformat / --access-log-json (FormatError if invalid)."""
    return compile_json(fmt) if as_json else compile_text(fmt)
