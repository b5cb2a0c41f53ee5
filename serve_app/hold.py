"""Requests held while their deployment has no routed replica: scale from zero, or a cold start under way.

The proxy asks `HoldQueue.wait()` instead of answering 503 at once. The request is counted in `queued` (the
per-deployment figure the replica's load report sends to the inventory, which the autoscaler reads as
demand), the deployment actor is woken at once (`wake`: the load report is pushed first, so the round that
runs sees the request), and the request waits on the replica-local routing table's long-poll until an entry
for it appears; then it is forwarded like any other. Nothing held is dropped when a replica appears: every
waiter re-reads the table on each version.

Bounds: at most `max_per_deployment` held per deployment and API replica (INFERIA_HOLD_QUEUE, default 100),
each at most `timeout_s` (INFERIA_HOLD_TIMEOUT_S, default 120 s); past either, 503 with Retry-After and the
reason. Holding is pointless when the deployment is stopped, deleted, failed (a failed cold start: its
error is the reason) or at zero without a policy: `status` says so and the answer is 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from serve_app.openai_errors import OpenAIError
from serve_app.routing_cache import RoutingCache

log = logging.getLogger(__name__)

Status = Callable[[str], Awaitable[str | None]]  # deployment id -> why holding is pointless (None: hold)
Wake = Callable[[str], Awaitable[None]]  # deployment id -> tell the autoscaler now
Find = Callable[[], list[dict[str, Any]] | None]  # the routed entries the request may use (None/[]: none yet)

WAKE_GAP_S = 0.5  # a deployment is woken at most this often by one API replica


@dataclass
class HoldSettings:
    """INFERIA_HOLD_TIMEOUT_S and INFERIA_HOLD_QUEUE (controller/config.py, through RuntimeConfig)."""

    timeout_s: float = 120.0
    max_per_deployment: int = 100
    check_every_s: float = 1.0  # how often a waiter asks `status` whether holding still makes sense


def _refused(code: str, message: str, retry_after_s: int) -> OpenAIError:
    return OpenAIError(503, code, message, "model", retry_after_s)


class HoldQueue:
    def __init__(
        self,
        routing: RoutingCache,
        wake: Wake,
        status: Status,
        settings: HoldSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routing, self.wake, self.status = routing, wake, status
        self.settings = settings or HoldSettings()
        self.clock = clock
        self.queued: dict[str, int] = {}  # deployment id -> requests held now (only deployments with some)
        self.held_total = self.forwarded_total = 0
        self.refused_total = 0  # queue full, waited too long, or nothing to wait for
        self._woken_at: dict[str, float] = {}

    async def wait(self, deployment_id: str, model: str, find: Find) -> list[dict[str, Any]]:
        """Hold until `find()` names a replica; its entries. OpenAIError 503 with Retry-After otherwise."""
        s = self.settings
        held = self.queued.get(deployment_id, 0)
        if held >= s.max_per_deployment:
            self.refused_total += 1
            raise _refused(
                "hold_queue_full",
                f"model {model!r} has no ready replica yet and {held} requests already wait for one "
                f"(INFERIA_HOLD_QUEUE={s.max_per_deployment}); retry",
                5,
            )
        self.queued[deployment_id] = held + 1
        self.held_total += 1
        try:
            # whether holding makes sense and the wake-up at once, side by side (the control plane's share of a
            # cold start is what the user waits for beyond the engine's own start)
            why, _ = await asyncio.gather(self.status(deployment_id), self._wake(deployment_id))
            if why is not None:
                self.refused_total += 1
                raise _refused("no_healthy_endpoint", f"model {model!r} has no ready replica: {why}", 5)
            start = self.clock()
            deadline = start + s.timeout_s
            next_check = start + s.check_every_s
            while True:
                version = self.routing.version
                found = find()
                if found:
                    self.forwarded_total += 1
                    return found
                now = self.clock()
                if now >= deadline:
                    self.refused_total += 1
                    raise _refused(
                        "hold_timeout",
                        f"model {model!r} has no ready replica after {s.timeout_s:g} s held "
                        "(scaling from zero or starting); retry",
                        10,
                    )
                if now >= next_check:
                    next_check = now + s.check_every_s
                    why = await self.status(deployment_id)
                    if why is not None:
                        self.refused_total += 1
                        raise _refused("no_healthy_endpoint", f"model {model!r} has no ready replica: {why}", 5)
                    await self._wake(deployment_id)  # a lost wake-up (actor restarting) is sent again
                await self.routing.wait_newer(version, max(0.01, min(deadline, next_check) - self.clock()))
        finally:
            n = self.queued.get(deployment_id, 0) - 1
            if n > 0:
                self.queued[deployment_id] = n
            else:
                self.queued.pop(deployment_id, None)

    async def _wake(self, deployment_id: str) -> None:
        now = self.clock()
        if now - self._woken_at.get(deployment_id, -1e9) < WAKE_GAP_S:
            return
        self._woken_at[deployment_id] = now
        if len(self._woken_at) > 10_000:  # bounded: forget the oldest
            for k in sorted(self._woken_at, key=self._woken_at.__getitem__)[:5000]:
                del self._woken_at[k]
        try:
            await asyncio.wait_for(self.wake(deployment_id), 5)
        except Exception as exc:  # the actor restarting: the next check wakes it again
            log.warning("hold: waking the autoscaler for %s failed (%s)", deployment_id, type(exc).__name__)
