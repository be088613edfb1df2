"""Domain errors; the API maps each to one HTTP status in one place."""


class ProvisioningError(Exception):
    """Base of the errors a caller is expected to handle and show."""


class NotFound(ProvisioningError):
    """The object does not exist, or belongs to another tenant (which must look the same)."""


class Conflict(ProvisioningError):
    """The request is valid but the current state forbids it; the message says why."""


class Gone(ProvisioningError):
    """What was asked for existed once and never will again (a secret that could be read only once)."""


class BrokerUnreachable(ProvisioningError):
    """The broker did not answer, refused us, or failed a moment ago (publishing then pauses); the
    message says which, for the operator."""


class StepFailed(Exception):
    """A driver step failed in a way the job should report (not a bug in our code)."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


class BackupUnrestorable(StepFailed):
    """The backup itself cannot be restored (its files are gone or changed, or bench could not
    restore its dump, or the site it made lacks tables): a step's failure that also counts
    against the backup (``backups.proofs``)."""


class SiteUnchanged(StepFailed):
    """A step failed before it changed anything of the site (bench's root login refused, say): the
    tenant goes back to where it was, and nothing is undone."""


class StepStopped(Exception):
    """A driver step stopped early because it was asked to (a cancel, or the job was taken away)."""


class StepTerminated(BaseException):
    """A step had to end whether it would stop or not (its cancel's grace period is over, its job
    is no longer this worker's, its worker is stopping); the message says which.

    Raised where a step waits on outside work (a bench command's polling loop), once that work
    is stopped. A BaseException, like KeyboardInterrupt, so that the driver code it passes
    through on its way out (an ``except Exception``) cannot swallow it and carry on."""


class IdempotencyKeyReused(ProvisioningError):
    """An ``Idempotency-Key`` came back with a different request than the one it was first used for."""


class AuthenticationFailed(ProvisioningError):
    """The bearer token is unknown, expired or revoked."""


class MissingCredentials(AuthenticationFailed):
    """The request carries no bearer token at all."""


class Forbidden(ProvisioningError):
    """The caller is known but may not do this (not a member, or a member who writes)."""


class InvalidRequest(ProvisioningError):
    """The request cannot be understood as given (for example, no tenant could be chosen)."""


class Unprocessable(ProvisioningError):
    """A field of the request is well formed but not acceptable (a token's scope its user's role
    does not allow, a lifetime beyond the maximum): the API's 422, naming the field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
