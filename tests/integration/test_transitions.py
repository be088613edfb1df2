"""Every job status change is one compare-and-set built from the table of allowed moves."""

import pytest
from sqlalchemy import func, select

from provisioning.enums import JobStatus, JobType
from provisioning.jobs.service import ProvisioningService
from provisioning.models import JobEvent
from tests.helpers import committing
from tests.records import read_job


def events_of(session, job_id) -> int:
    return session.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id))


def test_a_move_the_table_allows_changes_the_job_once_and_records_it(session, sessions, tenant_factory):
    job = committing(session).request_job(tenant_factory.create().id, JobType.CREATE_SITE)
    service = ProvisioningService(session)
    before = events_of(session, job.id)

    assert service.transition(job.id, JobStatus.CANCELLED, message="gone") is not None
    assert service.transition(job.id, JobStatus.CANCELLED) is None, "a second process loses the race"
    session.commit()

    assert (read_job(sessions, job.id).status, read_job(sessions, job.id).message) == (JobStatus.CANCELLED, "gone")
    assert events_of(session, job.id) == before + 1


def test_a_move_from_a_state_the_table_does_not_allow_is_refused_before_it_is_tried(session, sessions, tenant_factory):
    job = committing(session).request_job(tenant_factory.create().id, JobType.CREATE_SITE)
    service = ProvisioningService(session)

    with pytest.raises(ValueError, match="no move"):
        service.transition(job.id, JobStatus.COMPLETED, sources={JobStatus.PENDING})
    assert service.transition(job.id, JobStatus.RUNNING, sources={JobStatus.PENDING}, worker="w") is not None
    assert service.transition(job.id, JobStatus.FAILED, sources={JobStatus.CANCELLING}) is None, "narrowed, it is not there"
    session.commit()

    assert read_job(sessions, job.id).status == JobStatus.RUNNING
