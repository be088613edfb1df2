"""Soak: many jobs through two worker processes while one of them is SIGKILLed and restarted
every few seconds, on a database and queue of its own. Every job must end in a final state, none
may run twice, none may be lost; jobs failed because their worker was killed are retried once the
killing stops, and must then complete.

    .venv/bin/python -m tests.soak --jobs 500 --kill-every 3

PostgreSQL and RabbitMQ as for the tests (TEST_DATABASE_ADMIN_URL, TEST_RABBITMQ_URL). It prints
the counts and exits non-zero if a promise was broken.

Steps are counted per tenant and attempt (the job first asked is attempt 1, its retry attempt 2),
from the workers' own logs: within an attempt no step may start twice, and a step an attempt
recorded completed must not start again in the retry that resumes it (the step a worker was
killed in may: it never completed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from provisioning.enums import JobStatus, JobType, StepStatus
from provisioning.messaging.broker import Dispatcher
from provisioning.models import JobStep, ProvisioningJob
from provisioning.platform.db import session_factory
from provisioning.platform.settings import load_settings
from provisioning.sites import credentials
from tests.factories import TenantFactory
from tests.helpers import committing, poll_until, wait_for
from tests.stack import RABBITMQ_URL, RUN_ID, SweeperProcess, WorkerProcess, delete_queues, migrated_database
from tests.step_counts import Attempt, StepCounts, tally_steps

FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


def count_steps(sessions, logs: str) -> StepCounts:
    """The soak's step counts, from its database's jobs and the workers' logs."""
    with sessions() as session:
        rows = session.execute(select(ProvisioningJob.id, ProvisioningJob.tenant_id, ProvisioningJob.retry_of_id))
        jobs = {job_id: Attempt(tenant_id, retry_of_id) for job_id, tenant_id, retry_of_id in rows}
        completed = session.execute(select(JobStep.job_id, JobStep.name).where(JobStep.status == StepStatus.COMPLETED)).all()
    return tally_steps(jobs, completed, logs)


@dataclass
class SoakReport:
    jobs: int
    kills: int
    seconds: float
    completed_first: int
    failed_as_lost: int
    retried: int
    completed_in_the_end: int
    not_final: int
    steps: StepCounts

    @property
    def promises_kept(self) -> bool:
        return self.not_final == 0 and self.steps.kept and self.completed_in_the_end == self.jobs

    def lines(self) -> list[str]:
        return [
            f"jobs                      {self.jobs}",
            f"worker kills (SIGKILL)    {self.kills}",
            f"seconds                   {self.seconds:.1f}",
            f"completed first time      {self.completed_first}",
            f"failed as lost            {self.failed_as_lost}",
            f"retried                   {self.retried}",
            f"completed in the end      {self.completed_in_the_end}",
            f"not in a final state      {self.not_final}",
            f"steps started             {self.steps.started}",
            f"steps run twice (attempt) {self.steps.run_twice}",
            f"done steps rerun by retry {self.steps.rerun_by_retry}",
            f"completed steps unlogged  {self.steps.unlogged}",
            f"promises kept             {'yes' if self.promises_kept else 'NO'}",
        ]


def soak(jobs: int, kill_every: float, step_seconds: float = 0.05, deadline: float = 600.0) -> SoakReport:
    queue = f"erpmax.provisioning.soak-{RUN_ID}"
    with migrated_database(f"provisioning_soak_{RUN_ID}") as database_url, tempfile.TemporaryDirectory() as directory:
        environment = {
            "DATABASE_URL": database_url,
            "RABBITMQ_URL": RABBITMQ_URL,
            "PROVISIONING_QUEUE_NAME": queue,
            "SIMULATED_STEP_SECONDS": str(step_seconds),
            "JOB_HEARTBEAT_SECONDS": "0.5",
            "LOST_JOB_AFTER_SECONDS": "3",
            "SWEEP_INTERVAL_SECONDS": "1",
            "UNCLAIMED_JOB_AFTER_SECONDS": "10",
            "SITE_CREDENTIALS_KEY": credentials.new_key(),
            "BACKUP_PATH": str(Path(directory) / "backups"),
            "BACKUP_INTERVAL_HOURS": "0",  # only the soak's own jobs, so they can be counted
        }
        settings = load_settings(environment)
        dispatcher = Dispatcher(settings)
        sessions = session_factory(database_url)
        started = time.monotonic()
        with sessions() as session:
            service = committing(session, dispatch=dispatcher.send_job)
            tenants = [TenantFactory(session).create(roles=()) for _ in range(jobs)]
            job_ids = [service.request_job(tenant.id, JobType.CREATE_SITE).id for tenant in tenants]

        def count(statuses, ids=job_ids) -> int:
            with sessions() as s:
                query = select(func.count()).select_from(ProvisioningJob).where(ProvisioningJob.id.in_(ids))
                return s.scalar(query.where(ProvisioningJob.status.in_(statuses)))

        sweeper = SweeperProcess(environment, Path(directory))
        workers = [WorkerProcess(environment, dispatcher, concurrency=1) for _ in range(2)]
        retired: list[WorkerProcess] = []
        kills = 0
        try:
            # Until every job is final: give the workers kill_every seconds, then kill one.
            while not poll_until(lambda: count(FINAL) == jobs, timeout=kill_every, interval=0.2)[0]:
                if time.monotonic() - started > deadline:
                    break
                victim = workers[kills % 2]
                victim.kill()
                retired.append(victim)
                workers[kills % 2] = WorkerProcess(environment, dispatcher, concurrency=1)
                kills += 1

            completed_first = count([JobStatus.COMPLETED])
            with sessions() as session:
                failed = session.scalars(
                    select(ProvisioningJob).where(ProvisioningJob.id.in_(job_ids), ProvisioningJob.status == JobStatus.FAILED)
                ).all()
                failed_as_lost = sum("was lost" in (job.error or "") for job in failed)
                service = committing(session, dispatch=dispatcher.send_job)
                retries = [service.retry_job(job.tenant_id, job.id).id for job in failed]
            if retries:
                wait_for(lambda: count(FINAL, retries) == len(retries), timeout=deadline, interval=0.5, what="the retries")
            seconds = time.monotonic() - started
        finally:
            for worker in workers:
                worker.stop()
            sweeper.stop()
            delete_queues(queue)

        logs = "".join(worker.output() for worker in [*retired, *workers])
        completed_retries = count([JobStatus.COMPLETED], retries) if retries else 0
        final_retries = count(FINAL, retries) if retries else 0
        report = SoakReport(
            jobs=jobs,
            kills=kills,
            seconds=seconds,
            completed_first=completed_first,
            failed_as_lost=failed_as_lost,
            retried=len(retries),
            completed_in_the_end=completed_first + completed_retries,
            not_final=(jobs - count(FINAL)) + (len(retries) - final_retries),
            steps=count_steps(sessions, logs),
        )
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between SIGKILLs of a worker")
    parser.add_argument("--step-seconds", type=float, default=0.05)
    args = parser.parse_args(argv)
    report = soak(args.jobs, args.kill_every, args.step_seconds)
    print("\n".join(report.lines()))
    return 0 if report.promises_kept else 1


if __name__ == "__main__":
    sys.exit(main())
