"""``/api/v1/provisioning/jobs``: request, list, read, retry and cancel provisioning jobs."""

import uuid
from datetime import timedelta

from flask import current_app, url_for
from flask.views import MethodView
from flask_smorest.error_handler import ErrorSchema

from api.auth import authenticate_request, caller, request_origin, writers_only
from api.errors import error_for
from api.limits import limited_as_job_request
from api.parsing import Blueprint
from api.schemas import (
    JOB_CREATE_EXAMPLES,
    IdempotencyHeaderSchema,
    JobCreateSchema,
    JobEventListResponseSchema,
    JobListResponseSchema,
    JobQueryArgsSchema,
    JobResponseSchema,
    JobStepListResponseSchema,
    page_meta,
)
from api.session import db_session
from provisioning.backups.book import BACKUP_ID
from provisioning.enums import SUSPENSIONS, JobStatus, JobType
from provisioning.errors import Forbidden
from provisioning.jobs.requests import JobRequests
from provisioning.jobs.seats import PINNED_SERVER, PLACEMENT_LABELS
from provisioning.jobs.workflows import SKIP_FINAL_BACKUP, SKIP_SAFETY_BACKUP
from provisioning.platform.db import UnitOfWork

blp = Blueprint(
    "jobs",
    __name__,
    url_prefix="/api/v1/provisioning/jobs",
    description="Durable create, delete and backup jobs of the caller's tenant site.",
)
blp.before_request(authenticate_request)


def _service() -> JobRequests:
    """The service on the request's session, as a unit of work a writing view commits
    (``service.uow.commit()``): the new job's message is published once it is committed."""
    settings = current_app.config["PROVISIONING_SETTINGS"]
    return JobRequests(
        UnitOfWork(db_session()),
        dispatch=current_app.extensions["provisioning_dispatcher"].send_job,
        idempotency_ttl=timedelta(hours=settings.idempotency_key_hours),
        origin=request_origin(),
    )


# The platform's decisions: suspension is billing's, a move the operators'.
OPERATOR_JOB_TYPES = SUSPENSIONS | {JobType.MOVE_SITE}


def _operators_only(job_type: JobType) -> None:
    """Let only platform operators ask for, retry or cancel the platform's decisions: an owner who
    could retry an old unsuspend_site, cancel a suspend as it runs, or retry or cancel an operator's
    move (finishing one the operators gave up, onto a server with no room kept for it) could undo them.

    Raises:
        HTTPException 403: the caller is not a platform operator.
    """
    if job_type in OPERATOR_JOB_TYPES and not caller().is_operator:
        raise error_for(Forbidden(f"only platform operators may ask for, retry or cancel {job_type.value}"))


def _options(body: dict) -> dict:
    """Only the options that are on: a job without any keeps ``{}``, and so its idempotency fingerprint.

    Raises:
        HTTPException 403: a caller who is not a platform operator chose the server, or asked for
            a move, a suspend or an unsuspend.
    """
    if body.get(PINNED_SERVER) and not caller().is_operator:
        raise error_for(Forbidden("only platform operators may choose the server a site is on"))
    _operators_only(body["job_type"])
    switches = {name: True for name in (SKIP_FINAL_BACKUP, SKIP_SAFETY_BACKUP) if body.get(name)}
    given = {name: body[name] for name in (PLACEMENT_LABELS, PINNED_SERVER) if body.get(name)}
    return switches | given | ({BACKUP_ID: str(body["backup_id"])} if body.get("backup_id") else {})


