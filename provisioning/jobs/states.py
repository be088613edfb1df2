"""The job state machine, as data; ``JobRecords.transition`` applies it with compare-and-set updates.

::

                  cancel
        pending ─────────────────────────────> cancelled
           │                                       ^
           │ claimed by a worker                   │ stopped at a step boundary
           v                    cancel             │
        running ────────────────────────────> cancelling ──> failed
           │                                              (clean-up failed)
           ├──> completed
           └──> failed

``completed``, ``failed`` and ``cancelled`` are final: a finished job never changes again,
and a retry is a new job that points back at the old one.
"""

from provisioning.enums import JobStatus

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLING}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

FINAL_STATUSES = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.COMPLETED})


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """The states a job may move to ``target`` from: a compare-and-set's expected states."""
    return frozenset(status for status, targets in TRANSITIONS.items() if target in targets)


# The states in which a job is its worker's: it runs, or it stops for a cancel.
HELD_BY_A_WORKER = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})
