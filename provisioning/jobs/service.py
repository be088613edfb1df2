"""ProvisioningService: the only writer of jobs, steps and tenant states, for every caller.

It is the three parts of the service on one caller-owned session: requests from API clients and
operators (``job_requests``), the execution a worker records (``job_execution``) and the repairs
of the sweeper (``job_repairs``), all writing through ``job_records``, where the compare-and-set
of a job's status lives.
"""

from provisioning.jobs.execution import JobExecution
from provisioning.jobs.records import Beat, Claim, ClaimedJob, Dispatch, StepRecord
from provisioning.jobs.repairs import JobRepairs
from provisioning.jobs.requests import JobRequests

__all__ = ["Beat", "Claim", "ClaimedJob", "Dispatch", "ProvisioningService", "StepRecord"]


class ProvisioningService(JobRequests, JobExecution, JobRepairs):
    """Requests, execution and repairs of jobs on one caller-owned session (see ``JobRecords``)."""
