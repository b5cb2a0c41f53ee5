"""Capped exponential backoff with jitter for provider calls (TemporaryProviderError only)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from adapters.base import TemporaryProviderError

T = TypeVar("T")
log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        raw = min(self.cap_s, self.base_s * (2**attempt))
        r = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return raw * r


async def with_retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    sleep: Sleep = asyncio.sleep,
    timeout_s: float | None = None,
) -> T:
    """Run fn, retrying TemporaryProviderError (and timeouts) up to the policy's budget."""
    last: Exception | None = None
    for attempt in range(policy.attempts):
        try:
            if timeout_s is not None:
                async with asyncio.timeout(timeout_s):  # unlike wait_for, never swallows a cancel
                    return await fn()
            return await fn()
        except (TemporaryProviderError, TimeoutError) as exc:
            last = exc
            if attempt + 1 >= policy.attempts:
                break
            d = policy.delay(attempt)
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, exc, attempt + 1, policy.attempts - 1, d)
            await sleep(d)
    assert last is not None
    if isinstance(last, TimeoutError):
        raise TemporaryProviderError(f"{what} timed out after {policy.attempts} attempts") from last
    raise last
