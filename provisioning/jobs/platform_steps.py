"""The steps that are the platform's own (``Step.by_platform``), as a runner performs them: the
backup steps (``backups.steps``), and a move's switch of the tenant to its new server."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session, sessionmaker

from provisioning.backups.book import BACKUP_ID
from provisioning.backups.proofs import RestoreProofs
from provisioning.backups.steps import BackupSteps
from provisioning.jobs.records import ClaimedJob
from provisioning.jobs.workflows import SWITCH_SERVER, TARGET
from provisioning.servers.placement import Placement


class PlatformSteps:
    """Each step in a short transaction of its own."""

    def __init__(self, sessions: sessionmaker[Session], backup_steps: BackupSteps):
        self.sessions = sessions
        self.backup_steps = backup_steps

    def run(self, step: str, job: ClaimedJob) -> str:
        if step == SWITCH_SERVER:
            return self.switch_server(job)
        return self.backup_steps.run(step, job.id, job.tenant_id, job.options)

    def switch_server(self, job: ClaimedJob) -> str:
        """From here the tenant is served from the server its move kept room on."""
        target = str(job.options[TARGET])
        with self.sessions() as session:
            switched = Placement(session).switch(job.tenant_id, target)
            session.commit()
        return f"the site is served from server {target}" + ("" if switched else " (it was already)")

    def disprove(self, job: ClaimedJob, error: str) -> None:
        """Record on the backup the job restores that it could not be restored."""
        with self.sessions() as session:
            RestoreProofs(session).disprove(job.tenant_id, uuid.UUID(str(job.options[BACKUP_ID])), error)
