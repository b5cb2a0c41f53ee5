"""Per-key rate limit of the inference routes: requests per minute, set on the deployment (rate_limit_rpm).

A token bucket per deployment in each API replica: it holds at most `rpm` requests and refills at rpm/60
per second, so a burst of `rpm` requests passes and then one every 60/rpm seconds. Over it: 429 with
`Retry-After` (whole seconds until one request would pass). Each API replica counts alone, so with N
replicas the limit is N x rpm (the default is one replica). The limits are read from PostgreSQL and kept
for LIMIT_TTL_S; a PATCH through this replica applies at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from serve_app.errors import ApiError

LIMIT_TTL_S = 5.0

LimitLookup = Callable[[str], Awaitable[int | None]]


class RateLimited(ApiError):
    """429 `rate_limited`; the OpenAI routes answer it in OpenAI's shape with Retry-After."""

    def __init__(self, retry_after_s: int, rpm: int) -> None:
        super().__init__(
            429, "rate_limited", f"rate limit of {rpm} requests per minute reached; retry in {retry_after_s} s"
        )
        self.retry_after_s, self.rpm = retry_after_s, rpm


class RateLimiter:
    def __init__(self, lookup: LimitLookup, clock: Callable[[], float] = time.monotonic) -> None:
        self.lookup = lookup
        self.clock = clock
        self._limits: dict[str, tuple[int | None, float]] = {}  # deployment id -> (rpm, fetched at)
        self._buckets: dict[str, tuple[float, float]] = {}  # deployment id -> (tokens, at)

    def set_limit(self, deployment_id: str, rpm: int | None) -> None:
        self._limits[deployment_id] = (rpm, self.clock())
        if rpm is None:
            self._buckets.pop(deployment_id, None)

    async def limit_of(self, deployment_id: str) -> int | None:
        hit = self._limits.get(deployment_id)
        if hit is not None and self.clock() - hit[1] < LIMIT_TTL_S:
            return hit[0]
        rpm = await self.lookup(deployment_id)
        self._limits[deployment_id] = (rpm, self.clock())
        return rpm

    async def check(self, deployment_id: str | None) -> None:
        """Take one request from the deployment's bucket; raise RateLimited when it is empty."""
        if deployment_id is None:
            return
        rpm = await self.limit_of(deployment_id)
        if not rpm:
            return
        now = self.clock()
        rate = rpm / 60.0
        tokens, at = self._buckets.get(deployment_id, (float(rpm), now))
        tokens = min(float(rpm), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[deployment_id] = (tokens, now)
            raise RateLimited(max(1, math.ceil((1.0 - tokens) / rate)), rpm)
        self._buckets[deployment_id] = (tokens - 1.0, now)
