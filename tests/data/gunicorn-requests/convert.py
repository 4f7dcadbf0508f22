"""Rebuild expected.json from a gunicorn checkout: python3 convert.py GUNICORN_REPO.

gunicorn's expected values are Python files; this evaluates each one with stand-ins for
the few names they use (uri, cfg, Config, error classes) and writes plain data.
Run once by hand; the test reads only the .http files and expected.json.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent


class StubConfig:
    def __init__(self) -> None:
        self.settings: dict[str, object] = {}

    def set(self, name: str, value: object) -> None:
        self.settings[name] = value


def _error_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__getattr__ = lambda attr: type(attr, (Exception,), {})  # type: ignore[attr-defined]
    return module


def _install_stubs() -> None:
    config = types.ModuleType("gunicorn.config")
    config.Config = StubConfig  # type: ignore[attr-defined]
    sys.modules["gunicorn"] = types.ModuleType("gunicorn")
    sys.modules["gunicorn.config"] = config
    sys.modules["gunicorn.http"] = types.ModuleType("gunicorn.http")
    sys.modules["gunicorn.http.errors"] = _error_module("gunicorn.http.errors")


def _load(path: Path) -> dict:
    scope: dict = {"uri": lambda raw: {"raw": raw}, "cfg": StubConfig()}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    return scope


def _bytes(body: bytes | str) -> bytes:
    return body if isinstance(body, bytes) else body.encode("latin-1")


def _request(expected: dict) -> dict:
    return {
        "method": expected["method"],
        "uri": expected["uri"]["raw"],
        "version": list(expected["version"]),
        "headers": [list(h) for h in expected["headers"]],
        "body_b64": base64.b64encode(_bytes(expected["body"])).decode(),
        "trailers": [list(h) for h in expected.get("trailers", [])],
    }


def main(repo: Path) -> None:
    _install_stubs()
    out: dict = {"valid": {}, "invalid": {}}
    for kind in ("valid", "invalid"):
        (HERE / kind).mkdir(exist_ok=True)
        for http in sorted((repo / "tests/requests" / kind).glob("*.http")):
            scope = _load(http.with_suffix(".py"))
            shutil.copy(http, HERE / kind / http.name)
            entry: dict = {"config": scope["cfg"].settings}
            expected = scope["request"]
            if kind == "valid":
                expected = expected if isinstance(expected, list) else [expected]
                entry["requests"] = [_request(e) for e in expected]
            else:
                entry["error"] = expected.__name__
            out[kind][http.stem] = entry
    (HERE / "expected.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
