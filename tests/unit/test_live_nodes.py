"""The replica's cached copy of the inventory's node view: one fetch per max_age, shared by concurrent
readers, and a fresh fetch after invalidate()."""

from __future__ import annotations

import asyncio
from typing import Any

from serve_app.live_nodes import LiveNodes
from tests.unit.fakes import FakeClock


async def test_readers_share_one_fetch_per_max_age() -> None:
    clock = FakeClock()
    calls: list[int] = []
    gate = asyncio.Event()

    async def fetch() -> list[dict[str, Any]]:
        calls.append(1)
        await gate.wait()
        return [{"id": "n1", "state": "ready"}, {"id": "n2", "state": "unhealthy"}]

    live = LiveNodes(fetch, max_age_s=1.0, clock=clock)
    readers = [asyncio.create_task(live.get()) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    views = await asyncio.gather(*readers)
    assert len(calls) == 1 and all(v["n2"]["state"] == "unhealthy" for v in views)
    clock.advance(0.5)
    await live.get()
    assert len(calls) == 1  # still fresh
    clock.advance(0.6)
    await live.get()
    assert len(calls) == 2
    live.invalidate()
    await live.get()
    assert len(calls) == 3 and live.fetches == 3
