"""ProvisioningService: the three writers of jobs, steps and tenant states together, for tests.

It is the three parts of the service on one caller-owned session: requests from API clients and
operators (``requests``), the execution a worker records (``execution``) and the repairs of the
sweeper (``repairs``), all writing through ``records``, where the compare-and-set of a job's
status lives. Each caller of the service uses its own part; tests, which play every caller,
use the union.
"""

from provisioning.jobs.execution import JobExecution
from provisioning.jobs.repairs import JobRepairs
from provisioning.jobs.requests import JobRequests


class ProvisioningService(JobRequests, JobExecution, JobRepairs):
    """Requests, execution and repairs of jobs on one caller-owned session (see ``JobRecords``)."""
