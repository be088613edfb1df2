"""The jobs API as a client sees it: requesting, listing, reading, retrying and cancelling jobs.

Jobs that must stay ``pending`` are made with the service and never published, so the
session-wide worker (when another test started it) cannot pick them up.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from html.parser import HTMLParser

import pytest
from sqlalchemy import func, select

from provisioning.backups.book import BackupBook, Retention
from provisioning.enums import JobStatus, JobType, Role, StepStatus, TenantStatus
from provisioning.jobs.workflows import workflow_for
from provisioning.models import JobStep, ProvisioningJob
from provisioning.platform.db import utcnow
from tests.factories import make_backup
from tests.helpers import StrictClient, assert_error, committing, wait_for
from tests.records import NO_STANDBY

JOBS = "/api/v1/provisioning/jobs"
DESIGN_FIELDS = {
    "id",
    "tenant_id",
    "job_type",
    "status",
    "progress",
    "message",
    "error",
    "started_at",
    "completed_at",
    "created_at",
}
JOB_ENDPOINTS = [("get", ""), ("post", "/retry"), ("post", "/cancel"), ("get", "/steps")]


@pytest.fixture
def client(app):
    app.test_client_class = StrictClient
    return app.test_client()


def pending_job(session, tenant, job_type: JobType = JobType.CREATE_SITE) -> ProvisioningJob:
    """A pending job that is never published, so no worker will run it."""
    return committing(session).request_job(tenant.id, job_type)


def running_job(session, tenant, job_type: JobType = JobType.CREATE_SITE) -> ProvisioningJob:
    return committing(session).start_job(pending_job(session, tenant, job_type).id, "test-worker").job


def finished_job(
    session, tenant, status: JobStatus, job_type: JobType = JobType.CREATE_SITE, created_at: datetime | None = None
) -> ProvisioningJob:
    """A finished job row put straight in the table, as a worker would have left it."""
    created_at = created_at or utcnow()
    job = ProvisioningJob(
        tenant_id=tenant.id,
        job_type=job_type,
        status=status,
        progress=100 if status == JobStatus.COMPLETED else 40,
        message=status.value.capitalize(),
        error="create_site failed at install_apps: bench exited 1" if status == JobStatus.FAILED else None,
        started_at=created_at + timedelta(seconds=1),
        completed_at=created_at + timedelta(seconds=30),
        created_at=created_at,
    )
    session.add(job)
    session.commit()
    return job


def finished_jobs(session, tenant, count: int, status: JobStatus = JobStatus.COMPLETED) -> list[ProvisioningJob]:
    """``count`` finished jobs a minute apart, returned newest first."""
    start = utcnow() - timedelta(hours=1)
    made = [finished_job(session, tenant, status, created_at=start + timedelta(minutes=n)) for n in range(count)]
    return made[::-1]


def listed_ids(response) -> list[str]:
    return [job["id"] for job in response.json["data"]]


# Requesting a job.


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_an_owner_or_admin_requests_a_job_and_is_pointed_at_it(client, tenant_factory, role):
    tenant = tenant_factory.create()
    response = client.post(JOBS, json={"job_type": "create_site"}, headers=tenant.headers(role))
    assert response.status_code == 201, response.json
    job = response.json["data"]
    assert (job["job_type"], job["status"], job["tenant_id"], job["progress"]) == ("create_site", "pending", str(tenant.id), 0)
    assert job["requested_by_id"] == str(tenant.users[role].id)
    assert response.headers["Location"].endswith(f"{JOBS}/{job['id']}")
    located = client.get(response.headers["Location"], headers=tenant.headers(role))
    assert located.status_code == 200 and located.json["data"]["id"] == job["id"]


def test_an_unknown_job_type_is_refused_with_the_allowed_values(client, tenant_factory):
    tenant = tenant_factory.create()
    body = assert_error(client.post(JOBS, json={"job_type": "reboot_site"}, headers=tenant.headers()), 422)
    problem = str(body["errors"]["json"]["job_type"])
    assert all(job_type.value in problem for job_type in JobType), problem


@pytest.mark.parametrize(
    "body",
    [{"job_type": "create_site", "priority": "high"}, {}, {"job_type": None}, {"job_type": 1}, ["create_site"]],
    ids=["unknown-field", "missing-job-type", "null-job-type", "number-job-type", "list-body"],
)
def test_a_malformed_job_request_is_refused_and_creates_nothing(client, tenant_factory, body):
    tenant = tenant_factory.create()
    assert_error(client.post(JOBS, json=body, headers=tenant.headers()), 422)
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 0


@pytest.mark.parametrize(
    "data, content_type",
    [("job_type=create_site", "text/plain"), ('{"job_type": "create_', "application/json"), ("", "application/json")],
    ids=["text-plain", "malformed-json", "empty-json"],
)
def test_a_body_that_is_not_json_is_answered_with_a_json_error(client, tenant_factory, data, content_type):
    tenant = tenant_factory.create()
    assert_error(client.post(JOBS, data=data, content_type=content_type, headers=tenant.headers()), 400, 422)
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 0


@pytest.mark.parametrize("body", [{"job_type": "create_site"}, {"job_type": "nonsense"}, {"extra": 1}])
def test_a_member_cannot_create_a_job_whatever_the_body(client, tenant_factory, body):
    tenant = tenant_factory.create()
    answer = assert_error(client.post(JOBS, json=body, headers=tenant.headers(Role.MEMBER)), 403)
    assert "owner or admin" in answer["message"]
    assert client.get(JOBS, headers=tenant.headers(Role.MEMBER)).json["meta"]["total"] == 0


def test_a_second_active_job_for_the_tenant_is_refused_naming_the_first(client, tenant_factory, session):
    tenant = tenant_factory.create()
    first = pending_job(session, tenant)
    body = assert_error(client.post(JOBS, json={"job_type": "create_site"}, headers=tenant.headers()), 409)
    assert "active job" in body["message"] and str(first.id) in body["message"]
    assert listed_ids(client.get(JOBS, headers=tenant.headers())) == [str(first.id)]


@pytest.mark.parametrize(
    "job_type, tenant_status, reason",
    [
        (JobType.CREATE_SITE, TenantStatus.ACTIVE, "already has a site"),
        (JobType.BACKUP_SITE, TenantStatus.PENDING, "no active site to back up"),
        (JobType.DELETE_SITE, TenantStatus.PENDING, "no site to delete"),
    ],
)
def test_a_job_the_tenant_state_does_not_allow_is_refused_saying_why(client, tenant_factory, job_type, tenant_status, reason):
    tenant = tenant_factory.create(status=tenant_status)
    body = assert_error(client.post(JOBS, json={"job_type": job_type.value}, headers=tenant.headers()), 409)
    assert reason in body["message"] and tenant_status.value in body["message"], body["message"]
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 0


def test_a_delete_can_skip_its_final_backup_and_the_job_shows_that_option(client, tenant_factory):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    response = client.post(JOBS, json={"job_type": "delete_site", "skip_final_backup": True}, headers=tenant.headers())
    assert response.status_code == 201, response.json
    job = response.json["data"]
    assert (job["job_type"], job["options"], job["resume_from"]) == ("delete_site", {"skip_final_backup": True}, None)
    assert client.get(f"{JOBS}/{job['id']}", headers=tenant.headers()).json["data"]["options"] == {"skip_final_backup": True}


@pytest.mark.parametrize(
    "body",
    [
        {"job_type": "delete_site", "skip_final_backup": False},
        {"job_type": "delete_site"},
        {"job_type": "create_site"},
        {"job_type": "create_site", "skip_final_backup": False},  # what Swagger UI's "Try it out" sends
        {"job_type": "backup_site", "skip_final_backup": False},
    ],
    ids=["delete-false", "delete-default", "create", "create-false", "backup-false"],
)
def test_a_job_asked_without_options_has_none(client, tenant_factory, body):
    status = TenantStatus.PENDING if body["job_type"] == "create_site" else TenantStatus.ACTIVE
    tenant = tenant_factory.create(status=status)
    response = client.post(JOBS, json=body, headers=tenant.headers())
    assert response.status_code == 201, response.json
    assert response.json["data"]["options"] == {}


@pytest.mark.parametrize(
    "body",
    [
        {"job_type": "create_site", "skip_final_backup": True},
        {"job_type": "backup_site", "skip_final_backup": True},
        {"job_type": "delete_site", "skip_final_backup": "yes"},
        {"job_type": "delete_site", "skip_final_backup": 1},
        {"job_type": "delete_site", "skip_final_backup": None},
    ],
    ids=["create", "backup", "string", "number", "null"],
)
def test_skipping_the_final_backup_is_refused_naming_it_unless_a_delete_asks_with_a_boolean(client, tenant_factory, body):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    answer = assert_error(client.post(JOBS, json=body, headers=tenant.headers()), 422)
    assert "skip_final_backup" in answer["errors"]["json"], answer
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 0


def test_an_idempotency_key_reused_with_another_option_is_refused(client, tenant_factory):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    headers = {**tenant.headers(), "Idempotency-Key": f"delete-{tenant.tenant.slug}"}
    skipping = {"job_type": "delete_site", "skip_final_backup": True}
    first = client.post(JOBS, json=skipping, headers=headers)
    assert first.status_code == 201, first.json

    for other in ({"job_type": "delete_site"}, {"job_type": "delete_site", "skip_final_backup": False}):
        answer = assert_error(client.post(JOBS, json=other, headers=headers), 422)
        assert "Idempotency-Key" in answer["errors"]["headers"], answer
    again = client.post(JOBS, json=skipping, headers=headers)
    assert again.status_code == 201 and again.json["data"]["id"] == first.json["data"]["id"]
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 1


def test_a_retry_shows_the_step_it_resumes_from(client, tenant_factory, session):
    tenant = tenant_factory.create(status=TenantStatus.FAILED)
    old = finished_job(session, tenant, JobStatus.FAILED)
    for position, name in enumerate(("check_preconditions", "create_site", "install_apps")):
        status = StepStatus.FAILED if name == "install_apps" else StepStatus.COMPLETED
        session.add(JobStep(job_id=old.id, position=position, name=name, status=status))
    session.commit()
    assert client.get(f"{JOBS}/{old.id}", headers=tenant.headers()).json["data"]["resume_from"] is None
    retry = client.post(f"{JOBS}/{old.id}/retry", headers=tenant.headers())
    assert retry.status_code == 201, retry.json
    assert (retry.json["data"]["resume_from"], retry.json["data"]["options"]) == ("install_apps", {})


# Listing jobs.


def test_the_list_is_newest_first_in_a_paged_envelope_of_twenty_by_default(client, tenant_factory, session):
    tenant = tenant_factory.create()
    jobs = finished_jobs(session, tenant, 3)
    response = client.get(JOBS, headers=tenant.headers(Role.MEMBER))
    assert response.status_code == 200
    assert set(response.json) == {"data", "meta"}
    assert response.json["meta"] == {"page": 1, "size": 20, "total": 3, "pages": 1}
    assert listed_ids(response) == [str(job.id) for job in jobs]


def test_pages_split_the_list_without_gaps_and_a_page_past_the_end_is_empty(client, tenant_factory, session):
    tenant = tenant_factory.create()
    jobs = finished_jobs(session, tenant, 5)
    pages = [client.get(f"{JOBS}?page={page}&size=2", headers=tenant.headers()).json for page in (1, 2, 3, 4)]
    assert [page["meta"] for page in pages] == [{"page": page, "size": 2, "total": 5, "pages": 3} for page in (1, 2, 3, 4)]
    assert [len(page["data"]) for page in pages] == [2, 2, 1, 0]
    assert [job["id"] for page in pages for job in page["data"]] == [str(job.id) for job in jobs]


def test_the_list_filters_by_status_and_job_type(client, tenant_factory, session):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    failed_backup = finished_job(session, tenant, JobStatus.FAILED, JobType.BACKUP_SITE)
    done_backup = finished_job(session, tenant, JobStatus.COMPLETED, JobType.BACKUP_SITE)
    done_create = finished_job(session, tenant, JobStatus.COMPLETED, JobType.CREATE_SITE)

    def ids(query: str) -> set[str]:
        response = client.get(f"{JOBS}?{query}", headers=tenant.headers())
        assert response.json["meta"]["total"] == len(response.json["data"])
        return set(listed_ids(response))

    assert ids("status=failed") == {str(failed_backup.id)}
    assert ids("job_type=backup_site") == {str(failed_backup.id), str(done_backup.id)}
    assert ids("status=completed&job_type=create_site") == {str(done_create.id)}
    assert ids("status=cancelled") == set()


def test_a_tenant_never_sees_another_tenants_jobs_in_its_list(client, tenant_factory, session):
    ours, theirs = tenant_factory.create(), tenant_factory.create()
    mine = finished_jobs(session, ours, 2)
    finished_jobs(session, theirs, 3)
    pending_job(session, theirs)
    response = client.get(JOBS, headers=ours.headers(Role.MEMBER))
    assert listed_ids(response) == [str(job.id) for job in mine]
    assert response.json["meta"]["total"] == 2


@pytest.mark.parametrize(
    "query",
    [
        "page=0",
        "size=0",
        "size=101",
        "page=abc",
        "size=-1",
        "page=99999999999999999999",
        "status=exploded",
        "job_type=reboot_site",
    ],
)
def test_a_bad_list_query_is_refused(client, tenant_factory, query):
    tenant = tenant_factory.create()
    assert_error(client.get(f"{JOBS}?{query}", headers=tenant.headers()), 422)


# Reading one job.


def test_a_job_is_read_with_the_fields_of_the_design(client, tenant_factory, session):
    tenant = tenant_factory.create(status=TenantStatus.FAILED)
    job = finished_job(session, tenant, JobStatus.FAILED)
    response = client.get(f"{JOBS}/{job.id}", headers=tenant.headers(Role.MEMBER))
    assert response.status_code == 200 and set(response.json) == {"data"}
    data = response.json["data"]
    assert DESIGN_FIELDS <= set(data)
    assert (data["id"], data["tenant_id"], data["job_type"], data["status"]) == (
        str(job.id),
        str(tenant.id),
        "create_site",
        "failed",
    )
    assert (data["progress"], data["message"], data["error"]) == (job.progress, job.message, job.error)
    for name in ("started_at", "completed_at", "created_at"):
        assert datetime.fromisoformat(data[name]) == getattr(job, name)


def test_a_job_that_is_not_the_callers_is_answered_404_as_if_it_did_not_exist(client, tenant_factory, session):
    ours, theirs = tenant_factory.create(), tenant_factory.create()
    their_job = pending_job(session, theirs)
    for method, suffix in JOB_ENDPOINTS:
        call = getattr(client, method)
        missing = assert_error(call(f"{JOBS}/{uuid.uuid4()}{suffix}", headers=ours.headers()), 404)
        foreign = assert_error(call(f"{JOBS}/{their_job.id}{suffix}", headers=ours.headers()), 404)
        assert foreign == missing, (method, suffix)
    assert client.get(f"{JOBS}/{their_job.id}", headers=theirs.headers()).json["data"]["status"] == "pending"


@pytest.mark.parametrize("method, suffix", JOB_ENDPOINTS)
def test_a_job_id_that_is_not_a_uuid_is_not_found(client, tenant_factory, method, suffix):
    tenant = tenant_factory.create()
    assert_error(getattr(client, method)(f"{JOBS}/not-a-uuid{suffix}", headers=tenant.headers()), 404)


# Retrying.


@pytest.mark.parametrize(
    "tenant_status, job_status, job_type",
    [
        (TenantStatus.FAILED, JobStatus.FAILED, JobType.CREATE_SITE),
        (TenantStatus.ACTIVE, JobStatus.COMPLETED, JobType.BACKUP_SITE),
    ],
)
def test_a_retry_is_a_new_job_linked_to_the_old_one_which_stays_as_it_was(
    client, tenant_factory, session, tenant_status, job_status, job_type
):
    tenant = tenant_factory.create(status=tenant_status)
    old = finished_job(session, tenant, job_status, job_type)
    before = client.get(f"{JOBS}/{old.id}", headers=tenant.headers()).json["data"]
    response = client.post(f"{JOBS}/{old.id}/retry", headers=tenant.headers(Role.ADMIN))
    assert response.status_code == 201, response.json
    new = response.json["data"]
    assert new["id"] != str(old.id)
    assert (new["retry_of_id"], new["job_type"], new["status"]) == (str(old.id), job_type.value, "pending")
    assert response.headers["Location"].endswith(f"{JOBS}/{new['id']}")
    assert client.get(f"{JOBS}/{old.id}", headers=tenant.headers()).json["data"] == before


@pytest.mark.parametrize("make_job", [pending_job, running_job], ids=["pending", "running"])
def test_a_job_that_has_not_finished_cannot_be_retried(client, tenant_factory, session, make_job):
    tenant = tenant_factory.create()
    job = make_job(session, tenant)
    body = assert_error(client.post(f"{JOBS}/{job.id}/retry", headers=tenant.headers()), 409)
    assert "only failed or completed jobs can be retried" in body["message"]
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 1


# Cancelling.


def test_cancelling_a_pending_job_cancels_it_at_once_and_again_changes_nothing(client, tenant_factory, session):
    tenant = tenant_factory.create()
    job = pending_job(session, tenant)
    first = client.post(f"{JOBS}/{job.id}/cancel", headers=tenant.headers())
    assert first.status_code == 200 and first.json["data"]["status"] == "cancelled"
    again = client.post(f"{JOBS}/{job.id}/cancel", headers=tenant.headers(Role.ADMIN))
    assert again.status_code == 200 and again.json["data"] == first.json["data"]


def test_cancelling_a_running_job_asks_its_worker_to_stop_and_again_answers_the_same(client, tenant_factory, session):
    tenant = tenant_factory.create()
    job = running_job(session, tenant)
    first = client.post(f"{JOBS}/{job.id}/cancel", headers=tenant.headers())
    assert first.status_code == 202 and first.json["data"]["status"] == "cancelling"
    assert first.json["data"]["cancel_requested_at"] is not None
    again = client.post(f"{JOBS}/{job.id}/cancel", headers=tenant.headers())
    assert again.status_code == 202 and again.json["data"] == first.json["data"]


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED])
def test_a_finished_job_cannot_be_cancelled(client, tenant_factory, session, status):
    tenant = tenant_factory.create()
    job = finished_job(session, tenant, status)
    body = assert_error(client.post(f"{JOBS}/{job.id}/cancel", headers=tenant.headers()), 409)
    assert status.value in body["message"]
    assert client.get(f"{JOBS}/{job.id}", headers=tenant.headers()).json["data"]["status"] == status.value


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_a_member_can_read_jobs_but_cannot_retry_or_cancel_them(client, tenant_factory, session, action):
    tenant = tenant_factory.create(status=TenantStatus.FAILED)
    job = finished_job(session, tenant, JobStatus.FAILED) if action == "retry" else pending_job(session, tenant)
    assert client.get(f"{JOBS}/{job.id}", headers=tenant.headers(Role.MEMBER)).status_code == 200
    assert client.get(f"{JOBS}/{job.id}/steps", headers=tenant.headers(Role.MEMBER)).status_code == 200
    assert_error(client.post(f"{JOBS}/{job.id}/{action}", headers=tenant.headers(Role.MEMBER)), 403)
    listed = client.get(JOBS, headers=tenant.headers(Role.MEMBER)).json
    assert listed["meta"]["total"] == 1 and listed["data"][0]["status"] == job.status.value


# Steps.


def test_a_job_that_has_not_started_has_no_steps(client, tenant_factory, session):
    tenant = tenant_factory.create()
    job = pending_job(session, tenant)
    response = client.get(f"{JOBS}/{job.id}/steps", headers=tenant.headers())
    assert response.status_code == 200 and response.json == {"data": []}


def test_the_steps_of_a_job_that_ran_are_listed_in_order_with_their_times(client, tenant_factory, worker):
    tenant = tenant_factory.create()
    job_id = client.post(JOBS, json={"job_type": "create_site"}, headers=tenant.headers()).json["data"]["id"]

    def finished():
        job = client.get(f"{JOBS}/{job_id}", headers=tenant.headers()).json["data"]
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    assert wait_for(finished, timeout=60, what="the job to finish")["status"] == "completed"
    steps = client.get(f"{JOBS}/{job_id}/steps", headers=tenant.headers(Role.MEMBER)).json["data"]
    assert [step["name"] for step in steps] == list(workflow_for(JobType.CREATE_SITE).step_names)
    assert [step["position"] for step in steps] == sorted(step["position"] for step in steps)
    # No standby site was ready: its claim is skipped, saying why, and the site is made.
    [claim] = [step for step in steps if step["name"] == "claim_standby"]
    assert (claim["status"], claim["message"]) == (StepStatus.SKIPPED.value, NO_STANDBY)
    ran = [step for step in steps if step is not claim]
    for step in ran:
        assert step["status"] == StepStatus.COMPLETED.value, step
        assert datetime.fromisoformat(step["started_at"]) <= datetime.fromisoformat(step["finished_at"])
    assert all(datetime.fromisoformat(a["finished_at"]) <= datetime.fromisoformat(b["started_at"]) for a, b in zip(ran, ran[1:]))


# Errors outside the job routes, and the docs.


@pytest.mark.parametrize(
    "method, path, status, allowed",
    [
        ("get", "/api/v1/provisioning/nothing-here", 404, None),
        ("get", "/", 404, None),
        ("delete", JOBS, 405, {"GET", "POST"}),
        ("put", f"{JOBS}/{uuid.uuid4()}", 405, {"GET"}),
        ("get", f"{JOBS}/{uuid.uuid4()}/cancel", 405, {"POST"}),
    ],
)
def test_an_unknown_url_or_a_wrong_method_is_answered_with_a_json_error(client, tenant_factory, method, path, status, allowed):
    tenant = tenant_factory.create()
    response = getattr(client, method)(path, headers=tenant.headers())
    assert_error(response, status)
    if allowed:
        assert allowed <= set(response.headers["Allow"].split(", ")), response.headers.get("Allow")


def test_the_openapi_spec_lists_the_job_endpoints_and_bearer_auth(client):
    spec = client.get("/openapi.json").json
    paths = spec["paths"]
    for path, methods in {
        JOBS: {"get", "post"},
        f"{JOBS}/{{job_id}}": {"get"},
        f"{JOBS}/{{job_id}}/retry": {"post"},
        f"{JOBS}/{{job_id}}/cancel": {"post"},
        f"{JOBS}/{{job_id}}/steps": {"get"},
    }.items():
        assert methods <= set(paths[path]), (path, sorted(paths[path]))
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


class _AssetLinks(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.urls.append(found["src"])
        if tag == "link" and found.get("href"):
            self.urls.append(found["href"])


def test_the_docs_page_loads_only_local_assets_so_it_works_on_a_closed_network(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    links = _AssetLinks()
    links.feed(page)
    assert links.urls, page
    for url in links.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert client.get(url).status_code == 200, url
    assert "http://" not in page and "https://" not in page


def test_twenty_concurrent_creates_for_one_tenant_give_exactly_one_job(app, tenant_factory, session):
    """The database's partial unique index, not a read-then-write check, decides the race."""
    tenant = tenant_factory.create()
    start = threading.Barrier(20)

    def create(_):
        client = app.test_client()
        start.wait(timeout=30)
        return client.post(JOBS, json={"job_type": "create_site"}, headers=tenant.headers()).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(create, range(20)))

    assert sorted(statuses) == [201] + [409] * 19
    assert session.scalar(select(func.count()).select_from(ProvisioningJob).where(ProvisioningJob.tenant_id == tenant.id)) == 1


