"""A throw-away certificate authority for the TLS tests, made with the `openssl` CLI.

Each test folder gets its own CA (EC P-256 keys, valid two days), server certificates for
127.0.0.1 / localhost with the serial a test asks for (a "renewed" certificate is the
same name with another serial), and a client certificate for the client-cert tests.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_EXT = ("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
              "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
              "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
CLIENT_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
              "extendedKeyUsage=clientAuth\nauthorityKeyIdentifier=keyid\n"
              "subjectKeyIdentifier=hash\n")


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _key(path: Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(path)]


@dataclass
class Pair:
    cert: Path
    key: Path


class TestCA:
    """A CA in `folder`: `ca` is the bundle clients verify against."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path) -> None:
        if shutil.which("openssl") is None:
            raise AssertionError("the TLS tests need the openssl CLI (scripts/test-deps.sh)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = folder / "ca.pem"
        self.ca_key = folder / "ca.key"
        _openssl("req", "-x509", *_key(self.ca_key), "-out", str(self.ca), "-days", "2",
                 "-subj", "/CN=hotswap test CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)

    def issue(self, name: str, serial: int, client: bool = False) -> Pair:
        """A certificate (server: for 127.0.0.1 and localhost) signed by this CA."""
        key, csr, cert = (self.folder / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = self.folder / f"{name}.ext"
        ext.write_text(CLIENT_EXT if client else SERVER_EXT)
        _openssl("req", *_key(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=self.folder)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                 "-set_serial", str(serial), "-days", "2", "-out", str(cert),
                 "-extfile", str(ext), cwd=self.folder)
        return Pair(cert, key)
