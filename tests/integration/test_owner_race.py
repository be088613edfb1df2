"""Two owners stepping down at once: the owners' rows are locked, so one of them stays owner."""

import threading

from sqlalchemy import select, text, update

from provisioning.accounts import registry as accounts
from provisioning.enums import Role
from provisioning.errors import Conflict
from provisioning.models import Membership, Tenant
from tests.helpers import wait_for


def waiting_on_a_lock(sessions) -> int:
    """How many of the database's connections wait on a lock now (in a transaction of its own)."""
    with sessions() as watching:
        return watching.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
        )


def test_two_owners_demoting_themselves_at_once_leave_the_tenant_one_owner(sessions, tenant_factory):
    made = tenant_factory.create(roles=(Role.OWNER, Role.ADMIN))
    first, second = made.users[Role.OWNER].id, made.users[Role.ADMIN].id
    with sessions() as setup:
        accounts.change_role(setup, setup.get(Tenant, made.id), second, Role.OWNER)
    outcome = []

    def second_steps_down() -> None:
        with sessions() as stepping:
            try:
                accounts.change_role(stepping, stepping.get(Tenant, made.id), second, Role.MEMBER)
                outcome.append("demoted")
            except Conflict as refused:
                outcome.append(str(refused))

    with sessions() as first_stepping:
        # The first owner's demotion, midway: the owners' rows locked, as change_role locks them.
        first_stepping.execute(
            select(Membership.id).where(Membership.tenant_id == made.id, Membership.role == Role.OWNER).with_for_update()
        ).all()
        rival = threading.Thread(target=second_steps_down)
        rival.start()
        wait_for(lambda: waiting_on_a_lock(sessions) >= 1, what="the second demotion to wait for the first")
        first_stepping.execute(update(Membership).where(Membership.user_id == first).values(role=Role.MEMBER))
        first_stepping.commit()
    rival.join(timeout=30)

    assert len(outcome) == 1 and "last owner" in outcome[0]
    with sessions() as looking:
        owners = looking.scalars(select(Membership.user_id).where(Membership.tenant_id == made.id, Membership.role == Role.OWNER))
        assert list(owners) == [second]
