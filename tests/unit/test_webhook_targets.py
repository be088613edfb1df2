"""Where webhooks may be sent: the checks of a URL at registration and of its addresses at each send."""

import ipaddress

import pytest

from provisioning.webhooks.targets import TargetRefused, check_url, resolve

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x", "http://127.9.9.9:8080/x", "http://[::1]/x", "http://localhost/x", "http://api.localhost/x",
        "http://10.0.0.1/x", "http://172.16.5.4/x", "http://192.168.1.1/x", "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/x", "http://[fd00::1]/x", "http://[::ffff:10.0.0.1]/x", "http://0.0.0.0/x", "http://224.0.0.1/x",
        "http://240.0.0.1/x", "http://100.64.0.1/x",
    ],
)  # fmt: skip
def test_our_own_networks_are_refused(url):
    with pytest.raises(TargetRefused):
        check_url(url, ())
    with pytest.raises(TargetRefused):
        resolve(url, ())


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "http:///x", "https://user:pw@example.com/x", "http://example.com:99999/"]
)
def test_only_http_urls_with_a_host_are_taken(url):
    with pytest.raises(TargetRefused):
        check_url(url, ())


def test_a_public_address_is_taken_and_connected_to_as_checked():
    target = resolve("https://93.184.215.14:8443/hooks?a=1", ())
    assert (target.address, target.port, target.path) == ("93.184.215.14", 8443, "/hooks?a=1")
    assert target.host_header == "93.184.215.14:8443"
    check_url("https://hooks.example.com/x", ())  # a name is checked once resolved, at each send


def test_allowed_networks_let_loopback_through_and_nothing_else():
    check_url("http://127.0.0.1:8080/x", LOOPBACK)
    check_url("http://localhost:8080/x", LOOPBACK)
    assert resolve("http://127.0.0.1:8080/x", LOOPBACK).address == "127.0.0.1"
    with pytest.raises(TargetRefused):
        check_url("http://10.0.0.1/x", LOOPBACK)
    with pytest.raises(TargetRefused):
        resolve("http://[::1]/x", LOOPBACK)  # an IPv4 network allows no IPv6 address
