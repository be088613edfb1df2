"""Tenants with a user and token per role, made through the same code the CLI uses."""

from __future__ import annotations

import gzip
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from provisioning.accounts import registry as accounts
from provisioning.backups.book import BackupBook
from provisioning.enums import Role, ServerStatus, TenantStatus
from provisioning.models import Server, SiteBackup, Tenant, User
from provisioning.platform.db import utcnow
from provisioning.platform.settings import DEFAULT_SERVER_NAME
from provisioning.sites.drivers.base import BackupFile


@dataclass
class TenantWithUsers:
    tenant: Tenant
    users: dict[Role, User] = field(default_factory=dict)
    tokens: dict[Role, str] = field(default_factory=dict)

    @property
    def id(self) -> uuid.UUID:
        return self.tenant.id

    def headers(self, role: Role = Role.OWNER) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


class TenantFactory:
    def __init__(self, session: Session):
        self.session = session

    def create(self, status: TenantStatus = TenantStatus.PENDING, roles=(Role.OWNER, Role.ADMIN, Role.MEMBER)) -> TenantWithUsers:
        suffix = uuid.uuid4().hex[:10]
        tenant = accounts.create_tenant(self.session, f"t-{suffix}", f"Tenant {suffix}")
        if status != TenantStatus.PENDING:
            self.set_status(tenant, status)
        made = TenantWithUsers(tenant)
        for role in roles:
            user = accounts.create_user(self.session, f"{role.value}-{suffix}@example.test")
            accounts.add_membership(self.session, user, tenant, role)
            made.users[role] = user
            made.tokens[role] = accounts.issue_token(self.session, user, name="test")[1]
        return made

    def set_status(self, tenant: Tenant, status: TenantStatus) -> None:
        self.session.execute(update(Tenant).where(Tenant.id == tenant.id).values(status=status))
        self.session.commit()
        self.session.refresh(tenant)


def bearer(token: str) -> dict[str, str]:
    """The headers of a request carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


def operator_headers(session: Session) -> dict[str, str]:
    """The headers of a new platform operator (a superuser with no tenant)."""
    user = accounts.create_user(session, f"operator-{uuid.uuid4().hex[:10]}@example.test", is_superuser=True)
    return {"Authorization": f"Bearer {accounts.issue_token(session, user, name='test')[1]}"}


def remove_servers_but_the_default(session: Session) -> None:
    """Undo what a test did to the registry of the run's shared database: the tenants of other
    servers go back to the default one (it is made active), and the other servers go. An extra
    active server there would take the placements of later tests, whose workers never see its queue."""
    default = session.scalar(select(Server.id).where(Server.name == DEFAULT_SERVER_NAME))
    others = select(Server.id).where(Server.id != default)
    session.execute(update(Tenant).where(Tenant.server_id.in_(others)).values(server_id=default))
    session.execute(delete(Server).where(Server.id != default))
    session.execute(update(Server).where(Server.id == default).values(status=ServerStatus.ACTIVE))
    session.commit()


GOOD_DUMP = gzip.compress(b"CREATE TABLE t (x int);\n-- Dump completed on 2026-11-30 01:02:03\n")


def make_backup(session, tenant, directory: Path, age: timedelta, job_id=None) -> SiteBackup:
    """A completed backup with a real dump file, made ``age`` ago."""
    directory.mkdir(parents=True, exist_ok=True)
    dump = directory / "database.sql.gz"
    dump.write_bytes(GOOD_DUMP)
    book = BackupBook(session)
    backup = book.start(tenant.id, job_id, "site.test", [BackupFile("database", dump)])
    book.verify(backup)
    backup.created_at = utcnow() - age
    session.commit()
    return backup
