"""Where a webhook may be sent: only http(s), and never into our own networks unless allowed.

A webhook is a request our servers make to a URL a customer typed, so a URL naming loopback, a
private or link-local network (a cloud's metadata service is 169.254.169.254), or a reserved or
multicast address would let a customer reach, from inside, what is closed to them outside
(server-side request forgery). Such targets are refused when an endpoint is registered or
changed, as far as the URL itself shows (an address, or ``localhost``); and again at every send,
after DNS resolution, checking every address the name resolves to, because a public name can
resolve to a private address, or come to later. The send then connects to the address that was
checked (``ResolvedTarget``), so a second lookup cannot answer differently. Networks listed in
WEBHOOK_ALLOWED_NETWORKS are allowed although private (a receiver on the platform's own network,
or loopback in the tests). Redirects are never followed (``webhooks.sender``): a redirect is a
new target that was never checked.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from provisioning.errors import InvalidRequest

SCHEMES = {"http": 80, "https": 443}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TargetRefused(InvalidRequest):
    """The URL is not one a webhook may be sent to; the message says why."""


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL's parts and the checked address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == SCHEMES[self.scheme] else f"{host}:{self.port}"


def check_url(url: str, allowed: tuple[Network, ...]) -> None:
    """Refuse (``TargetRefused``) a URL that is not http(s) with a host, or whose host is an address,
    or ``localhost``, that a webhook may not reach. A name is not resolved here: it is at each send."""
    host = _parts(url)[1]
    literal = _address(host)
    if literal is not None:
        _check_address(literal, allowed, url)
    elif (host == "localhost" or host.endswith(".localhost")) and not _allowed(ipaddress.ip_address("127.0.0.1"), allowed):
        raise TargetRefused(f"{url} is on loopback, where webhooks may not be sent")


def resolve(url: str, allowed: tuple[Network, ...]) -> ResolvedTarget:
    """The URL's target with the first of its addresses, once every address it resolves to was checked.

    Raises ``TargetRefused`` for a refused URL or address, ``OSError`` when the name does not resolve.
    """
    check_url(url, allowed)
    scheme, host, port, path = _parts(url)
    literal = _address(host)
    if literal is not None:
        addresses = [literal]
    else:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))
    for address in addresses:
        _check_address(address, allowed, url)
    return ResolvedTarget(scheme, host, port, path, str(addresses[0]))


def _parts(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise TargetRefused(f"{url} is not a URL: {error}") from None
    if parts.scheme not in SCHEMES:
        raise TargetRefused(f"{url} is not an http or https URL")
    if not parts.hostname:
        raise TargetRefused(f"{url} names no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused(f"{url} carries credentials; put a secret in the path or verify the signature instead")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or SCHEMES[parts.scheme], path


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _allowed(address: Address, allowed: tuple[Network, ...]) -> bool:
    return any(address.version == network.version and address in network for network in allowed)


def _check_address(address: Address, allowed: tuple[Network, ...], url: str) -> None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if _allowed(address, allowed):
        return
    for kind, flag in (
        ("loopback", address.is_loopback), ("link-local", address.is_link_local), ("private", address.is_private),
        ("multicast", address.is_multicast), ("reserved", address.is_reserved), ("unspecified", address.is_unspecified),
        ("not globally reachable", not address.is_global),
    ):  # fmt: skip
        if flag:
            raise TargetRefused(f"{url} reaches {address}, a {kind} address, where webhooks may not be sent")
