"""X-Forwarded-For / X-Forwarded-Proto, believed only from proxies the operator trusts."""

from __future__ import annotations

import ipaddress
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The `--forwarded-allow-ips` list: addresses or networks, or `*` for any peer.

    A peer on a unix socket is trusted: only a local process (the proxy) can reach it.
    """

    def __init__(self, entries: list[str]) -> None:
        self.any = "*" in entries
        self.networks: list[Network] = []
        for entry in entries:
            if entry == "*" or not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"forwarded-allow-ips: {entry!r} is not an address") from None

    def trusts(self, address: str) -> bool:
        if self.any:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def apply(self, environ: dict[str, Any], peer: tuple[str, int] | None) -> None:
        """Rewrite REMOTE_ADDR and wsgi.url_scheme when a trusted proxy says so.

        The headers are looked for before the peer is judged: parsing its address is most
        of this function's cost, and most requests carry neither header.
        """
        proto = environ.get("HTTP_X_FORWARDED_PROTO")
        chain = environ.get("HTTP_X_FORWARDED_FOR")
        if not proto and not chain:
            return
        if peer is not None and not self.trusts(peer[0]):
            return
        if proto:
            scheme = proto.split(",")[-1].strip().lower()
            if scheme in ("http", "https"):
                environ["wsgi.url_scheme"] = scheme
        if chain:
            hops = [h.strip() for h in chain.split(",") if h.strip()]
            # The right-most address no trusted proxy vouches for is the real client.
            for hop in reversed(hops):
                if not self.trusts(hop):
                    environ["REMOTE_ADDR"] = hop
                    break
            else:
                if hops:
                    environ["REMOTE_ADDR"] = hops[0]
