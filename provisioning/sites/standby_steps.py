"""The steps of standby sites, the same for every driver: a pool job's drop and make, a create's
claim. A driver supplies what it does to one site (``StandbySites``); the platform's record of
them is the step's ``context.standby`` (``servers.standby``).

A claim is never left half done: everything that uses the site's new name is prepared under its
standby name, then its folder is renamed in one step, then the site is checked under its new
name. A claim that fails anywhere puts the site back under its standby name, gives it up (the pool
drops it) and lets the create make its site with new-site, the tenant noticing nothing but the time.
"""

from __future__ import annotations

from typing import Protocol

from provisioning.errors import StepFailed, StepStopped
from provisioning.sites.drivers.base import StepContext


class StandbySites(Protocol):
    """What a driver does to the standby sites of its bench, each named by its label."""

    def fingerprint(self) -> str:
        """What a site made now is made with (SITE_APPS, the bench's app versions, the site domain)."""

    def make_standby(self, label: str) -> str:
        """Make a standby site with every app of SITE_APPS, its scheduler paused; returns the output."""

    def drop_standby(self, label: str) -> str:
        """Drop the standby site if it is there (one whose claim renamed it is not)."""

    def rename_standby(self, label: str) -> str:
        """Make the standby site the tenant's (see the module docstring): a fresh admin password,
        its new name and host_name, its scheduler running, checked under the new name; a rename
        done already (a claim resumed) is only checked.

        Raises:
            StepFailed: after putting the site back under its standby name.
        """


def drop_standbys(sites: StandbySites, context: StepContext) -> str:
    """Settle the pool and drop what it should not keep."""
    to_drop = context.standby.to_drop(sites.fingerprint())
    outputs = []
    for label, why in to_drop.items():
        if context.should_stop():
            raise StepStopped("drop_standbys")
        outputs.append(f"{label} ({why}): {sites.drop_standby(label)}")
        context.standby.dropped(label)
    return "\n".join(outputs) or "nothing to drop"


def make_standbys(sites: StandbySites, context: StepContext) -> str:
    """Make standby sites, one after the other, while the pool wants one and the job may (``StandbyBook.to_make``)."""
    fingerprint = sites.fingerprint()
    made: list[str] = []
    while not context.should_stop() and (label := context.standby.to_make(len(made))) is not None:
        try:
            sites.make_standby(label)
        except StepFailed as failure:
            context.standby.failed_to_make(label, str(failure))
            raise
        context.standby.made(label, fingerprint)
        made.append(label)
    if context.should_stop():
        raise StepStopped("make_standbys")
    return f"made {', '.join(made)} with {fingerprint}" if made else "the pool has what it needs, or no room for more"


def undo_pool_job(sites: StandbySites, context: StepContext) -> str:
    """A cancelled pool job drops the standby site it was making."""
    dropped = []
    for label in context.standby.making():
        context.standby.failed_to_make(label, "its pool job was cancelled")
        sites.drop_standby(label)
        context.standby.dropped(label)
        dropped.append(label)
    return f"dropped the half-made {', '.join(dropped)}" if dropped else "no standby site was being made"


def claim_standby(sites: StandbySites, context: StepContext) -> str:
    """Claim the standby site reserved for this create, or give it up and let the create make one."""
    found = context.standby.to_claim()
    if found is None:
        context.standby.give_up(None, "no longer reserved")
        return "the standby site reserved for this create is no longer there (the pool took it back): making the site"
    label, made_with = found
    if made_with != (now := sites.fingerprint()):
        context.standby.give_up(label, f"stale: made with {made_with}, the bench has {now}")
        return f"{label} is stale (made with {made_with}; the bench has {now}): it is dropped, and the site made"
    try:
        output = sites.rename_standby(label)
    except StepFailed as failure:
        context.standby.give_up(label, str(failure))
        return f"the claim of {label} failed: {failure}; it is put back and dropped, and the site made"
    context.standby.claimed(label)
    return output
