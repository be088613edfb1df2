"""Marshmallow schemas of the API: requests, resources and the response envelopes."""

from pathlib import PurePath

from flask_smorest.error_handler import ErrorSchema
from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema

from provisioning.enums import BackupStatus, JobStatus, JobType, Role, ServerStatus, StepStatus, TenantStatus
from provisioning.jobs.workflows import RESTORES
from provisioning.platform.identifiers import IDEMPOTENCY_KEY, SLUG, Identifier
from provisioning.servers.registry import DEFAULT_CAPACITY, MAX_CAPACITY, MAX_LABELS
from provisioning.servers.standby import MAX_BATCH, MAX_POOL_SIZE

MAX_PAGE_SIZE = 100
# The row offset, (page - 1) * size, must fit PostgreSQL's bigint: a larger page was a 500.
MAX_PAGE = 1_000_000_000


class JobSchema(Schema):
    id = fields.UUID(dump_only=True)
    tenant_id = fields.UUID(dump_only=True)
    job_type = fields.Enum(JobType, by_value=True, dump_only=True)
    status = fields.Enum(JobStatus, by_value=True, dump_only=True)
    progress = fields.Integer(dump_only=True, metadata={"description": "0..100, never goes down"})
    message = fields.String(dump_only=True, metadata={"description": "What the job is doing, for people"})
    error = fields.String(dump_only=True, allow_none=True)
    requested_by_id = fields.UUID(dump_only=True, allow_none=True)
    retry_of_id = fields.UUID(dump_only=True, allow_none=True, metadata={"description": "The job this one retries"})
    options = fields.Dict(dump_only=True, metadata={"description": "What the request asked for beyond the job type"})
    request_id = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={"description": "X-Request-ID of the request that asked for it: search the logs for it"},
    )
    resume_from = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={"description": "the step a retry starts at; the steps before it were done by the job it retries"},
    )
    worker = fields.String(dump_only=True, allow_none=True)
    queued = fields.Function(
        lambda job: job.dispatched_at is not None,
        dump_only=True,
        # A computed field has no type of its own for the spec: it is said here.
        metadata={"type": "boolean", "description": "Whether the job's message reached the queue"},
    )
    dispatched_at = fields.DateTime(dump_only=True, allow_none=True)
    cancel_requested_at = fields.DateTime(dump_only=True, allow_none=True)
    started_at = fields.DateTime(dump_only=True, allow_none=True)
    completed_at = fields.DateTime(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)