def _created(job):
    return {"data": job}, 201, {"Location": url_for("jobs.JobById", job_id=job.id)}


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(JobQueryArgsSchema(), location="query")
    @blp.response(200, JobListResponseSchema)
    def get(self, args):
        """List the tenant's jobs, newest first

        Filter with `status` and `job_type`; page with `page` (from 1) and `size` (1..100).
        """
        jobs, total = _service().list_jobs(caller().tenant.id, **args)
        return {"data": jobs, "meta": page_meta(args["page"], args["size"], total)}

    @writers_only
    @limited_as_job_request
    @blp.arguments(JobCreateSchema(), examples=JOB_CREATE_EXAMPLES)
    @blp.arguments(IdempotencyHeaderSchema(), location="headers")
    @blp.response(201, JobResponseSchema)
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The tenant has an active job, or its state does not allow this job type, or no server has room",
    )
    @blp.alt_response(404, schema=ErrorSchema, description="The tenant has no backup `backup_id`, or no server `server`")
    def post(self, body, headers):
        """Request a job for the tenant's site

        The job is stored, then queued; `queued` is false if the broker could not be reached
        (the job stays pending until it is published again). Needs the owner or admin role.
        `"skip_final_backup": true` (delete_site only) drops the site without a final backup.
        `restore_site` restores the completed backup `backup_id` into the site, after a safety
        backup of the site as it is (`"skip_safety_backup": true` goes without); if the restore
        fails, the site is put back from the safety backup. `restore_drill` restores a backup
        (`backup_id`, or the newest) into a scratch site, checks it, and drops it. A `backup_id`
        the tenant does not have is a 404; one that is not completed a 409.

        A tenant on no server yet is placed by its `create_site`: on the active server with
        room and the fewest sites, among those with all the `labels` asked for, or on the
        `server` a platform operator names. No room is a 409. The jobs of a server that is down
        are held, pending, until it is active again (the job's `message` says so).

        `move_site` (platform operators only) moves the site to the server `server` (default:
        the active one with room and the fewest sites): the site is closed and backed up on its
        server, the backup copied offsite and restored on the new one, checked, the tenant
        switched there, and the old copy dropped. It cannot be cancelled once it has handed its
        work to the new server; a failure leaves the site on one server, and the retry finishes.

        `suspend_site` and `unsuspend_site` (platform operators only: billing's decision) close an
        active site (maintenance page, scheduler stopped; the tenant becomes `suspended`) and open
        it again (`active`). A suspended tenant may have only `backup_site`, `delete_site` and
        `unsuspend_site` (409 otherwise). A suspend or unsuspend that fails half-way leaves the
        tenant `half_suspended`, which its retry, or the other of the two, finishes.
        """
        requester = caller()
        service = _service()
        job = service.request_job(
            requester.tenant.id,
            body["job_type"],
            requested_by_id=requester.user.id,
            idempotency_key=headers.get("idempotency_key"),
            options=_options(body),
        )
        service.uow.commit()
        return _created(job)


@blp.route("/<uuid:job_id>")
class JobById(MethodView):
    @blp.response(200, JobResponseSchema)
    def get(self, job_id: uuid.UUID):
        """Read one job"""
        return {"data": _service().get_job(caller().tenant.id, job_id)}


@blp.route("/<uuid:job_id>/steps")
class JobSteps(MethodView):
    @blp.response(200, JobStepListResponseSchema)
    def get(self, job_id: uuid.UUID):
        """List a job's steps in order, with their status, times and output tail"""
        return {"data": _service().list_job_steps(caller().tenant.id, job_id)}


@blp.route("/<uuid:job_id>/events")
class JobEvents(MethodView):
    @blp.response(200, JobEventListResponseSchema)
    def get(self, job_id: uuid.UUID):
        """List everything that happened to a job, in order, with who or what did it"""
        return {"data": _service().list_job_events(caller().tenant.id, job_id)}


@blp.route("/<uuid:job_id>/retry")
class JobRetry(MethodView):
    @writers_only
    @limited_as_job_request
    @blp.arguments(IdempotencyHeaderSchema(), location="headers")
    @blp.response(201, JobResponseSchema)
    @blp.alt_response(409, schema=ErrorSchema, description="The job is not failed or completed, or the tenant cannot take it now")
    def post(self, headers, job_id: uuid.UUID):
        """Retry a failed or completed job as a new job linked to it"""
        requester = caller()
        service = _service()
        _operators_only(service.get_job(requester.tenant.id, job_id).job_type)
        job = service.retry_job(
            requester.tenant.id, job_id, requested_by_id=requester.user.id, idempotency_key=headers.get("idempotency_key")
        )
        service.uow.commit()
        return _created(job)


@blp.route("/<uuid:job_id>/cancel")
class JobCancel(MethodView):
    @writers_only
    @blp.response(200, JobResponseSchema)
    @blp.alt_response(202, schema=JobResponseSchema, description="The worker was asked to stop; the job is cancelling")
    @blp.alt_response(409, schema=ErrorSchema, description="The job already finished")
    def post(self, job_id: uuid.UUID):
        """Cancel a job

        A pending job is cancelled at once (200). A running one becomes `cancelling` (202) and
        its worker stops at the next step. Cancelling again answers the same way.
        """
        requester = caller()
        service = _service()
        _operators_only(service.get_job(requester.tenant.id, job_id).job_type)
        job = service.cancel_job(requester.tenant.id, job_id, requested_by_id=requester.user.id)
        service.uow.commit()
        return {"data": job}, 202 if job.status == JobStatus.CANCELLING else 200
