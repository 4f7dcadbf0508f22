"""`Server: hotswap/VERSION` and SERVER_SOFTWARE, and --no-server-header."""

from __future__ import annotations

import pytest
import requests
from support import free_port, http_raw, write_app

from hotswap import __version__

APP = '''
def app(environ, start_response):
    body = environ["SERVER_SOFTWARE"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flag", [None, "--no-server-header"])
def test_server_header_and_server_software(masters, tmp_path, flag) -> None:
    write_app(tmp_path, "softapp", APP)
    port = free_port()
    masters("softapp:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
            *([flag] if flag else []), cwd=tmp_path)
    response = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert response.text == f"hotswap/{__version__}"  # SERVER_SOFTWARE, whatever the flag
    refused = http_raw(port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # the server's 400
    assert refused.startswith(b"HTTP/1.1 400 ")
    if flag is None:
        assert response.headers["Server"] == f"hotswap/{__version__}"
        assert f"\r\nServer: hotswap/{__version__}\r\n".encode() in refused
    else:
        assert "Server" not in response.headers
        assert b"\r\nServer:" not in refused
