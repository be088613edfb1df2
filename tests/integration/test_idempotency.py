"""`Idempotency-Key` on job requests: a repeated request makes no second job and no second message."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from kombu import Connection
from sqlalchemy import func, select, update

from api import create_app
from provisioning.enums import JobStatus, JobType, Role, TenantStatus
from provisioning.models import IdempotencyKey, ProvisioningJob
from tests.helpers import StrictClient, assert_error, committing
from tests.stack import delete_queues

JOBS = "/api/v1/provisioning/jobs"


@pytest.fixture
def quiet_queue(settings):
    """The API publishes to a queue nobody consumes, so the test can count the messages."""
    queue = f"{settings.provisioning_queue_name}.idempotency-{uuid.uuid4().hex[:6]}"
    yield settings.model_copy(update={"provisioning_queue_name": queue})
    delete_queues(queue)


@pytest.fixture
def client(quiet_queue):
    app = create_app(quiet_queue)
    app.test_client_class = StrictClient
    return app.test_client()


def messages_waiting(settings) -> int:
    with Connection(settings.broker_url) as connection:
        return connection.default_channel.queue_declare(settings.provisioning_queue_name, passive=True).message_count


def jobs_of(session, tenant) -> int:
    return session.scalar(select(func.count()).select_from(ProvisioningJob).where(ProvisioningJob.tenant_id == tenant.id))


def keyed(tenant, key: str, role: Role = Role.OWNER) -> dict[str, str]:
    return {**tenant.headers(role), "Idempotency-Key": key}


def test_the_same_key_and_body_answer_with_the_same_job_and_send_one_message(client, quiet_queue, tenant_factory, session):
    tenant = tenant_factory.create()
    first = client.post(JOBS, json={"job_type": "create_site"}, headers=keyed(tenant, "order-1001"))
    again = client.post(JOBS, json={"job_type": "create_site"}, headers=keyed(tenant, "order-1001"))

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json["data"]["id"] == first.json["data"]["id"]
    assert jobs_of(session, tenant) == 1
    assert messages_waiting(quiet_queue) == 1


def test_the_same_key_with_another_body_is_refused(client, tenant_factory, session):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    assert client.post(JOBS, json={"job_type": "backup_site"}, headers=keyed(tenant, "k-1")).status_code == 201
    body = assert_error(client.post(JOBS, json={"job_type": "delete_site"}, headers=keyed(tenant, "k-1")), 422)
    assert "Idempotency-Key" in body["message"] and "backup_site" in body["message"]
    assert jobs_of(session, tenant) == 1


def test_a_key_belongs_to_its_tenant(client, tenant_factory):
    ours, theirs = tenant_factory.create(), tenant_factory.create()
    mine = client.post(JOBS, json={"job_type": "create_site"}, headers=keyed(ours, "shared-key"))
    other = client.post(JOBS, json={"job_type": "create_site"}, headers=keyed(theirs, "shared-key"))
    assert (mine.status_code, other.status_code) == (201, 201)
    assert mine.json["data"]["id"] != other.json["data"]["id"]


def test_an_expired_key_makes_a_new_job(client, tenant_factory, session):
    tenant = tenant_factory.create()
    first = client.post(JOBS, json={"job_type": "create_site"}, headers=keyed(tenant, "k-exp")).json["data"]
    committing(session).cancel_job(tenant.id, uuid.UUID(first["id"]))
    session.execute(
        update(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant.id).values(expires_at=IdempotencyKey.created_at)
    )
    session.commit()

    again = client.post(JOBS, json={"job_type": "create_site"}, headers=keyed(tenant, "k-exp"))

    assert again.status_code == 201 and again.json["data"]["id"] != first["id"]
    assert committing(session).prune_idempotency_keys() == 0, "the expired key was replaced, not kept"


def test_a_repeated_retry_with_a_key_makes_one_new_job(client, tenant_factory, session):
    tenant = tenant_factory.create(status=TenantStatus.FAILED)
    failed = ProvisioningJob(
        tenant_id=tenant.id, job_type=JobType.CREATE_SITE, status=JobStatus.FAILED, progress=40, message="Failed"
    )
    session.add(failed)
    session.commit()

    answers = [client.post(f"{JOBS}/{failed.id}/retry", headers=keyed(tenant, "retry-7")) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [201, 201, 201]
    assert len({answer.json["data"]["id"] for answer in answers}) == 1
    assert answers[0].json["data"]["retry_of_id"] == str(failed.id)
    assert jobs_of(session, tenant) == 2


def test_concurrent_requests_with_one_key_all_get_the_one_job(quiet_queue, tenant_factory, session):
    app = create_app(quiet_queue)
    tenant = tenant_factory.create()
    start = threading.Barrier(10)

    def create(_):
        client = app.test_client()
        start.wait(timeout=30)
        answer = client.post(JOBS, json={"job_type": "create_site"}, headers=keyed(tenant, "burst"))
        return answer.status_code, answer.get_json()["data"]["id"]

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(create, range(10)))

    assert {status for status, _ in results} == {201}
    assert len({job_id for _, job_id in results}) == 1
    assert jobs_of(session, tenant) == 1
    assert messages_waiting(quiet_queue) == 1


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "has space", "naïve", "order-1001\n", "order-1001\r\n"],
    ids=["empty", "too-long", "space", "non-ascii", "trailing-newline", "trailing-crlf"],
)
def test_a_malformed_key_is_refused(client, tenant_factory, key):
    tenant = tenant_factory.create()
    # Put in the request as given: a WSGI server may hand a header over with what it ended in.
    answer = client.post(
        JOBS, json={"job_type": "create_site"}, headers=tenant.headers(), environ_overrides={"HTTP_IDEMPOTENCY_KEY": key}
    )
    body = assert_error(answer, 422)
    assert "Idempotency-Key" in str(body["errors"])
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 0