def test_an_owner_asks_to_restore_a_completed_backup_with_or_without_a_safety_backup(client, session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    backup = make_backup(session, tenant, tmp_path, timedelta(hours=1))
    body = {"job_type": "restore_site", "backup_id": str(backup.id), "skip_safety_backup": True}

    assert_error(client.post(JOBS, json=body, headers=tenant.headers(Role.MEMBER)), 403)
    response = client.post(JOBS, json=body, headers=tenant.headers())

    assert response.status_code == 201, response.json
    assert response.json["data"]["options"] == {"backup_id": str(backup.id), "skip_safety_backup": True}


def test_a_drill_without_a_backup_id_drills_the_newest_backup(client, session, tenant_factory, tmp_path):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    make_backup(session, tenant, tmp_path / "old", timedelta(days=2))
    newest = make_backup(session, tenant, tmp_path / "new", timedelta(hours=1))

    response = client.post(JOBS, json={"job_type": "restore_drill"}, headers=tenant.headers(Role.ADMIN))

    assert response.status_code == 201, response.json
    assert response.json["data"]["options"] == {"backup_id": str(newest.id)}


@pytest.mark.parametrize(
    "body, option",
    [
        ({"job_type": "restore_site"}, "backup_id"),
        ({"job_type": "restore_site", "backup_id": "last-tuesday"}, "backup_id"),
        ({"job_type": "backup_site", "backup_id": "7d4f3c2e-5b1a-4e8f-9c6d-2a1b0e9f8d7c"}, "backup_id"),
        ({"job_type": "restore_drill", "skip_safety_backup": True}, "skip_safety_backup"),
        ({"job_type": "delete_site", "skip_safety_backup": True}, "skip_safety_backup"),
    ],
    ids=["restore-without-backup", "not-a-uuid", "backup-with-backup-id", "drill-skipping", "delete-skipping"],
)
def test_restore_options_that_do_not_fit_the_job_are_refused_naming_them(client, tenant_factory, body, option):
    tenant = tenant_factory.create(status=TenantStatus.ACTIVE)
    answer = assert_error(client.post(JOBS, json=body, headers=tenant.headers()), 422)
    assert option in answer["errors"]["json"], answer
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 0


def test_a_restore_of_a_backup_the_tenant_does_not_have_or_that_was_pruned_is_refused(
    client, session, tenant_factory, tmp_path
):
    tenant, other = (tenant_factory.create(status=TenantStatus.ACTIVE) for _ in range(2))
    theirs = make_backup(session, other, tmp_path / "theirs", timedelta(hours=1))
    pruned = make_backup(session, tenant, tmp_path / "pruned", timedelta(days=90))
    BackupBook(session).prune(Retention(keep_last=0, max_age=timedelta(days=30)), tenant.id)

    for backup_id, status, said in [(theirs.id, 404, "not found"), (uuid.uuid4(), 404, "not found"), (pruned.id, 409, "pruned")]:
        body = {"job_type": "restore_site", "backup_id": str(backup_id)}
        assert said in assert_error(client.post(JOBS, json=body, headers=tenant.headers()), status)["message"]
    assert client.get(JOBS, headers=tenant.headers()).json["meta"]["total"] == 0
