"""Where webhooks may be sent: the checks of a URL at registration and of its addresses at each send."""

import ipaddress
import socket
import threading

import pytest

from provisioning.webhooks.targets import TargetRefused, check_url, origin, resolve

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


@pytest.mark.parametrize(
    "url",
    [
        "http://127.1/x", "http://2130706433/x", "http://0x7f.1/x", "http://0177.0.0.1/x", "http://10.1/x",
        "http://127.0.0.1./x", "http://localhost./x", "http://api.localhost./x", "http://[2002:7f00:1::]/x",
        "http://[2002:a00:1::1]/x", "http://[2001:0:808:808::80ff:fffe]/x",
    ],
)  # fmt: skip
def test_an_address_in_a_resolvers_other_spellings_is_refused_at_registration(url):
    """IPv4 shorthand, a trailing dot, and IPv6 carrying IPv4 (6to4, Teredo's client 127.0.0.1) are
    read as the address they reach, so they are refused when registered, not only when sent."""
    with pytest.raises(TargetRefused):
        check_url(url, ())


def test_ipv4_shorthand_is_connected_to_as_the_address_it_names():
    assert resolve("http://127.1:8080/x", LOOPBACK).address == "127.0.0.1"
    assert resolve("http://2130706433/x", LOOPBACK).address == "127.0.0.1"
    check_url("http://[2002:7f00:1::]/x", LOOPBACK)  # 6to4 of 127.0.0.1: judged as 127.0.0.1, allowed here
    check_url("http://[2002:5db8:d70e::]/x", ())  # 6to4 of a public address
    check_url("http://deadbeef.example/x", ())  # a name that merely looks hexadecimal is a name


def test_a_lookup_that_outlasts_the_deadline_is_given_up(monkeypatch):
    never = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: never.wait(5) or [])
    with pytest.raises(TimeoutError):
        resolve("https://hooks.example.com/x", (), timeout=0.2)
    never.set()


def test_only_the_origin_of_a_url_is_shown_in_the_log():
    assert origin("https://hooks.example.com/t0ps3cret?key=abc") == "https://hooks.example.com"
    assert origin("http://hooks.example.com:8080/t0ps3cret") == "http://hooks.example.com:8080"
