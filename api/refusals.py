"""Refused API requests (401, 403) in the audit trail, with the client's address, at most one entry
a minute for each kind of refusal from each address.

Who knocks with bad tokens, or at doors their role does not open, is what an operator looks for
after an incident; a script knocking a thousand times a second must not bury everything else
in the trail, nor write a thousand rows a second into it. A kind is (address, status, reason);
the first refusal of a kind in a minute writes an entry, the others are only counted, and the
next entry says how many there were since the previous one. The counting happens in the rate
limits' storage, so on Redis the minute holds across every web process.

The reason is the refusal's message with any quoted value blanked out for the kind (``X-Tenant-ID
'a-slug' is not a tenant you belong to``: a client could vary the slug forever, and make each
refusal a kind of its own). The entry keeps the message itself, never a token: no message of
ours holds one.
"""

from __future__ import annotations

import hashlib
import logging
import re

from flask import Response, g, request
from limits import parse
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.exc import SQLAlchemyError

from api.limit_storage import LimitStorage
from api.session import db_session
from provisioning.accounts import audit
from provisioning.accounts.audit import Origin
from provisioning.platform.quoting import first_line, shortened

log = logging.getLogger(__name__)

ACTION = "request.refused"
# One entry per kind in this window; the refusals in between are counted for the next entry.
AUDITED_ONCE_PER = parse("1/minute")
# How long uncounted refusals wait for the next entry of their kind; older ones are forgotten.
TALLY_SECONDS = 24 * 3600
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class RefusalAudit:
    """Audits an app's refusals; ``audited_once_per`` is the window of one entry per kind."""

    def __init__(self, storage: LimitStorage, audited_once_per=AUDITED_ONCE_PER):
        self.storage = storage
        self.audited_once_per = audited_once_per

    def record(self, response: Response) -> None:
        """Audit this refusal if it is the first of its kind this minute; else only count it."""
        message = (response.get_json(silent=True) or {}).get("message") or response.status
        address = request.remote_addr or "unknown"
        kind = "\n".join((address, str(response.status_code), QUOTED.sub("'...'", message)))
        refused = self.storage.run(lambda strategy: self._count(strategy, hashlib.sha256(kind.encode()).hexdigest()[:32]))
        if refused:
            self._write(response.status_code, message, refused)

    def _count(self, strategy: FixedWindowRateLimiter, kind: str) -> int:
        """How many refusals of the kind the entry to write now covers; 0 when none is written now.

        The tally is taken down by what the entry reports rather than cleared, so a refusal
        counted by another process meanwhile waits for the next entry instead of being lost."""
        tally = f"refused/{kind}"
        refused = strategy.storage.incr(tally, TALLY_SECONDS)
        if not strategy.hit(self.audited_once_per, "refusal-audited", kind):
            return 0
        strategy.storage.incr(tally, TALLY_SECONDS, amount=-refused)
        return refused

    def _write(self, status: int, message: str, refused: int) -> None:
        """The entry, in the request's session, after a rollback: nothing a refused request left
        uncommitted is kept with it. A failed write is logged; the refusal is answered anyway."""
        user = g.get("user")  # who called, once authenticated (``api.auth``)
        origin = Origin(f"user {user.id}" if user else "anonymous", request.remote_addr, request.user_agent.string)
        detail = f"{status}: {message}"
        if refused > 1:
            detail += f"; {refused} refused like this from this address since the previous entry"
        session = db_session()
        try:
            session.rollback()
            tenant_id = g.caller.tenant.id if "caller" in g else None
            audit.record(session, origin, ACTION, tenant_id, f"{request.method} {shortened(request.path, 200)}", detail)
            session.commit()
        except SQLAlchemyError as error:
            session.rollback()
            log.warning("could not audit a refused request: %s", first_line(error))
