"""The API's own documentation, as a client meets it through the deployed server (gunicorn):
every request Swagger UI's "Try it out" builds from ``/openapi.json`` is accepted, and every
answer has the shape the spec documents for it."""

from __future__ import annotations

import uuid

import pytest
import requests
from openapi_schema_validator import OAS30ReadValidator
from openapi_spec_validator import validate as validate_spec
from sqlalchemy import delete

from provisioning.accounts import registry as accounts
from provisioning.enums import JobStatus, TenantStatus
from provisioning.platform.db import utcnow
from provisioning.webhooks.models import DeliveryStatus, EventType, WebhookDelivery, WebhookEndpoint
from provisioning.webhooks.signing import new_message_id
from tests.factories import operator_headers, remove_servers_but_the_default
from tests.integration.test_api_backups import backup_row
from tests.integration.test_api_jobs import finished_job

HTTP_TIMEOUT = 10
METHODS = ("get", "post", "put", "patch", "delete")
# What Swagger UI fills in for a value whose schema gives no example, default or enum.
SAMPLE_BY_TYPE = {"string": "string", "integer": 0, "number": 0, "boolean": True}
UNAUTHENTICATED_PATHS = {"/healthz", "/readyz"}
# The platform's own resources (and any tenant's members and tokens): tried by operators.
OPERATOR_PATHS = ("/api/v1/servers", "/api/v1/users", "/api/v1/tenants", "/api/v1/platform/")
# What acts for the tenant X-Tenant-ID names (or the caller's only one), tried by its owner.
HEADER_TENANT_PATHS = ("/api/v1/provisioning/", "/api/v1/tenants/current", "/api/v1/webhooks")
# The server the operations on /servers/{name} are tried on: the one the docs' example adds.
SERVER_NAME = "bench-eu-1"


@pytest.fixture
def operator(session) -> dict[str, str]:
    """An operator's headers; the servers its requests add are gone afterwards, and the webhook
    endpoints of the test (so no later sweeper of the run's database tries their example URL)."""
    yield operator_headers(session)
    remove_servers_but_the_default(session)
    session.execute(delete(WebhookEndpoint))
    session.commit()


# What the paths of webhook endpoints and deliveries name when none was made (a 404, as documented).
NO_WEBHOOK = {"endpoint_id": uuid.UUID(int=1), "delivery_id": "msg_00000000000000000000000000000001"}


