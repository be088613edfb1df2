"""Tenants with a user and token per role, made through the same code the CLI uses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.orm import Session

from provisioning.accounts import registry as accounts
from provisioning.enums import Role, TenantStatus
from provisioning.models import Tenant, User


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
