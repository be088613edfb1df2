"""The whole OpenAPI document, tried by schemathesis: requests generated from each operation's
parameters and bodies, sent to the app on a PostgreSQL database of this module's own, as a
platform operator who is also a tenant's owner. No answer may be a 5xx, or have a content type
or body the document does not describe for it, and every success must be one the operation
documents (flask-smorest documents a ``default`` error answer on every operation, which alone
would let any status through).

The database is dropped afterwards; the jobs the generated requests ask for go to a queue no
worker reads.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from provisioning.accounts import registry as accounts
from provisioning.enums import Role
from tests.factories import TenantFactory

# Enough for each operation to meet its edge cases without making the run minutes longer.
EXAMPLES_PER_OPERATION = 25


def success_is_documented(ctx, response, case) -> None:
    """A 2xx the operation does not list is a broken promise, whatever the ``default`` says.
    (Flask answers OPTIONS for every URL itself, as HTTP has it: that is no operation's answer.)"""
    documented = case.operation.responses.status_codes
    if response.request.method == "OPTIONS":
        return
    if 200 <= response.status_code < 300 and str(response.status_code) not in documented:
        raise AssertionError(f"{case.operation.label} answered {response.status_code}; it documents {', '.join(documented)}")


CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance, success_is_documented]


@pytest.fixture(scope="module")
def stack_app(request: pytest.FixtureRequest):
    """The app on a database and queue of this module's own, and the headers of its caller."""
    from api import create_app

    stack = request.getfixturevalue("isolated_module")
    with stack.session() as session:
        tenant = TenantFactory(session).create(roles=())
        user = accounts.create_user(session, f"schema-{tenant.tenant.slug}@example.test", is_superuser=True)
        accounts.add_membership(session, user, tenant.tenant, Role.OWNER)
        headers = {"Authorization": f"Bearer {accounts.issue_token(session, user, name='schemathesis')[1]}"}
    app = create_app(stack.settings)
    app.config["TESTING"] = True
    return app, headers


@pytest.fixture(scope="module")
def api_schema(stack_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", stack_app[0])


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_answer_is_one_the_document_describes(case, stack_app):
    case.call_and_validate(headers=stack_app[1], checks=CHECKS)
