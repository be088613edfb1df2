"""The client's address behind reverse proxies: X-Forwarded-For believed only as far as our proxies wrote it."""

from ipaddress import ip_address, ip_network

import pytest

from api.forwarded import client_address, parse_address

PROXIES = (ip_network("10.0.0.0/24"), ip_network("::1/128"))
PROXY, OTHER_PROXY, CLIENT = "10.0.0.5", "10.0.0.6", "198.51.100.7"


@pytest.mark.parametrize(
    "peer, forwarded_for, hops, expected",
    [
        (PROXY, CLIENT, 1, CLIENT),
        (PROXY, f"127.0.0.1, {CLIENT}", 1, CLIENT),  # the client wrote the first entry itself
        (CLIENT, "127.0.0.1", 1, CLIENT),  # a direct client: its claim counts for nothing
        (PROXY, "", 1, PROXY),
        (PROXY, f"{CLIENT}, {OTHER_PROXY}", 2, CLIENT),  # two proxies, each vouching for the next
        (PROXY, f"{CLIENT}, 203.0.113.1", 2, "203.0.113.1"),  # the second hop is no proxy of ours: no further
        (PROXY, f"127.0.0.1, {CLIENT}, {OTHER_PROXY}", 2, CLIENT),  # never more than PROXY_COUNT hops
        (PROXY, CLIENT, 0, PROXY),
        (PROXY, "not-an-address", 1, PROXY),
        (PROXY, f"{CLIENT}, {'1' * 65}", 2, PROXY),  # garbage where a proxy's address should be
        (PROXY, f"{CLIENT}:4711", 1, PROXY),  # with a port: not what our proxies write
        ("::1", "::ffff:198.51.100.7", 1, CLIENT),
    ],
)
def test_the_client_address_is_what_the_trusted_proxies_vouch_for(peer, forwarded_for, hops, expected):
    assert client_address(ip_address(peer), forwarded_for, PROXIES, hops) == ip_address(expected)


@pytest.mark.parametrize("text", ["", None, "nginx", "1" * 65, "10.0.0.1:80", "fe80::1%" + "a" * 100, "010.0.0.1"])
def test_anything_but_a_plain_ip_address_is_no_address(text):
    assert parse_address(text) is None


def test_an_ipv4_address_seen_through_an_ipv6_socket_is_given_as_ipv4():
    assert parse_address("::ffff:127.0.0.1") == ip_address("127.0.0.1")
    assert parse_address("::ffff:127.0.0.1").is_loopback
