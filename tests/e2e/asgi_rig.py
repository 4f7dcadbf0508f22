"""Helpers of the ASGI tests: the FastAPI test app under hotswap and under uvicorn, and a
small WebSocket client on `websockets`' synchronous API (bounded by timeouts)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO_ROOT, free_port, wait_for

APP_SOURCE = REPO_ROOT / "tests" / "apps" / "fastapp.py"


def shadow_env(folder: Path, package: str) -> dict[str, str]:
    """The environment of a server that cannot import `package` (a shadow of it that fails
    to import comes first on the path): uvloop, to run on asyncio's own loop; websockets,
    to serve without it."""
    shadow = folder / "shadow" / package
    shadow.mkdir(parents=True, exist_ok=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed (test shadow)')\n")
    return {"PYTHONPATH": str(folder / "shadow")}


def loop_env(folder: Path, loop: str) -> dict[str, str]:
    """The environment of a server on `loop`: "uvloop" (installed) or "asyncio"."""
    return shadow_env(folder, "uvloop") if loop == "asyncio" else {}


def install_fastapp(folder: Path, version: str | None = None) -> str:
    """Copy the FastAPI app next to the server; with `version`, an app.py that builds that
    version (rewritten for an upgrade). Returns the APP spec to serve."""
    shutil.copy(APP_SOURCE, folder / "fastapp.py")
    if version is None:
        return "fastapp:app"
    (folder / "app.py").write_text(f"from fastapp import build\napp = build({version!r})\n")
    cache = folder / "__pycache__"
    if cache.exists():
        for pyc in cache.glob("app.*.pyc"):
            pyc.unlink()
    return "app:app"


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Uvicorn:
    """uvicorn serving the same app as a subprocess on a free port (the reference)."""

    def __init__(self, folder: Path, app: str = "fastapp:app") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "uvicorn.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port",
             str(self.port), "--lifespan", "on", "--log-level", "warning"],
            cwd=folder, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is None and port_open(self.port), 20,
                 what="uvicorn to listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def uvicorn_server(tmp_path: Path) -> Iterator[Uvicorn]:
    install_fastapp(tmp_path)
    server = Uvicorn(tmp_path)
    try:
        yield server
    finally:
        server.stop()
