"""Where a webhook may be sent: only http(s), and never into our own networks unless allowed.

A webhook is a request our servers make to a URL a customer typed, so a URL naming loopback, a
private or link-local network (a cloud's metadata service is 169.254.169.254), or a reserved or
multicast address would let a customer reach, from inside, what is closed to them outside
(server-side request forgery). Such targets are refused when an endpoint is registered or
changed, as far as the URL itself shows: an address in any form a resolver reads as one (IPv4
shorthand such as ``127.1``, ``2130706433`` or ``0x7f.1`` too, and an IPv6 address carrying an
IPv4 one, mapped, 6to4 or Teredo, judged by that IPv4 address), or ``localhost`` (a trailing dot
too). They are refused again at every send, after DNS resolution, checking every address the name
resolves to, because a public name can resolve to a private address, or come to later. The send
then connects to the address that was checked (``ResolvedTarget``), so a second lookup cannot
answer differently; the lookup is bounded by the attempt's deadline (``timeout``), since
``getaddrinfo`` itself has none we can set. Networks listed in
WEBHOOK_ALLOWED_NETWORKS are allowed although private (a receiver on the platform's own network,
or loopback in the tests). Redirects are never followed (``webhooks.sender``): a redirect is a
new target that was never checked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from provisioning.errors import InvalidRequest

SCHEMES = {"http": 80, "https": 443}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# What inet_aton might read as an IPv4 address (127.1, 2130706433, 0x7f.0.0.1, 0177.1): digits, hex, dots.
IPV4_SHORTHAND = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)


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
    elif _is_localhost(host) and not _allowed(ipaddress.ip_address("127.0.0.1"), allowed):
        raise TargetRefused(f"{origin(url)} is on loopback, where webhooks may not be sent")


def resolve(url: str, allowed: tuple[Network, ...], timeout: float | None = None) -> ResolvedTarget:
    """The URL's target with the first of its addresses, once every address it resolves to was checked.

    Raises ``TargetRefused`` for a refused URL or address, ``OSError`` when the name does not resolve,
    ``TimeoutError`` when it is not resolved within ``timeout`` seconds (None: the resolver's own limits).
    """
    check_url(url, allowed)
    scheme, host, port, path = _parts(url)
    literal = _address(host)
    if literal is not None:
        addresses = [literal]
    else:
        found = _lookup(host, port, timeout)
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))
    for address in addresses:
        _check_address(address, allowed, url)
    return ResolvedTarget(scheme, host, port, path, str(addresses[0]))


def _lookup(host: str, port: int, timeout: float | None) -> list:
    """``getaddrinfo`` within ``timeout``: it runs in a daemon thread of its own, left to finish (the
    resolver's own timeouts end it) when the deadline passes first, so a slow DNS cannot hold a post."""
    if timeout is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    answer: dict[str, object] = {}
    done = threading.Event()

    def look_up() -> None:
        try:
            answer["found"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as error:  # handed to the caller
            answer["error"] = error
        finally:
            done.set()

    threading.Thread(target=look_up, name="webhook-dns", daemon=True).start()
    if not done.wait(max(timeout, 0.0)):
        raise TimeoutError(f"{host} was not resolved within {timeout:.1f} s")
    if "error" in answer:
        raise answer["error"]
    return answer["found"]


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what may be logged of it (its path or query may hold a secret)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


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
    """The address ``host`` names as a resolver reads it, IPv4 shorthand included, or None for a name."""
    host = host.rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not IPV4_SHORTHAND.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _is_localhost(host: str) -> bool:
    host = host.rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def _embedded(address: Address) -> list[Address]:
    """The IPv4 addresses an IPv6 address carries and leads to (mapped, 6to4, both of Teredo's), or itself:
    ``::ffff:127.0.0.1`` and ``2002:7f00:1::`` reach 127.0.0.1, so they are judged as 127.0.0.1."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]
        if address.sixtofour is not None:
            return [address.sixtofour]
        if address.teredo is not None:
            return list(address.teredo)
    return [address]


def _allowed(address: Address, allowed: tuple[Network, ...]) -> bool:
    return any(address.version == network.version and address in network for network in allowed)


def _check_address(given: Address, allowed: tuple[Network, ...], url: str) -> None:
    for address in _embedded(given):
        _check_one(address, allowed, url)


def _check_one(address: Address, allowed: tuple[Network, ...], url: str) -> None:
    if _allowed(address, allowed):
        return
    for kind, flag in (
        ("loopback", address.is_loopback), ("link-local", address.is_link_local), ("private", address.is_private),
        ("multicast", address.is_multicast), ("reserved", address.is_reserved), ("unspecified", address.is_unspecified),
        ("not globally reachable", not address.is_global),
    ):  # fmt: skip
        if flag:
            raise TargetRefused(f"{origin(url)} reaches {address}, a {kind} address, where webhooks may not be sent")
