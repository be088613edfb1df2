"""The client's address behind reverse proxies: ``X-Forwarded-For`` believed only as far as our
own proxies wrote it.

Anyone can send ``X-Forwarded-For``; only the entries our proxies appended are true. Each proxy
appends the address it was connected from, so the chain is read from the right, and only while
the address reached so far is one of ``TRUSTED_PROXIES``: a direct client (not a proxy) is its
own address whatever it claims, and a proxy's claim stops at the first hop that is not a proxy.
werkzeug's ``ProxyFix`` counts hops from the right without asking who connected, and passes any
string on as the address; it is kept for ``X-Forwarded-Proto`` only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from werkzeug.middleware.proxy_fix import ProxyFix

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str | None) -> Address | None:
    """An IP address, or None for anything else (a name, a port, garbage, an IPv6 zone).

    IPv4 addresses seen through an IPv6 socket (``::ffff:10.0.0.5``) are given as IPv4, so they
    match IPv4 networks and loopback checks. A zone (``fe80::1%eth0``) is refused: it is local to
    the machine that wrote it, and can be made arbitrarily long.
    """
    try:
        address = ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return None
        return address.ipv4_mapped or address
    return address


def client_address(peer: Address, forwarded_for: str, proxies: Iterable[Network], hops: int) -> Address:
    """Walk ``X-Forwarded-For`` from the right, at most ``hops`` entries, while the address
    reached so far is a trusted proxy; an entry that is not an IP address ends the walk there."""
    proxies = tuple(proxies)
    chain = forwarded_for.split(",") if forwarded_for else []
    address = peer
    for _ in range(hops):
        if not chain or not any(address in network for network in proxies):
            break
        forwarded = parse_address(chain.pop())
        if forwarded is None:
            break
        address = forwarded
    return address


class TrustedProxies:
    """WSGI middleware: ``REMOTE_ADDR`` becomes the client's address (``client_address``), and,
    on a connection from a trusted proxy, the URL scheme is the ``X-Forwarded-Proto`` it sent.

    ``REMOTE_ADDR`` is always a valid address afterwards, or absent: what the audit trail and the
    ``/metrics`` loopback rule read is never a string a client chose.
    """

    def __init__(self, app, proxies: Iterable[Network], hops: int):
        self.app = app
        self.proxies = tuple(proxies)
        self.hops = hops
        self.forwarded_proto = ProxyFix(app, x_for=0, x_proto=hops)

    def __call__(self, environ, start_response):
        peer = parse_address(environ.get("REMOTE_ADDR"))
        if peer is None:
            environ.pop("REMOTE_ADDR", None)
            return self.app(environ, start_response)
        environ["REMOTE_ADDR"] = str(client_address(peer, environ.get("HTTP_X_FORWARDED_FOR", ""), self.proxies, self.hops))
        if any(peer in network for network in self.proxies):
            return self.forwarded_proto(environ, start_response)
        return self.app(environ, start_response)
