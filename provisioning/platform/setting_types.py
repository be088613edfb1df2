"""The kinds of value settings hold, each checked as it is read: numbers in range, URLs of a
scheme, networks, rate limits. ``settings`` declares its fields with them."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import BeforeValidator, Field
from pydantic_settings import NoDecode

PositiveInt = Annotated[int, Field(ge=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# float() also reads "nan" and "inf": nan passes every comparison, and an infinite period fails
# only later (timedelta(hours=inf) is an OverflowError in every job request): finite numbers only.
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Lowercase = BeforeValidator(lambda value: value.lower() if isinstance(value, str) else value)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def checked_url(url: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not one of {', '.join(schemes)}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"the port in {parts.netloc.rpartition('@')[2]!r} is not a port number") from None
    return url


def _networks(value: Any) -> Any:
    """Addresses and networks (``10.0.0.5``, ``10.0.0.0/24``, ``fd00::/8``), separated by commas or spaces."""
    if not isinstance(value, str):
        return value
    networks = []
    for part in value.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(part))
        except ValueError:
            try:  # an address with a prefix (10.0.0.5/24): say which network was meant
                meant = ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not an address or network (10.0.0.5, 10.0.0.0/24)") from None
            raise ValueError(f"{part!r} has host bits set; the network is {meant}") from None
    return tuple(networks)


def _rate_limit(value: Any) -> Any:
    """A limit as the ``limits`` library writes it: ``20/minute``, ``600 per hour``, ``10/second;1000/day``."""
    if isinstance(value, str):
        try:
            limits = parse_many(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit (20/minute, 600 per hour, 5/second;100/day)") from None
        if any(limit.amount == 0 for limit in limits):
            # It would refuse every request it counts; a limit is lifted by making it large.
            raise ValueError(f"{value!r} allows nothing; to lift a limit, make it large (1000000/minute)")
    return value


HttpURL = Annotated[str | None, BeforeValidator(lambda url: checked_url(url, ("http", "https")) if url else url)]
Networks = Annotated[tuple[Network, ...], NoDecode, BeforeValidator(_networks)]
RateLimit = Annotated[str, BeforeValidator(_rate_limit)]
# Where rate limits count: in the process (memory://) or on a Redis server all web processes share.
LimitStorageURL = Annotated[str, BeforeValidator(lambda url: checked_url(url, ("memory", "redis", "rediss")))]
