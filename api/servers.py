"""``/api/v1/servers``: the registry of bench servers, for platform operators only; every change audited."""

from datetime import timedelta

from flask import current_app, url_for
from flask.views import MethodView
from flask_smorest.error_handler import ErrorSchema

from api.auth import authenticate_operator_request, request_origin
from api.parsing import Blueprint
from api.schemas import (
    ServerCreateSchema,
    ServerListResponseSchema,
    ServerQueryArgsSchema,
    ServerResponseSchema,
    ServerUpdateSchema,
    page_meta,
)
from api.session import db_session
from provisioning.enums import ServerStatus
from provisioning.jobs.repairs import JobRepairs
from provisioning.platform.db import UnitOfWork
from provisioning.servers.registry import ServerRegistry, ServerView

blp = Blueprint(
    "servers",
    __name__,
    url_prefix="/api/v1/servers",
    description="Bench servers: where tenants' sites are placed, each with a job queue of its own. Platform operators only.",
)
blp.before_request(authenticate_operator_request)


def _registry() -> ServerRegistry:
    return ServerRegistry(db_session(), request_origin())


def _shown(view: ServerView) -> dict:
    server = view.server
    settings = current_app.config["PROVISIONING_SETTINGS"]
    return {
        "id": server.id, "name": server.name, "status": server.status, "capacity": server.capacity,
        "labels": server.labels, "site_count": server.site_count, "active_jobs": view.active_jobs,
        "standby_pool_size": server.standby_pool_size, "standby_batch": server.standby_batch,
        "standby_ready": view.standby_ready, "standby_making": view.standby_making,
        "queue": settings.queue_of_server(server.name), "created_at": server.created_at, "updated_at": server.updated_at,
    }  # fmt: skip


@blp.route("")
class Servers(MethodView):
    @blp.arguments(ServerQueryArgsSchema(), location="query")
    @blp.response(200, ServerListResponseSchema)
    def get(self, args):
        """List the bench servers by name

        Filter with `status`; page with `page` (from 1) and `size` (1..100).
        """
        views, total = _registry().list(**args)
        return {"data": [_shown(view) for view in views], "meta": page_meta(args["page"], args["size"], total)}

    @blp.arguments(ServerCreateSchema())
    @blp.response(201, ServerResponseSchema)
    @blp.alt_response(409, schema=ErrorSchema, description="A server of that name exists")
    def post(self, body):
        """Add an active bench server

        Its workers run with `SERVER_NAME` set to its name, and take jobs from its `queue`.
        """
        registry = _registry()
        registry.add(body["name"], body["capacity"], body.get("labels"))
        db_session().commit()
        location = {"Location": url_for("servers.ServerByName", name=body["name"])}
        return {"data": _shown(registry.view(body["name"]))}, 201, location


@blp.route("/<name>")
class ServerByName(MethodView):
    @blp.response(200, ServerResponseSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    def get(self, name: str):
        """Read one server, with its sites and active jobs"""
        return {"data": _shown(_registry().view(name))}

    @blp.arguments(ServerUpdateSchema())
    @blp.response(200, ServerResponseSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    def patch(self, body, name: str):
        """Change a server's capacity, labels, standby pool or status

        `draining` takes no new sites (its sites stay; move them to empty it; its pool drops its
        standby sites); `down` holds its tenants' jobs, pending, until it is `active` again, when
        the held jobs are sent at once. `standby_pool_size` ready sites are kept for new tenants,
        made `standby_batch` at most per pool job.
        """
        registry = _registry()
        if body.keys() - {"status"}:
            registry.update(
                name, body.get("capacity"), body.get("labels"), body.get("standby_pool_size"), body.get("standby_batch")
            )
        if "status" in body:
            registry.set_status(name, body["status"])
        db_session().commit()
        if body.get("status") == ServerStatus.ACTIVE:
            _send_held_jobs()
        return {"data": _shown(registry.view(name))}

    @blp.response(200, ServerResponseSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such server")
    @blp.alt_response(409, schema=ErrorSchema, description="The server still holds sites")
    def delete(self, name: str):
        """Remove a server that holds no site; the answer is the server as it was"""
        registry = _registry()
        removed = _shown(registry.view(name))
        registry.remove(name)
        db_session().commit()
        return {"data": removed}


def _send_held_jobs() -> None:
    """Publish the jobs that waited while a server was down (and any other the sweeper would)."""
    settings = current_app.config["PROVISIONING_SETTINGS"]
    uow = UnitOfWork(db_session())
    repairs = JobRepairs(uow, dispatch=current_app.extensions["provisioning_dispatcher"].send_job)
    repairs.republish_pending(timedelta(seconds=settings.unclaimed_job_after_seconds))
    uow.commit()
