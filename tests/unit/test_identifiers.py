"""Identifiers are valid only when their pattern matches all of them: a trailing newline, a space or
any other near miss never slips into a site name, a bench argument, a path, a log field or a header."""

import uuid

import pytest

from provisioning.platform.identifiers import (
    APP_NAME,
    EMAIL,
    IDEMPOTENCY_KEY,
    QUEUE_NAME,
    REQUEST_ID,
    SITE_NAME,
    SLUG,
    UUID,
)

AN_ID = str(uuid.UUID(int=0x1234567890ABCDEF1234567890ABCDEF))


def near_misses(valid: str) -> list[str]:
    """What a copy and paste, a template or a hostile client turns a valid value into."""
    return [f"{valid}\n", f"{valid}\r\n", f" {valid}", f"{valid} ", f"{valid}\t", f"\n{valid}", f"{valid}\x00"]


@pytest.mark.parametrize(
    "identifier, valid, invalid",
    [
        (SLUG, ["acme", "a", "acme-2", "a" * 63], ["Acme", "-acme", "acme-", "a" * 64, "ac_me", "acmé", "ac.me"]),
        (
            EMAIL,
            ["ops@acme.example", "o.p+s@acme.co.uk"],
            ["ops@acme", "ops@@acme.example", "o ps@acme.example", "ops@acme.ex\x7fample"],
        ),
        (
            SITE_NAME,
            ["acme.erp.example", "a.b"],
            ["acme", "acme..example", "acme.erp.example.", "Acme.example", "acme.-x.example", f"{'a' * 63}." * 4 + "com"],
        ),
        (
            APP_NAME,
            ["erpnext", "india_compliance", "hrms"],
            ["--force", "../erpnext", "ERPNext", "1app", "erp-next", "apps/erpnext"],
        ),
        (REQUEST_ID, ["portal-7f3a", "a.b:c_d-e", "r" * 128], ["r" * 129, "a/b", "a b", "a\u200bb"]),
        (IDEMPOTENCY_KEY, ["order-1001", "!" * 255], ["x" * 256, "has space", "naïve"]),
        (UUID, [AN_ID, AN_ID.upper()], [AN_ID.replace("-", ""), f"{{{AN_ID}}}", f"urn:uuid:{AN_ID}", AN_ID[:-1]]),
        (
            QUEUE_NAME,
            ["erpmax.provisioning", "erpmax.provisioning.test-1a2b"],
            ["amq.jobs", ".jobs", "two words", "a/b", "q" * 201],
        ),
    ],
    ids=["slug", "email", "site-name", "app-name", "request-id", "idempotency-key", "uuid", "queue-name"],
)
def test_an_identifier_is_valid_only_when_its_pattern_matches_all_of_it(identifier, valid, invalid):
    assert [value for value in valid if not identifier.is_valid(value)] == []
    misses = [*invalid, *(miss for value in valid for miss in near_misses(value)), "", None, b"acme"]
    assert [value for value in misses if identifier.is_valid(value)] == []


def test_a_refusal_quotes_the_value_so_an_invisible_character_shows():
    assert SLUG.problem("slug", "acme\n") == f"slug 'acme\\n' must be {SLUG.rule}"
    assert SLUG.problem("slug", "acme") is None
