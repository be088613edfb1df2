"""Where the rate limits count: the storage of RATE_LIMIT_STORAGE_URL, or this process's memory
while that storage cannot be reached.

On Redis every web process (and every machine) counts into the same counters, so a limit holds
for the whole deployment. Its keys start with the deployment's queue name (``<queue>.limits:``):
deployments and test runs that share one Redis never count into each other's limits.

Counts are fixed windows (``limits``' fixed-window strategy): one atomic INCR per hit, its key
expiring a period after the first hit. A moving window stores an entry per request (1,200 a
minute for each token at the default) and runs a script over them on every request; the fixed
window's cost is one counter, and its error is bounded: at most twice the limit in the moment a
window ends and the next begins, which no limit here needs to be exact against. Its
``Retry-After`` is exact: the seconds left on the key. (The window opens at a key's first hit,
not on the clock's minute, so a client cannot time its bursts to the clock either.)

When the storage fails (Redis down, refused, too slow), the API keeps serving: refusing every
request because a counter is out of reach would turn a Redis outage into an API outage, and
answering 500 would be worse. The limits then count in this process's memory, each process for
itself (laxer, but guessing tokens still stops), a warning is logged, and the storage is tried
again ``RETRY_SECONDS`` later. Timeouts are short, so a storage that hangs costs one request a
fraction of a second per retry, not every request.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long the storage is left alone after it failed, before a request tries it again.
RETRY_SECONDS = 30.0
# Redis answers in well under a millisecond on its machine or network; this is long enough for a
# busy one, and short enough that a request tried against a hung one is still answered.
REDIS_TIMEOUT_SECONDS = 0.5


class LimitStorage:
    """Counters in the configured storage, falling back to memory while it fails (see the module)."""

    def __init__(self, url: str, key_prefix: str, retry_seconds: float = RETRY_SECONDS):
        self.url = url
        self.retry_seconds = retry_seconds
        options = {"socket_connect_timeout": REDIS_TIMEOUT_SECONDS, "socket_timeout": REDIS_TIMEOUT_SECONDS}
        remote = not url.startswith("memory://")
        storage = storage_from_string(url, key_prefix=key_prefix, wrap_exceptions=True, **(options if remote else {}))
        self.configured = FixedWindowRateLimiter(storage)
        self.fallback = FixedWindowRateLimiter(MemoryStorage()) if remote else self.configured
        # time.monotonic() until which the fallback counts; 0 while the storage is in use.
        self.failed_until = 0.0

    def run(self, counting: Callable[[FixedWindowRateLimiter], T]) -> T:
        """``counting(strategy)`` on the configured storage; on the fallback while it fails."""
        if self.failed_until > time.monotonic():
            return counting(self.fallback)
        try:
            result = counting(self.configured)
        except StorageError as error:
            log.warning(
                "rate limits: the storage %s failed (%s); counting in this process's memory, trying it again in %gs",
                self.url.partition("@")[2] or self.url,  # never the password of redis://:secret@host
                error,
                self.retry_seconds,
            )
            self.failed_until = time.monotonic() + self.retry_seconds
            return counting(self.fallback)
        if self.failed_until:
            log.warning("rate limits: the storage answers again; counting there")
            self.failed_until = 0.0
        return result
