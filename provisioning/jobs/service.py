"""ProvisioningService: the only writer of jobs, steps and tenant states, for every caller.

It is the three parts of the service on one caller-owned session: requests from API clients and
operators (``requests``), the execution a worker records (``execution``) and the repairs of the
sweeper (``repairs``), all writing through ``records``, where the compare-and-set of a job's
status lives. Each caller uses its own part; the union serves tests and the command line, which
make every kind of request.
"""

from provisioning.jobs.execution import JobExecution
from provisioning.jobs.repairs import JobRepairs
from provisioning.jobs.requests import JobRequests


class ProvisioningService(JobRequests, JobExecution, JobRepairs):
    """Requests, execution and repairs of jobs on one caller-owned session (see ``JobRecords``)."""
