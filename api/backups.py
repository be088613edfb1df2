"""``/api/v1/provisioning/backups``: the tenant's site backups, as recorded and checked by backup jobs."""

import uuid

from flask.views import MethodView

from api.auth import authenticate_request, caller
from api.parsing import Blueprint
from api.schemas import BackupListResponseSchema, BackupResponseSchema, PageArgsSchema, page_meta
from api.session import db_session
from provisioning.backups.book import BackupBook

blp = Blueprint(
    "backups",
    __name__,
    url_prefix="/api/v1/provisioning/backups",
    description="Backups of the caller's tenant site: each file with its size and sha256, checked before it counts.",
)
blp.before_request(authenticate_request)


@blp.route("")
class Backups(MethodView):
    @blp.arguments(PageArgsSchema(), location="query")
    @blp.response(200, BackupListResponseSchema)
    def get(self, args):
        """List the tenant's backups, newest first

        Failed and pruned backups stay listed, so the record is complete; only `completed` ones
        have files to restore from. Page with `page` (from 1) and `size` (1..100).
        """
        backups, total = BackupBook(db_session()).list(caller().tenant.id, **args)
        return {"data": backups, "meta": page_meta(args["page"], args["size"], total)}


@blp.route("/<uuid:backup_id>")
class BackupById(MethodView):
    @blp.response(200, BackupResponseSchema)
    def get(self, backup_id: uuid.UUID):
        """Read one backup"""
        return {"data": BackupBook(db_session()).get(caller().tenant.id, backup_id)}
