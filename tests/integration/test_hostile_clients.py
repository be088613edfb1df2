"""Hostile HTTP clients against gunicorn as the Procfile runs it: connections that stop half-way,
bodies too large or too deep to parse, requests gunicorn refuses itself, forged X-Forwarded-For.

Whatever a client sends, the API keeps answering others, and answers it in the error shape (or,
for what gunicorn refuses before the app sees it, in short plain text), never with a 500.
"""

from __future__ import annotations

import http.client
import json
import socket
from contextlib import ExitStack

import pytest

from api import MAX_BODY_BYTES
from provisioning.accounts import audit
from provisioning.enums import Role
from tests.stack import WebProcess

JOBS = "/api/v1/provisioning/jobs"
# Each normal request must be answered well before anything on the server side could free what
# the stalled connections hold: gunicorn's --timeout, 30 s, which was when it killed the sync
# workers they held.
ANSWER_DEADLINE = 10
# More stalled connections than the old setup had workers (2), and than the new one has threads
# (WEB_CONCURRENCY 2 x WEB_THREADS 4).
STALLED = 12
# Our own loopback addresses, to tell a reverse proxy on this machine from a direct client.
PROXY_ADDRESS, DIRECT_CLIENT_ADDRESS = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def web(environment, tmp_path_factory):
    process = WebProcess(environment, tmp_path_factory.mktemp("web") / "web.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def proxied_web(environment, tmp_path_factory):
    """The API behind one reverse proxy, which connects from PROXY_ADDRESS."""
    process = WebProcess(environment, tmp_path_factory.mktemp("web") / "web.log", PROXY_COUNT="1", TRUSTED_PROXIES=PROXY_ADDRESS)
    yield process
    process.stop()


def call(web: WebProcess, method: str, path: str, headers=None, body=None, source: str = "127.0.0.1"):
    """One request on a connection of its own from ``source``; the response, its body read.

    A server may answer before it has read the whole body (a 413) and close: sending the rest then
    fails, and the answer already sent is read all the same, as a careful client does."""
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=ANSWER_DEADLINE, source_address=(source, 0))
    try:
        try:
            connection.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = connection.getresponse()
        response.body = response.read()
        return response
    finally:
        connection.close()


def error_body(response, status: int) -> dict:
    """The API's error shape (``tests.helpers.assert_error``, for a raw HTTP response)."""
    assert response.status == status, (response.status, response.body[:300])
    assert response.getheader("Content-Type") == "application/json", response.getheader("Content-Type")
    body = json.loads(response.body)
    assert body["code"] == status and body["status"] and body["message"], body
    return body


