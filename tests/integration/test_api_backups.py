"""The backups API as a client sees it: a tenant's backup records, paged, and never another tenant's.

Backup rows are put straight in the table, as backup jobs would have left them, so no worker
or file is needed.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from provisioning.enums import BackupStatus, Role
from provisioning.models import SiteBackup
from provisioning.platform.db import utcnow
from tests.helpers import StrictClient, assert_error

pytestmark = pytest.mark.usefixtures("rolled_back")  # nothing here needs another connection to see its rows

BACKUPS = "/api/v1/provisioning/backups"
# Where the platform keeps backup files: it must never show in an answer.
SERVER_ROOT = "/srv/erpmax/backups"
FIELDS = {"id", "job_id", "site", "status", "size", "files", "error", "created_at", "completed_at", "pruned_at",
          "restore_proven_at", "restore_failed_at", "restore_error", "offsite_copied_at", "offsite_deleted_at"}  # fmt: skip


@pytest.fixture
def client(app):
    app.test_client_class = StrictClient
    return app.test_client()


def backup_row(session, tenant, created_at, status: BackupStatus = BackupStatus.COMPLETED) -> SiteBackup:
    site = f"{tenant.tenant.slug}.erp.test"
    stem = f"{SERVER_ROOT}/{tenant.tenant.slug}/{uuid.uuid4()}/20260101_000000-{site}"
    files = [
        {"kind": "database", "path": f"{stem}-database.sql.gz", "size": 2048, "sha256": "a" * 64},
        {"kind": "config", "path": f"{stem}-site_config_backup.json", "size": 300, "sha256": "b" * 64},
    ]
    backup = SiteBackup(
        tenant_id=tenant.id,
        site=site,
        status=status,
        files=files,
        size=sum(file["size"] for file in files),
        error="the database dump is empty" if status == BackupStatus.FAILED else None,
        created_at=created_at,
        completed_at=created_at + timedelta(seconds=20) if status != BackupStatus.FAILED else None,
        pruned_at=created_at + timedelta(days=1) if status == BackupStatus.PRUNED else None,
    )
    session.add(backup)
    session.commit()
    return backup


def backup_rows(session, tenant, count: int) -> list[SiteBackup]:
    """``count`` backups an hour apart, returned newest first."""
    start = utcnow() - timedelta(days=1)
    return [backup_row(session, tenant, start + timedelta(hours=n)) for n in range(count)][::-1]


def listed_ids(response) -> list[str]:
    return [backup["id"] for backup in response.json["data"]]


def test_a_member_lists_the_tenants_backups_newest_first_in_a_paged_envelope(client, tenant_factory, session):
    tenant = tenant_factory.create()
    backups = backup_rows(session, tenant, 3)
    response = client.get(BACKUPS, headers=tenant.headers(Role.MEMBER))
    assert response.status_code == 200 and set(response.json) == {"data", "meta"}
    assert response.json["meta"] == {"page": 1, "size": 20, "total": 3, "pages": 1}
    assert listed_ids(response) == [str(backup.id) for backup in backups]


def test_pages_split_the_backups_without_gaps_and_a_page_past_the_end_is_empty(client, tenant_factory, session):
    tenant = tenant_factory.create()
    backups = backup_rows(session, tenant, 5)
    pages = [client.get(f"{BACKUPS}?page={page}&size=2", headers=tenant.headers()).json for page in (1, 2, 3, 4)]
    assert [page["meta"] for page in pages] == [{"page": page, "size": 2, "total": 5, "pages": 3} for page in (1, 2, 3, 4)]
    assert [backup["id"] for page in pages for backup in page["data"]] == [str(backup.id) for backup in backups]
    assert pages[3]["data"] == []


@pytest.mark.parametrize("query", ["page=0", "size=0", "size=101", "page=abc"])
def test_a_bad_page_query_is_refused(client, tenant_factory, query):
    tenant = tenant_factory.create()
    assert_error(client.get(f"{BACKUPS}?{query}", headers=tenant.headers()), 422)


def test_a_backup_is_read_with_its_files_by_base_name(client, tenant_factory, session):
    tenant = tenant_factory.create()
    backup = backup_row(session, tenant, utcnow() - timedelta(hours=1), BackupStatus.PRUNED)
    response = client.get(f"{BACKUPS}/{backup.id}", headers=tenant.headers(Role.MEMBER))
    assert response.status_code == 200 and set(response.json) == {"data"}
    data = response.json["data"]
    assert set(data) == FIELDS
    assert (data["id"], data["job_id"], data["site"], data["status"], data["size"]) == (
        str(backup.id), None, backup.site, "pruned", 2348,
    )  # fmt: skip
    assert data["files"] == [
        {"kind": file["kind"], "name": file["path"].rsplit("/", 1)[1], "size": file["size"], "sha256": file["sha256"]}
        for file in backup.files
    ]
    assert data["pruned_at"] is not None and data["error"] is None


def test_a_failed_backup_shows_why(client, tenant_factory, session):
    tenant = tenant_factory.create()
    backup = backup_row(session, tenant, utcnow(), BackupStatus.FAILED)
    data = client.get(f"{BACKUPS}/{backup.id}", headers=tenant.headers()).json["data"]
    assert (data["status"], data["error"], data["completed_at"]) == ("failed", "the database dump is empty", None)


def test_no_answer_shows_where_the_server_keeps_the_files(client, tenant_factory, session):
    tenant = tenant_factory.create()
    backups = backup_rows(session, tenant, 2)
    answers = [client.get(BACKUPS, headers=tenant.headers())]
    answers += [client.get(f"{BACKUPS}/{backup.id}", headers=tenant.headers()) for backup in backups]
    for answer in answers:
        assert answer.status_code == 200
        text = answer.get_data(as_text=True)
        assert SERVER_ROOT not in text and '"path"' not in text, text


def test_a_tenant_never_sees_another_tenants_backups(client, tenant_factory, session):
    ours, theirs = tenant_factory.create(), tenant_factory.create()
    mine = backup_rows(session, ours, 2)
    their_backup = backup_rows(session, theirs, 3)[0]
    response = client.get(BACKUPS, headers=ours.headers())
    assert listed_ids(response) == [str(backup.id) for backup in mine]
    assert response.json["meta"]["total"] == 2

    missing = assert_error(client.get(f"{BACKUPS}/{uuid.uuid4()}", headers=ours.headers()), 404)
    foreign = assert_error(client.get(f"{BACKUPS}/{their_backup.id}", headers=ours.headers()), 404)
    assert foreign == missing
    assert client.get(f"{BACKUPS}/{their_backup.id}", headers=theirs.headers()).status_code == 200


def test_a_backup_id_that_is_not_a_uuid_is_not_found(client, tenant_factory):
    tenant = tenant_factory.create()
    assert_error(client.get(f"{BACKUPS}/not-a-uuid", headers=tenant.headers()), 404)


@pytest.mark.parametrize("path", [BACKUPS, f"{BACKUPS}/{uuid.uuid4()}"])
def test_backups_need_a_token(client, path):
    response = client.get(path)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_openapi_spec_lists_the_backup_endpoints(client):
    paths = client.get("/openapi.json").json["paths"]
    assert "get" in paths[BACKUPS] and "get" in paths[f"{BACKUPS}/{{backup_id}}"]
