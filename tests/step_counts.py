"""The soak's count of step runs per tenant and attempt, from the workers' logs: pure, so a unit
test shows it catches what it must."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, NamedTuple

# What the runner logs as it starts each step: a step run twice shows twice.
STEP_STARTED = re.compile(r"job ([0-9a-f-]{36}): step (\w+) started")


class Attempt(NamedTuple):
    """A job as an attempt of its tenant's: ``retry_of_id`` names the attempt it retries, if any."""

    tenant_id: uuid.UUID
    retry_of_id: uuid.UUID | None


@dataclass(frozen=True)
class StepCounts:
    """Step starts per (tenant, attempt, step), read from the workers' logs, against the steps each
    attempt recorded completed. The job first asked is attempt 1, its retry attempt 2, and so on.

    ``run_twice``: steps that started more than once within one attempt. ``rerun_by_retry``: steps
    that a later attempt of the same tenant started although an earlier attempt had recorded them
    completed (the retry that resumes it must start after them; the step a worker was killed in
    never completed, and may run again). ``unlogged``: steps recorded completed whose start no
    log shows; not zero means the logs no longer say what this counts, and the rest proves nothing.
    """

    started: int
    run_twice: int
    rerun_by_retry: int
    unlogged: int

    @property
    def kept(self) -> bool:
        return self.run_twice == 0 and self.rerun_by_retry == 0 and self.unlogged == 0


def tally_steps(jobs: dict[uuid.UUID, Attempt], completed: Iterable[tuple[uuid.UUID, str]], logs: str) -> StepCounts:
    """``jobs``: every job by id; ``completed``: (job id, step name) of each step recorded completed."""

    def attempt(job_id: uuid.UUID) -> tuple[uuid.UUID, int]:
        """(tenant, attempt number): one more than the attempt it retries."""
        number, job = 1, jobs[job_id]
        while job.retry_of_id is not None:
            number, job = number + 1, jobs[job.retry_of_id]
        return job.tenant_id, number

    runs = Counter((*attempt(uuid.UUID(job_id)), step) for job_id, step in STEP_STARTED.findall(logs))
    done = {(*attempt(job_id), step) for job_id, step in completed}
    return StepCounts(
        started=sum(runs.values()),
        run_twice=sum(1 for starts in runs.values() if starts > 1),
        rerun_by_retry=sum(1 for tenant, number, step in runs if any((tenant, n, step) in done for n in range(1, number))),
        unlogged=sum(1 for key in done if key not in runs),
    )