def stalled_connection(web: WebProcess, first_bytes: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", web.port))
    connection.sendall(first_bytes)
    return connection


def test_connections_that_stop_half_way_do_not_stop_the_api_answering_others(web, tenant_factory):
    tenant = tenant_factory.create()
    token = tenant.headers(Role.OWNER)["Authorization"]
    half_a_request_line = b"GET /api/v1/provisioning/jo"
    half_a_body = (
        f"POST {JOBS} HTTP/1.1\r\nHost: test\r\nAuthorization: {token}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"job_type": '
    ).encode()
    with ExitStack() as stack:
        for first_bytes in [half_a_request_line] * STALLED + [half_a_body] * STALLED:
            stack.enter_context(stalled_connection(web, first_bytes))
        for _ in range(10):
            response = call(web, "GET", JOBS, headers=tenant.headers(Role.MEMBER))
            assert response.status == 200, response.body[:300]
    assert call(web, "GET", "/healthz").status == 200


def test_a_body_over_the_limit_is_refused_with_413_in_the_error_shape(web, tenant_factory):
    headers = {**tenant_factory.create().headers(Role.OWNER), "Content-Type": "application/json"}
    announced = call(web, "POST", JOBS, headers=headers, body=b" " * (MAX_BODY_BYTES + 1))
    assert f"larger than {MAX_BODY_BYTES} bytes" in error_body(announced, 413)["message"]

    def one_megabyte_in_chunks():
        yield b'{"job_type": "create_site", "padding": "'
        for _ in range(256):
            yield b"x" * 4096
        yield b'"}'

    chunked = call(web, "POST", JOBS, headers=headers, body=one_megabyte_in_chunks())
    error_body(chunked, 413)


def test_a_chunked_body_within_the_limit_is_read_whole(web, tenant_factory):
    headers = {**tenant_factory.create().headers(Role.OWNER), "Content-Type": "application/json"}
    response = call(web, "POST", JOBS, headers=headers, body=iter([b'{"job_type": ', b'"create_site"}']))
    assert response.status == 201, response.body[:300]


@pytest.mark.parametrize(
    "body",
    ["[" * 5000 + "]" * 5000, '{"job_type": ' + "[" * 5000 + "]" * 5000 + "}", '{"job_type": ' + "7" * 5000 + "}"],
    ids=["nested 5,000 deep", "nested in a field", "a 5,000-digit integer"],
)
def test_json_that_cannot_be_parsed_safely_is_a_400_in_the_error_shape(web, tenant_factory, body):
    headers = {**tenant_factory.create().headers(Role.OWNER), "Content-Type": "application/json"}
    error_body(call(web, "POST", JOBS, headers=headers, body=body), 400)


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", 414),
        (b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(101)) + b"\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", 431),
        (b"HELLO\r\n\r\n", 400),
    ],
    ids=["request line over 4,094 bytes", "over 100 header fields", "a header over 8,190 bytes", "not HTTP"],
)
def test_what_gunicorn_refuses_itself_is_answered_in_short_plain_text(web, request_bytes, status):
    with socket.create_connection(("127.0.0.1", web.port), timeout=ANSWER_DEADLINE) as connection:
        connection.sendall(request_bytes)
        answer = b""
        while chunk := connection.recv(65536):  # gunicorn closes the connection after it
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert b"\r\nContent-Type: text/plain\r\n" in head, head
    assert 0 < len(body) < 200 and b"<" not in body, body


def latest_audit_address(sessions, tenant) -> str | None:
    with sessions() as session:
        return audit.entries(session, tenant_id=tenant.id, limit=1)[0].ip


@pytest.mark.parametrize(
    "source, forwarded_for, recorded",
    [
        (PROXY_ADDRESS, "198.51.100.7", "198.51.100.7"),
        (PROXY_ADDRESS, "127.0.0.1, 198.51.100.7", "198.51.100.7"),  # what the client put first is not believed
        (DIRECT_CLIENT_ADDRESS, "198.51.100.7", DIRECT_CLIENT_ADDRESS),  # not a proxy: its own address
        (PROXY_ADDRESS, "not-an-address", PROXY_ADDRESS),
        (PROXY_ADDRESS, "1" * 65, PROXY_ADDRESS),
        (PROXY_ADDRESS, "fe80::1%" + "a" * 100, PROXY_ADDRESS),
        (DIRECT_CLIENT_ADDRESS, "x" * 1000, DIRECT_CLIENT_ADDRESS),
    ],
)
def test_the_audit_trail_records_the_address_only_a_trusted_proxy_vouches_for(
    proxied_web, tenant_factory, sessions, source, forwarded_for, recorded
):
    tenant = tenant_factory.create()
    headers = {**tenant.headers(Role.OWNER), "Content-Type": "application/json", "X-Forwarded-For": forwarded_for}
    response = call(proxied_web, "POST", JOBS, headers=headers, body=b'{"job_type": "create_site"}', source=source)
    assert response.status == 201, response.body[:300]
    assert latest_audit_address(sessions, tenant) == recorded


@pytest.mark.parametrize(
    "source, forwarded_for, status",
    [
        (PROXY_ADDRESS, "203.0.113.9", 403),  # a remote client behind the local proxy
        (PROXY_ADDRESS, "not-an-address", 200),  # the proxy's own address: loopback
        (PROXY_ADDRESS, "1" * 65, 200),
        (DIRECT_CLIENT_ADDRESS, "203.0.113.9", 200),  # a direct client is its own (loopback) address
    ],
)
def test_metrics_judge_loopback_by_the_trusted_address_and_never_fail_on_a_forged_one(proxied_web, source, forwarded_for, status):
    response = call(proxied_web, "GET", "/metrics", headers={"X-Forwarded-For": forwarded_for}, source=source)
    assert response.status == status, response.body[:300]
