"""Per-key rate limit of the inference routes: requests per minute, set on the deployment (rate_limit_rpm).

A token bucket per deployment in each API replica: it holds at most `rpm` requests and refills at rpm/60
per second, so a burst of `rpm` requests passes and then one every 60/rpm seconds. Over it: 429 with
`Retry-After` (whole seconds until one request would pass). Each API replica counts alone, so with N
replicas the limit is N x rpm (the default is one replica). The limit comes with the request's key (the key
index, serve_app/inference_keys.py, reloaded from PostgreSQL at least every 10 s and when the routing
changes), so the request path reads no database; a PATCH through this replica applies at once (an override
kept until the key index has surely read it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from serve_app.errors import ApiError

# a PATCH through this replica wins over the key index's figure this long (the index reloads at least every
# 10 s, and at once after a PATCH through this replica)
OVERRIDE_TTL_S = 15.0


class RateLimited(ApiError):
    """429 `rate_limited`; the OpenAI routes answer it in OpenAI's shape with Retry-After."""

    def __init__(self, retry_after_s: int, rpm: int) -> None:
        super().__init__(
            429, "rate_limited", f"rate limit of {rpm} requests per minute reached; retry in {retry_after_s} s"
        )
        self.retry_after_s, self.rpm = retry_after_s, rpm


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._overrides: dict[str, tuple[int | None, float]] = {}  # deployment id -> (rpm, set at)
        self._buckets: dict[str, tuple[float, float]] = {}  # deployment id -> (tokens, at)

    def set_limit(self, deployment_id: str, rpm: int | None) -> None:
        """A PATCH through this replica: the new limit applies at once."""
        self._overrides[deployment_id] = (rpm, self.clock())
        if rpm is None:
            self._buckets.pop(deployment_id, None)

    def limit_of(self, deployment_id: str, indexed_rpm: int | None) -> int | None:
        hit = self._overrides.get(deployment_id)
        if hit is not None:
            if self.clock() - hit[1] < OVERRIDE_TTL_S:
                return hit[0]
            del self._overrides[deployment_id]
        return indexed_rpm

    def check(self, deployment_id: str | None, indexed_rpm: int | None) -> None:
        """Take one request from the deployment's bucket (its limit as the key index has it, unless a PATCH
        here changed it lately); raise RateLimited when it is empty."""
        if deployment_id is None:
            return
        rpm = self.limit_of(deployment_id, indexed_rpm)
        if not rpm:
            self._buckets.pop(deployment_id, None)
            return
        now = self.clock()
        rate = rpm / 60.0
        tokens, at = self._buckets.get(deployment_id, (float(rpm), now))
        tokens = min(float(rpm), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[deployment_id] = (tokens, now)
            raise RateLimited(max(1, math.ceil((1.0 - tokens) / rate)), rpm)
        self._buckets[deployment_id] = (tokens - 1.0, now)
