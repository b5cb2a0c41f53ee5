"""The inventory's live view of every node, fetched at most once per `max_age_s` per API replica.

The console's node pages and /metrics read it: with 10,000 nodes one snapshot is one actor call of a
few MB, so concurrent readers share the call and its answer for a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

Fetch = Callable[[], Awaitable[list[dict[str, Any]]]]


class LiveNodes:
    def __init__(self, fetch: Fetch, max_age_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch, self.max_age_s, self.clock = fetch, max_age_s, clock
        self._at = -1e18
        self._by_id: dict[str, dict[str, Any]] = {}
        self._lock: asyncio.Lock | None = None
        self.fetches = 0

    async def get(self) -> dict[str, dict[str, Any]]:
        """node id -> the inventory's view (state, health_score, seconds_since_heartbeat, reason, ...)."""
        if self.clock() - self._at < self.max_age_s:
            return self._by_id
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.clock() - self._at >= self.max_age_s:  # another reader may have fetched meanwhile
                nodes = await self.fetch()
                self.fetches += 1
                self._by_id = {n["id"]: n for n in nodes}
                self._at = self.clock()
        return self._by_id

    def invalidate(self) -> None:
        """After an action (drain, delete), the next reader fetches a fresh view."""
        self._at = -1e18
