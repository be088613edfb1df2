from provisioning.enums import JobStatus, Role, TenantStatus
from provisioning.models import ProvisioningJob
from tests.helpers import wait_for


def test_a_created_job_is_run_by_the_worker_to_completion(client, tenant_factory, worker, sessions):
    tenant = tenant_factory.create()
    response = client.post("/api/v1/provisioning/jobs", json={"job_type": "create_site"}, headers=tenant.headers(Role.OWNER))
    assert response.status_code == 201, response.json
    job_id = response.json["data"]["id"]

    def finished():
        with sessions() as s:
            job = s.get(ProvisioningJob, job_id)
            return job if job.status in (JobStatus.COMPLETED, JobStatus.FAILED) else None

    job = wait_for(finished, timeout=30, what="the job to finish")
    assert job.status == JobStatus.COMPLETED
    with sessions() as s:
        from provisioning.models import Tenant
        assert s.get(Tenant, tenant.id).status == TenantStatus.ACTIVE
