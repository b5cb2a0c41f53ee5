"""The hold queue (scale from zero): held until a replica is routed, bounded in size and time, refused at once
when nothing will come, counted in `queued` while held."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serve_app.hold import HoldQueue, HoldSettings
from serve_app.openai_errors import OpenAIError
from serve_app.routing_cache import RoutingCache

ENTRY = {"deployment_id": "dep-1", "node_id": "node-1", "endpoint": "http://127.0.0.1:1", "served_model": "m"}


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.routing = RoutingCache(self._never)
        self.woken: list[str] = []
        self.why: str | None = None
        self.q = HoldQueue(self.routing, self._wake, self._status, HoldSettings(**settings))

    async def _never(self, version: int, timeout_s: float) -> dict[str, Any]:
        raise AssertionError("no long-poll in unit tests")

    async def _wake(self, dep: str) -> None:
        self.woken.append(dep)

    async def _status(self, dep: str) -> str | None:
        return self.why

    def find(self) -> list[dict[str, Any]] | None:
        return self.routing.table["models"].get("m")

    async def route(self, version: int = 1) -> None:
        await self.routing._set({"version": version, "models": {"m": [ENTRY]}})


def test_held_request_is_counted_wakes_the_autoscaler_and_gets_the_first_replica() -> None:
    async def main() -> None:
        h = Harness(timeout_s=5)
        waiters = [asyncio.create_task(h.q.wait("dep-1", "m", h.find)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert h.q.queued == {"dep-1": 3}  # what the load report sends: demand at zero
        assert h.woken == ["dep-1"]  # woken once for the burst (WAKE_GAP_S)
        await h.route()
        got = await asyncio.gather(*waiters)
        assert all(g == [ENTRY] for g in got)  # nobody held is lost when the replica appears
        assert h.q.queued == {} and h.q.forwarded_total == 3

    asyncio.run(main())


def test_queue_bound_and_wait_bound_answer_503_with_retry_after() -> None:
    async def main() -> None:
        h = Harness(timeout_s=0.3, max_per_deployment=2)
        first = [asyncio.create_task(h.q.wait("dep-1", "m", h.find)) for _ in range(2)]
        await asyncio.sleep(0.02)
        with pytest.raises(OpenAIError) as full:
            await h.q.wait("dep-1", "m", h.find)
        assert full.value.status == 503 and full.value.code == "hold_queue_full" and full.value.retry_after_s
        for t in first:
            with pytest.raises(OpenAIError) as late:
                await t
            assert late.value.code == "hold_timeout" and late.value.retry_after_s and "0.3 s" in late.value.message
        assert h.q.queued == {}

    asyncio.run(main())


def test_nothing_to_wait_for_or_a_failed_cold_start_is_refused_with_the_reason() -> None:
    async def main() -> None:
        h = Harness(timeout_s=10, check_every_s=0.05)
        h.why = "scaled to 0 replicas and has no autoscaling policy"
        with pytest.raises(OpenAIError) as now:
            await h.q.wait("dep-1", "m", h.find)
        assert now.value.status == 503 and "no autoscaling policy" in now.value.message
        assert h.q.queued == {}
        h.why = None
        waiter = asyncio.create_task(h.q.wait("dep-1", "m", h.find))
        await asyncio.sleep(0.02)
        h.why = "the deployment failed to start: engine exited with code 1"
        with pytest.raises(OpenAIError) as failed:
            await waiter
        assert "engine exited with code 1" in failed.value.message and h.q.queued == {}

    asyncio.run(main())


def test_an_already_routed_replica_is_returned_at_once() -> None:
    async def main() -> None:
        h = Harness()
        await h.route()
        assert await h.q.wait("dep-1", "m", h.find) == [ENTRY]

    asyncio.run(main())
