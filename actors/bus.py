"""Redis event bus: routing snapshots + pub/sub, and a capped `events` stream.

Publishing is best effort: when Redis is down the control plane keeps serving from memory
and long-poll, and the next change publishes the whole snapshot again.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

ROUTING_CHANNEL = "routing"
ROUTING_LATEST = "routing:latest"
EVENTS_STREAM = "events"
EVENTS_MAXLEN = 10_000
SNAPSHOT_TTL_S = 3600
# versioned snapshots kept besides routing:latest: a subscriber that missed a message can still fetch a
# recent version, while a burst of versions of a 10,000-node table (~1.7 MiB each) cannot fill Redis
SNAPSHOTS_KEPT = 16


class EventBus:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.healthy = True
        self._kept: deque[int] = deque()  # versions this publisher stored, oldest first

    @classmethod
    def from_url(cls, url: str) -> EventBus:
        return cls(aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2))

    async def close(self) -> None:
        await self.client.aclose()

    async def _guard(self, what: str, coro: Any) -> bool:
        try:
            await coro
        except Exception as exc:  # redis down: keep serving, report once
            if self.healthy:
                log.warning("redis unavailable (%s): %s", what, type(exc).__name__)
            self.healthy = False
            return False
        if not self.healthy:
            log.info("redis reachable again")
        self.healthy = True
        return True

    async def publish_routing(self, table: dict[str, Any]) -> bool:
        payload = json.dumps(table, separators=(",", ":"))
        pipe = self.client.pipeline(transaction=False)
        pipe.set(ROUTING_LATEST, payload)
        pipe.set(f"routing:{table['version']}", payload, ex=SNAPSHOT_TTL_S)
        pipe.publish(ROUTING_CHANNEL, payload)
        version = int(table["version"])
        if not self._kept or self._kept[-1] != version:
            self._kept.append(version)
        while len(self._kept) > SNAPSHOTS_KEPT:
            pipe.delete(f"routing:{self._kept.popleft()}")
        return await self._guard("publish routing", pipe.execute())

    async def emit(self, kind: str, data: dict[str, Any]) -> bool:
        return await self.emit_many([(kind, data)])

    async def emit_many(self, events: list[tuple[str, dict[str, Any]]]) -> bool:
        """One round trip for many events (a sweep can change thousands of nodes at once)."""
        if not events:
            return True
        pipe = self.client.pipeline(transaction=False)
        for kind, data in events:
            fields = {"kind": kind, "data": json.dumps(data, separators=(",", ":"), default=str)}
            pipe.xadd(EVENTS_STREAM, fields, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
        return await self._guard("emit events", pipe.execute())

    async def latest_routing(self) -> dict[str, Any] | None:
        raw = await self.client.get(ROUTING_LATEST)
        return json.loads(raw) if raw else None
