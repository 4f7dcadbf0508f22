"""The issue-12 network options in hotswap.config: TLS, PROXY protocol, sockets.

Proven: their defaults (gunicorn's where it has one), the TOML forms a person writes,
refusals with one line naming the option, and relative certificate paths resolved
against the start folder (a worker loads them after --chdir).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hotswap import paths
from hotswap.config import build
from hotswap.errors import StartupError

pytestmark = pytest.mark.timeout(10)


def test_defaults() -> None:
    cfg = build({})
    assert (cfg.certfile, cfg.keyfile, cfg.ca_certs, cfg.cert_reqs, cfg.ciphers) == (
        None, None, None, 0, None)
    assert cfg.proxy_protocol is False and cfg.proxy_allow_from == ["127.0.0.1", "::1"]
    assert cfg.reuse_port is False and cfg.server_header is True


def test_toml_forms(tmp_path: Path) -> None:
    path = tmp_path / "hotswap.toml"
    path.write_text('certfile = "c.pem"\nkeyfile = "k.pem"\nca-certs = "ca.pem"\ncert-reqs = 2\n'
                    'proxy-protocol = true\nproxy-allow-from = "10.0.0.1, 10.1.0.0/16"\n'
                    'reuse_port = true\nserver-header = false\n')
    cfg = build({"config": str(path)})
    assert (cfg.certfile, cfg.cert_reqs, cfg.proxy_allow_from) == (
        "c.pem", 2, ["10.0.0.1", "10.1.0.0/16"])
    assert cfg.proxy_protocol and cfg.reuse_port and not cfg.server_header


@pytest.mark.parametrize(("flags", "message"), [
    ({"cert_reqs": 3}, "cert-reqs must be 0"),
    ({"keyfile": "k.pem"}, "need a certfile"),
    ({"certfile": "c.pem", "cert_reqs": 2}, "needs ca-certs"),
    ({"certfile": " c.pem"}, "certfile must not be empty"),
    ({"certfile": "c.pem", "ciphers": ""}, "ciphers must not be empty"),
    ({"proxy_allow_from": ["10.0.0.300"]}, "proxy-allow-from: '10.0.0.300'"),
])
def test_refusals_name_the_option(flags, message) -> None:
    with pytest.raises(StartupError, match=message):
        build(flags)


def test_certificate_paths_are_relative_to_the_start_folder() -> None:
    cfg = paths.resolve_config(build({"certfile": "tls/c.pem", "keyfile": "tls/k.pem",
                                      "ca_certs": "/etc/ca.pem"}), "/srv/app")
    assert (cfg.certfile, cfg.keyfile, cfg.ca_certs) == (
        "/srv/app/tls/c.pem", "/srv/app/tls/k.pem", "/etc/ca.pem")
