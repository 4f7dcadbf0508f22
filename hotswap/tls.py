"""The server's TLS context, from the stdlib `ssl` module only.

One function turns the TLS options into an `ssl.SSLContext`, or one line saying which
file is wrong and how. Every worker builds its own at boot, so a new generation (an
upgrade) and every HUP read the certificate files anew: a renewed certificate goes live
with `hotswap upgrade` while the old workers finish with the old one. The master builds
one too before it forks anything, only to fail at startup with that line (exit 1; in an
upgrade, the old generation reads it as the reason and goes on serving).

Nothing here depends on the worker's loop, so an asyncio server passes the same context
to `loop.create_server(ssl=...)` or `start_tls`.
"""

from __future__ import annotations

import ssl

from .config import Config
from .errors import StartupError

ALPN = ["http/1.1"]
_VERIFY = {0: ssl.CERT_NONE, 1: ssl.CERT_OPTIONAL, 2: ssl.CERT_REQUIRED}


def server_context(certfile: str, keyfile: str | None = None, ca_certs: str | None = None,
                   cert_reqs: int = 0, ciphers: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context offering HTTP/1.1 by ALPN; StartupError on bad input."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    _load_chain(ctx, certfile, keyfile)
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise StartupError(f"ciphers {ciphers!r}: no cipher matches this list") from None
    if ca_certs:
        try:
            ctx.load_verify_locations(cafile=ca_certs)
        except FileNotFoundError:
            raise StartupError(f"ca-certs {ca_certs} does not exist") from None
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"ca-certs {ca_certs}: {_why(exc)}") from None
    ctx.verify_mode = _VERIFY[cert_reqs]
    return ctx


def context_for(cfg: Config) -> ssl.SSLContext | None:
    """The context `cfg` asks for, or None without --certfile."""
    if cfg.certfile is None:
        return None
    return server_context(cfg.certfile, cfg.keyfile, cfg.ca_certs, cfg.cert_reqs, cfg.ciphers)


def _load_chain(ctx: ssl.SSLContext, certfile: str, keyfile: str | None) -> None:
    for option, path in (("certfile", certfile), ("keyfile", keyfile)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except FileNotFoundError:
                raise StartupError(f"{option} {path} does not exist") from None
            except OSError as exc:
                raise StartupError(f"cannot read {option} {path}: {exc.strerror}") from None
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        names = f"certfile {certfile}" + (f" with keyfile {keyfile}" if keyfile else "")
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise StartupError(f"{names}: the private key does not match the certificate") from None
        raise StartupError(f"{names}: {_why(exc)}") from None
    except OSError as exc:
        raise StartupError(f"certfile {certfile}: {exc.strerror or exc}") from None


def _why(exc: Exception) -> str:
    """OpenSSL's reason in a few words, without its source line."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason.replace("_", " ").lower()
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    text = text.split(" (_ssl.c", 1)[0].removeprefix("[SSL] ")
    if text == "PEM lib":
        return "not a PEM certificate and private key (OpenSSL: PEM lib)"
    return text or "not a valid PEM file"
