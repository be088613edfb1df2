"""Tenants as accounts: made, renamed, found and listed. Their status moves only through jobs."""

from __future__ import annotations

import uuid

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from provisioning.accounts import audit
from provisioning.accounts.audit import SYSTEM, Origin
from provisioning.accounts.checks import flush_unique, text
from provisioning.enums import TenantStatus
from provisioning.errors import InvalidRequest, NotFound
from provisioning.models import Tenant
from provisioning.platform.db import page_of
from provisioning.platform.identifiers import SLUG, UUID
from provisioning.platform.quoting import quoted

MAX_TENANT_NAME_LENGTH = 200  # tenants.name
# Slugs that name something else in the API's paths: /tenants/current is the caller's tenant.
RESERVED_SLUGS = frozenset({"current"})


def create_tenant(session: Session, slug: str, name: str, origin: Origin = SYSTEM) -> Tenant:
    """Raises InvalidRequest for a slug that cannot be a site name or is reserved, Conflict for a taken one."""
    if problem := SLUG.problem("slug", slug):
        raise InvalidRequest(problem)
    if slug in RESERVED_SLUGS:
        raise InvalidRequest(f"slug {slug!r} is reserved")
    name = _name(name)
    tenant = Tenant(slug=slug, name=name)
    session.add(tenant)
    flush_unique(session, f"a tenant with slug {slug!r} already exists")
    audit.record(session, origin, "tenant.created", tenant.id, slug, tenant.name)
    session.commit()
    return tenant


def rename_tenant(session: Session, tenant: Tenant, name: str, origin: Origin = SYSTEM) -> Tenant:
    """Change the tenant's display name (its slug is its site's name, and stays)."""
    name = _name(name)
    if name != tenant.name:
        audit.record(session, origin, "tenant.updated", tenant.id, tenant.slug, f"name {tenant.name!r} -> {name!r}")
        tenant.name = name
    session.commit()
    return tenant


def find_tenant(session: Session, slug: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"no tenant with slug {quoted(slug)}")
    return tenant


def tenant_by_ref(session: Session, ref: str) -> Tenant:
    """The tenant with this slug or id; NotFound for none (or a reference that can be neither)."""
    ref = ref.lower()
    by_id = uuid.UUID(ref) if UUID.is_valid(ref) else None
    tenant = None
    if by_id is not None or SLUG.is_valid(ref):
        tenant = session.scalar(select(Tenant).where(or_(Tenant.slug == ref, Tenant.id == by_id)))
    if tenant is None:
        raise NotFound(f"no tenant {quoted(ref)}")
    return tenant


def list_tenants(session: Session, status: TenantStatus | None = None, page: int = 1, size: int = 20) -> tuple[list[Tenant], int]:
    """A page of tenants by slug, of one status if given."""
    query = select(Tenant).order_by(Tenant.slug)
    if status is not None:
        query = query.where(Tenant.status == status)
    rows, total = page_of(session, query, page, size)
    return [row[0] for row in rows], total


def _name(name: str) -> str:
    name = text("name", name, MAX_TENANT_NAME_LENGTH)
    if not name:
        raise InvalidRequest("name must not be empty")
    return name