class JsonBoolean(fields.Boolean):
    """JSON's true or false only: a destructive option is not switched on by "yes", "1" or 1."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class FullMatch(validate.Regexp):
    """An identifier's check: its pattern must match the whole value.

    marshmallow's ``Regexp`` calls ``re.match``, whose ``$`` lets a trailing newline through; this
    one asks the identifier (``provisioning.platform.identifiers``), and still publishes its pattern in the spec.
    """

    def __init__(self, identifier: Identifier):
        super().__init__(identifier.pattern, error=f"must be {identifier.rule}")
        self.identifier = identifier

    def __call__(self, value: str) -> str:
        if not self.identifier.is_valid(value):
            raise ValidationError(self._format_error(value))
        return value


def placement_labels(description: str) -> fields.Dict:
    """Labels of a server (``{"region": "eu"}``): short lowercase names and values."""
    return fields.Dict(
        keys=fields.String(validate=FullMatch(SLUG)),
        values=fields.String(validate=FullMatch(SLUG)),
        validate=validate.Length(max=MAX_LABELS),
        metadata={"description": description, "example": {"region": "eu"}},
    )


LABELS = placement_labels("Placement labels, such as region or plan")


class JobCreateSchema(Schema):
    job_type = fields.Enum(
        JobType,
        by_value=True,
        required=True,
        validate=validate.NoneOf([JobType.REFILL_POOL], error="refill_pool jobs are the sweeper's, for standby pools"),
        metadata={
            "description": "refill_pool is not asked for: the sweeper asks for it. move_site, suspend_site and "
            "unsuspend_site: platform operators only"
        },
    )
    skip_final_backup = JsonBoolean(
        metadata={"description": "delete_site only: drop the site without taking a final backup first", "default": False},
    )
    backup_id = fields.UUID(
        allow_none=True,
        metadata={
            "default": None,
            "description": "restore_site: the completed backup to restore (required); restore_drill: the one to drill "
            "(default: the newest)"
        },
    )
    skip_safety_backup = JsonBoolean(
        metadata={"description": "restore_site only: restore without a safety backup of the site first", "default": False},
    )
    labels = placement_labels(
        "create_site of a tenant on no server yet: place it on a server with all these labels (a region, a plan)"
    )
    server = fields.String(
        validate=FullMatch(SLUG),
        metadata={
            "description": "Platform operators only. create_site: place the tenant on this server; move_site: move "
            "the site to this server (default: the active one with room and the fewest sites)"
        },
    )

    @validates_schema
    def options_fit_the_job_type(self, data, **_kwargs):
        # `false` is the default, harmless on any job (Swagger UI's "Try it out" sends it); only
        # asking to skip a backup is meaningless, and so refused, outside the job that takes it.
        job_type = data.get("job_type")
        if data.get("skip_final_backup") and job_type != JobType.DELETE_SITE:
            raise ValidationError("only a delete_site job can skip its final backup", "skip_final_backup")
        if data.get("skip_safety_backup") and job_type != JobType.RESTORE_SITE:
            raise ValidationError("only a restore_site job can skip its safety backup", "skip_safety_backup")
        if data.get("backup_id") and job_type not in RESTORES:
            raise ValidationError("only restore_site and restore_drill restore a backup", "backup_id")
        if job_type == JobType.RESTORE_SITE and not data.get("backup_id"):
            raise ValidationError("restore_site needs the id of the backup to restore", "backup_id")
        if data.get("labels") and job_type != JobType.CREATE_SITE:
            raise ValidationError("only a create_site job places a tenant on a server", "labels")
        if data.get("server") and job_type not in (JobType.CREATE_SITE, JobType.MOVE_SITE):
            raise ValidationError("only create_site and move_site name a server", "server")


# The request bodies the docs offer, each one a request the API accepts (the tenant's state decides the rest).
JOB_CREATE_EXAMPLES = {
    "create_site": {"summary": "Create the tenant's site", "value": {"job_type": "create_site"}},
    "backup_site": {"summary": "Back the site up", "value": {"job_type": "backup_site"}},
    "delete_site": {"summary": "Delete the site, after a final backup", "value": {"job_type": "delete_site"}},
    "restore_site": {
        "summary": "Restore a backup into the site, after a safety backup",
        "value": {"job_type": "restore_site", "backup_id": "7d4f3c2e-5b1a-4e8f-9c6d-2a1b0e9f8d7c"},
    },
    "restore_drill": {"summary": "Prove the newest backup restores, in a scratch site", "value": {"job_type": "restore_drill"}},
    "move_site": {
        "summary": "Move the site to another server (platform operators only)",
        "value": {"job_type": "move_site", "server": "bench-eu-2"},
    },
    "suspend_site": {
        "summary": "Suspend the site: maintenance page, scheduler stopped (platform operators only)",
        "value": {"job_type": "suspend_site"},
    },
    "unsuspend_site": {
        "summary": "Open a suspended site again (platform operators only)",
        "value": {"job_type": "unsuspend_site"},
    },
}


class IdempotencyHeaderSchema(Schema):
    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        validate=FullMatch(IDEMPOTENCY_KEY),
        metadata={"description": "Repeat a request safely: the same key and body answer with the same job"},
    )


class QueryArgsSchema(Schema):
    """Query arguments, where a name given with no value means "not given".

    ``?status=&job_type=`` is what a client sends when it fills a template's blanks with nothing
    (the README's table shows them so): it asks for no filter, not for a status named "".
    """

    @pre_load
    def empty_means_not_given(self, data, **_kwargs):
        return {name: value for name, value in data.items() if value != ""}


class PageArgsSchema(QueryArgsSchema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE))
    size = fields.Integer(load_default=20, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))


class JobQueryArgsSchema(PageArgsSchema):
    status = fields.Enum(JobStatus, by_value=True)
    job_type = fields.Enum(JobType, by_value=True)


class JobStepSchema(Schema):
    position = fields.Integer()
    name = fields.String()
    status = fields.Enum(StepStatus, by_value=True)
    message = fields.String()
    output = fields.String(metadata={"description": "The last lines the step printed"})
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)


class JobEventSchema(Schema):
    id = fields.Integer(metadata={"description": "Increases with every event of the service"})
    kind = fields.String(metadata={"description": "created, dispatched, claimed, step_started, ..., completed"})
    actor = fields.String(metadata={"description": "`user <id>`, `worker <name> pid <pid>`, `sweeper`, `system`"})
    detail = fields.String()
    created_at = fields.DateTime()


class BackupFileSchema(Schema):
    kind = fields.String(metadata={"description": "database, config, public_files or private_files"})
    # The base name only: where the platform keeps its files is none of the client's business.
    name = fields.Function(lambda file: PurePath(file["path"]).name, metadata={"type": "string"})
    size = fields.Integer(metadata={"description": "bytes"})
    sha256 = fields.String()


class BackupSchema(Schema):
    id = fields.UUID()
    job_id = fields.UUID(allow_none=True, metadata={"description": "The job that took it"})
    site = fields.String()
    status = fields.Enum(
        BackupStatus,
        by_value=True,
        metadata={"description": "completed once every file was checked; pruned when retention deleted its files"},
    )
    size = fields.Integer(metadata={"description": "bytes, all files together"})
    files = fields.List(fields.Nested(BackupFileSchema))
    error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    completed_at = fields.DateTime(allow_none=True)
    pruned_at = fields.DateTime(allow_none=True)
    restore_proven_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "When it last restored into a site that answered (a restore_site or a restore_drill)"},
    )
    restore_failed_at = fields.DateTime(
        allow_none=True, metadata={"description": "When a restore of it last failed; it counts until a later one proves it"}
    )
    restore_error = fields.String(allow_none=True, metadata={"description": "Why that restore failed"})
    offsite_copied_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "When every file was copied to offsite storage and its checksum checked; null: not copied"},
    )
    offsite_deleted_at = fields.DateTime(
        allow_none=True, metadata={"description": "When its offsite copy was deleted (it was pruned or discarded)"}
    )


class AdminPasswordSchema(Schema):
    site_user = fields.String(metadata={"description": "The site user the password is for"})
    password = fields.String()
    revealed_at = fields.DateTime()


class TenantSchema(Schema):
    id = fields.UUID()
    slug = fields.String()
    name = fields.String()
    status = fields.Enum(TenantStatus, by_value=True)
    role = fields.Enum(Role, by_value=True, allow_none=True, metadata={"description": "None for a platform operator"})


class ServerSchema(Schema):
    id = fields.UUID()
    name = fields.String(metadata={"example": "bench-eu-1"})
    status = fields.Enum(ServerStatus, by_value=True, metadata={"description": "active, draining or down"})
    capacity = fields.Integer(metadata={"description": "Most sites it takes"})
    labels = fields.Dict(keys=fields.String(), values=fields.String())
    site_count = fields.Integer(
        metadata={"description": "Sites that take room on it: its tenants', and standby sites not yet claimed"}
    )
    active_jobs = fields.Integer(
        metadata={"description": "Pending, running or cancelling jobs of its tenants and its standby pool"}
    )
    standby_pool_size = fields.Integer(metadata={"description": "Ready standby sites it keeps for new tenants (0: no pool)"})
    standby_batch = fields.Integer(metadata={"description": "Most standby sites one pool job makes"})
    standby_ready = fields.Integer(metadata={"description": "Standby sites ready to be claimed"})
    standby_making = fields.Integer(metadata={"description": "Standby sites being made"})
    queue = fields.String(metadata={"description": "The queue its workers take jobs from"})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class ServerCreateSchema(Schema):
    name = fields.String(required=True, validate=FullMatch(SLUG), metadata={"example": "bench-eu-1"})
    capacity = fields.Integer(
        load_default=DEFAULT_CAPACITY, validate=validate.Range(min=1, max=MAX_CAPACITY), metadata={"example": 200}
    )
    labels = LABELS


class ServerUpdateSchema(Schema):
    capacity = fields.Integer(validate=validate.Range(min=1, max=MAX_CAPACITY), metadata={"example": 250})
    standby_pool_size = fields.Integer(
        validate=validate.Range(min=0, max=MAX_POOL_SIZE), metadata={"example": 3, "description": "0 turns the pool off"}
    )
    standby_batch = fields.Integer(validate=validate.Range(min=1, max=MAX_BATCH), metadata={"example": 1})
    labels = LABELS
    status = fields.Enum(
        ServerStatus, by_value=True, metadata={"description": "draining: no new sites; down: its jobs are held; active"}
    )


class ServerQueryArgsSchema(PageArgsSchema):
    status = fields.Enum(ServerStatus, by_value=True)


class HealthSchema(Schema):
    status = fields.String(metadata={"example": "ok"})


class PartStateSchema(Schema):
    ok = fields.Boolean()


def part_states() -> fields.Dict:
    """Each part's name and whether it is ok: what anyone may know. Why one is down is in the log."""
    return fields.Dict(
        keys=fields.String(),
        values=fields.Nested(PartStateSchema),
        metadata={"description": "database, migrations, broker: each ok or not; why not is in the log and `provisioning doctor`"},
    )


class ReadinessSchema(Schema):
    status = fields.String(metadata={"example": "ready"})
    checks = part_states()


class NotReadySchema(ErrorSchema):
    checks = part_states()


class PageMetaSchema(Schema):
    page = fields.Integer()
    size = fields.Integer()
    total = fields.Integer()
    pages = fields.Integer()


def single_response(item_schema: type[Schema], name: str) -> type[Schema]:
    """``{"data": {...}}`` around one item."""
    return Schema.from_dict({"data": fields.Nested(item_schema)}, name=name)


def list_response(item_schema: type[Schema], name: str, paginated: bool = True) -> type[Schema]:
    """``{"data": [...], "meta": {...}}`` around a page of items (no ``meta`` when not paginated)."""
    envelope = {"data": fields.List(fields.Nested(item_schema))}
    if paginated:
        envelope["meta"] = fields.Nested(PageMetaSchema)
    return Schema.from_dict(envelope, name=name)


JobResponseSchema = single_response(JobSchema, "JobResponse")
JobListResponseSchema = list_response(JobSchema, "JobListResponse")
JobStepListResponseSchema = list_response(JobStepSchema, "JobStepListResponse", paginated=False)
TenantResponseSchema = single_response(TenantSchema, "TenantResponse")
JobEventListResponseSchema = list_response(JobEventSchema, "JobEventListResponse", paginated=False)
BackupResponseSchema = single_response(BackupSchema, "BackupResponse")
BackupListResponseSchema = list_response(BackupSchema, "BackupListResponse")
AdminPasswordResponseSchema = single_response(AdminPasswordSchema, "AdminPasswordResponse")
ServerResponseSchema = single_response(ServerSchema, "ServerResponse")
ServerListResponseSchema = list_response(ServerSchema, "ServerListResponse")


def page_meta(page: int, size: int, total: int) -> dict:
    return {"page": page, "size": size, "total": total, "pages": (total + size - 1) // size}