def webhook_ids(web, session, headers: dict, for_operators: bool) -> dict:
    """An endpoint registered through the API (the tenant's, or the platform's) and a delivery of it."""
    prefix = "/api/v1/platform/webhooks" if for_operators else "/api/v1/webhooks"
    body = {"url": "https://hooks.example.com/erpmax", "event_types": ["job.completed"]}
    response = requests.post(web.url + prefix, json=body, headers=headers, timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, response.text
    endpoint_id = uuid.UUID(response.json()["data"]["id"])
    delivery = WebhookDelivery(
        id=new_message_id(), endpoint_id=endpoint_id, event_type=EventType.JOB_COMPLETED, event_key="docs",
        payload={"type": "job.completed", "timestamp": utcnow().isoformat(), "data": {}}, status=DeliveryStatus.DELIVERED,
        attempt_count=1, delivered_at=utcnow(),
    )  # fmt: skip
    session.add(delivery)
    session.commit()
    return {"endpoint_id": endpoint_id, "delivery_id": delivery.id}


def for_operators(path: str) -> bool:
    return path.startswith(OPERATOR_PATHS) and not path.startswith(HEADER_TENANT_PATHS)


def path_ids(session, tenant) -> dict:
    """What the paths name: the test's tenant, its server, and a user and token of nobody's
    tenant (the operations that disable, revoke or remove them find nothing else to break)."""
    bystander = accounts.create_user(session, f"bystander-{uuid.uuid4().hex[:10]}@example.test")
    token = accounts.issue_token(session, bystander)[0]
    return {"tenant": tenant.tenant.slug, "name": SERVER_NAME, "user_id": bystander.id, "token_id": token.id}


@pytest.fixture(scope="module")
def raw_spec(web) -> dict:
    response = requests.get(f"{web.url}/openapi.json", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def spec(raw_spec) -> dict:
    """The spec with every ``$ref`` replaced by what it names, as Swagger UI shows it."""
    return inline(raw_spec, raw_spec)


def inline(spec: dict, node):
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return inline(spec, target)
        return {key: inline(spec, value) for key, value in node.items()}
    if isinstance(node, list):
        return [inline(spec, item) for item in node]
    return node


def operations(spec: dict):
    """``(path, method, operation, parameters)`` for every operation, its path's parameters included."""
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method], [*item.get("parameters", []), *item[method].get("parameters", [])]


def sample(schema: dict):
    """The value Swagger UI makes up for a schema: its example, else its default, else the first of
    its enum, else one built from its properties (the read-only ones left out)."""
    for given in ("example", "default"):
        if given in schema:
            return schema[given]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if kind == "object":
        return {name: sample(field) for name, field in schema.get("properties", {}).items() if not field.get("readOnly")}
    if kind == "array":
        return [sample(schema["items"])]
    return SAMPLE_BY_TYPE[kind]


def offered_bodies(operation: dict) -> list:
    """Each request body the docs offer: every example given, and the one made up from the schema."""
    if "requestBody" not in operation:
        return [None]
    content = operation["requestBody"]["content"]["application/json"]
    offered = [example["value"] for example in content.get("examples", {}).values()]
    if "example" in content:
        offered.append(content["example"])
    return [*offered, sample(content["schema"])]


def prefilled(parameters: list[dict], where: str) -> dict[str, str]:
    """The parameters Try it out fills in by itself: those with an example or a default."""
    values = {}
    for parameter in parameters:
        if parameter["in"] == where:
            value = parameter.get("example", parameter.get("schema", {}).get("default"))
            if value is not None:
                values[parameter["name"]] = str(value)
    return values


def try_it_out(web, path: str, method: str, parameters: list[dict], body, headers: dict, ids: dict) -> requests.Response:
    return requests.request(
        method,
        web.url + path.format(**ids),
        params=prefilled(parameters, "query"),
        headers={**prefilled(parameters, "header"), **headers},
        json=body,
        timeout=HTTP_TIMEOUT,
    )


def assert_answered_as_documented(operation: dict, method: str, path: str, response: requests.Response) -> None:
    """Not refused as invalid (a 409 about the tenant's state is fine), no server error, and a body
    that validates against the schema documented for its status."""
    said = f"{method.upper()} {path} -> {response.status_code} {response.text[:500]}"
    assert response.status_code != 422 and response.status_code < 500, said
    documented = operation["responses"].get(str(response.status_code)) or operation["responses"]["default"]
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    assert schema is not None, f"{said}: no body documented for this status"
    errors = [error.message for error in OAS30ReadValidator(schema).iter_errors(response.json())]
    assert not errors, f"{said}: {errors}"


def test_the_spec_is_valid_openapi_and_documents_the_body_of_every_answer(raw_spec, spec):
    validate_spec(raw_spec)
    for path, method, operation, _ in operations(spec):
        for status, response in operation["responses"].items():
            assert response.get("content", {}).get("application/json", {}).get("schema"), (method, path, status)
    assert spec["components"]["schemas"]["Job"]["properties"]["queued"]["type"] == "boolean"


def test_only_the_health_checks_need_no_token_and_every_tenant_operation_documents_x_tenant_id(raw_spec, spec):
    assert raw_spec["security"] == [{"bearerAuth": []}]
    for path, method, operation, parameters in operations(spec):
        if path in UNAUTHENTICATED_PATHS:
            assert operation.get("security") == [], (method, path)
            continue
        assert "security" not in operation, (method, path)  # the spec-wide bearer token
        tenant_header = ("header", "X-Tenant-ID") in {(p["in"], p["name"]) for p in parameters}
        assert tenant_header == path.startswith(HEADER_TENANT_PATHS), (method, path)


def test_every_request_body_the_docs_offer_is_accepted(web, spec, tenant_factory, session, operator):
    tried = 0
    for path, method, operation, parameters in operations(spec):
        if "requestBody" not in operation:
            continue
        for body in offered_bodies(operation):
            tenant = tenant_factory.create()  # each body on a tenant of its own: no job of another is in its way
            headers = operator if for_operators(path) else tenant.headers()
            response = try_it_out(web, path, method, parameters, body, headers, {**path_ids(session, tenant), **NO_WEBHOOK})
            assert_answered_as_documented(operation, method, f"{path} {body}", response)
            tried += 1
    assert tried >= 4  # the three examples of POST /jobs, and the body made from its schema


def test_every_operation_tried_out_as_the_docs_offer_it_answers_as_documented(web, spec, tenant_factory, session, operator):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    ids = {
        "job_id": finished_job(session, tenant, JobStatus.FAILED).id,
        "backup_id": backup_row(session, tenant, utcnow()).id,
        **path_ids(session, tenant),
    }
    webhooks = {kind: webhook_ids(web, session, headers, kind) for kind, headers in ((False, tenant.headers()), (True, operator))}
    for path, method, operation, parameters in operations(spec):
        for body in offered_bodies(operation):
            headers = operator if for_operators(path) else tenant.headers()
            response = try_it_out(web, path, method, parameters, body, headers, {**ids, **webhooks[for_operators(path)]})
            assert_answered_as_documented(operation, method, path, response)


def test_every_query_argument_left_empty_means_not_given(web, spec, tenant_factory, session, operator):
    """``?status=&job_type=`` is what a client sends when it fills the README's blanks with nothing."""
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    finished_job(session, tenant, JobStatus.COMPLETED)
    backup_row(session, tenant, utcnow())
    webhooks = {kind: webhook_ids(web, session, headers, kind) for kind, headers in ((False, tenant.headers()), (True, operator))}
    listed = 0
    for path, method, operation, parameters in operations(spec):
        names = [parameter["name"] for parameter in parameters if parameter["in"] == "query"]
        if not names:
            continue
        url = web.url + path.format(**path_ids(session, tenant), **webhooks[for_operators(path)])
        headers = operator if for_operators(path) else tenant.headers()
        plain = requests.request(method, url, headers=headers, timeout=HTTP_TIMEOUT)
        blank = requests.request(method, url, params=dict.fromkeys(names, ""), headers=headers, timeout=HTTP_TIMEOUT)
        assert plain.status_code == 200, plain.text
        assert (blank.status_code, blank.json()) == (200, plain.json()), (path, names, blank.text)
        assert_answered_as_documented(operation, method, path, blank)
        listed += 1
    assert listed >= 3  # jobs, backups and servers, and the accounts' listings
