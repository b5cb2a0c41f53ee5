"""The inference keys of every deployment, held by each API replica as one hash map.

A request's bearer token is hashed once (SHA-256) and looked up in `by_hash`: one probe names the deployment
whose key it is (and so the only replicas it may reach). The map is reloaded from the deployments (the loader
is `AppContext.deployment_keys`) when the routing table changes, at the latest every `max_age_s`, and on a
miss: a token the map does not know may belong to a deployment created a moment ago, so it waits for one
reload (reloads are coalesced and at least `min_gap_s` apart); a hash still unknown after it is remembered
for `negative_ttl_s` in a bounded map, so a flood of wrong tokens costs no more than one reload per gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeploymentKey:
    deployment_id: str
    model: str  # the model name the deployment serves (the key of the routing table)
    key_hash: str  # SHA-256 hex of the inference key clients present
    engine_key: str | None  # what the proxy presents to the deployment's engines
    rate_limit_rpm: int | None = None


Loader = Callable[[], Awaitable[list[DeploymentKey]]]


class KeyIndex:
    def __init__(
        self,
        load: Loader,
        clock: Callable[[], float] = time.monotonic,
        max_age_s: float = 10.0,
        min_gap_s: float = 0.1,
        negative_ttl_s: float = 2.0,
        negative_max: int = 10_000,
    ) -> None:
        self._load = load
        self.clock = clock
        self.max_age_s, self.min_gap_s = max_age_s, min_gap_s
        self.negative_ttl_s, self.negative_max = negative_ttl_s, negative_max
        self.by_hash: dict[str, DeploymentKey] = {}
        self.by_deployment: dict[str, DeploymentKey] = {}
        self.models: frozenset[str] = frozenset()  # models that some deployment serves
        self.loaded_at = float("-inf")
        self.loads = 0
        self._version = -1  # routing version the map was last reloaded for
        self._negative: OrderedDict[str, float] = OrderedDict()  # hash -> until
        self._inflight: asyncio.Future[None] | None = None
        self._next: asyncio.Future[None] | None = None
        self._background: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ hot path (no await)
    def get(self, digest: str) -> DeploymentKey | None:
        return self.by_hash.get(digest)

    def note_version(self, version: int) -> None:
        """Called per request with the routing version: a change (or age) reloads in the background."""
        if version != self._version or self.clock() - self.loaded_at > self.max_age_s:
            self._version = version
            if self._background is None or self._background.done():
                self._background = asyncio.get_running_loop().create_task(self._quiet_reload())

    # ------------------------------------------------------------ misses
    async def lookup_miss(self, digest: str) -> DeploymentKey | None:
        """A hash not in the map: wait for one reload that started after now, unless it was refused lately."""
        until = self._negative.get(digest)
        if until is not None:
            if until > self.clock():
                return None
            del self._negative[digest]
        await self.reload()
        hit = self.by_hash.get(digest)
        if hit is None:
            self._negative[digest] = self.clock() + self.negative_ttl_s
            while len(self._negative) > self.negative_max:
                self._negative.popitem(last=False)
        return hit

    async def deployment(self, deployment_id: str) -> DeploymentKey | None:
        """The key record of a deployment (its engine key), reloading once for one not known yet."""
        hit = self.by_deployment.get(deployment_id)
        if hit is None:
            await self.reload()
            hit = self.by_deployment.get(deployment_id)
        return hit

    def invalidate(self) -> None:
        """Keys changed (rotated, deployment deleted) on this replica: the next request reloads."""
        self.loaded_at = float("-inf")
        self._negative.clear()

    # ------------------------------------------------------------ reload
    async def reload(self) -> None:
        """Reload the map; concurrent callers share one reload, and one arriving while a reload is in flight
        waits for the next one (which sees what changed since it arrived)."""
        loop = asyncio.get_running_loop()
        if self._inflight is None:
            self._inflight = loop.create_future()
            loop.create_task(self._run(self._inflight))
            await asyncio.shield(self._inflight)
            return
        if self._next is None:
            self._next = loop.create_future()
        await asyncio.shield(self._next)

    async def _run(self, fut: asyncio.Future[None]) -> None:
        while True:
            wait = self.min_gap_s - (self.clock() - self.loaded_at)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                rows = await self._load()
                self._apply(rows)
                fut.set_result(None)
            except Exception as exc:
                log.warning("inference keys: reload failed (%s)", type(exc).__name__)
                self.loaded_at = self.clock()  # no hammering of a database that is down
                fut.set_exception(exc)
                fut.exception()  # retrieved: callers that awaited it got it; none is also fine
            if self._next is None:
                self._inflight = None
                return
            fut, self._next = self._next, None
            self._inflight = fut

    def _apply(self, rows: list[DeploymentKey]) -> None:
        self.by_hash = {r.key_hash: r for r in rows if r.key_hash}
        self.by_deployment = {r.deployment_id: r for r in rows}
        self.models = frozenset(r.model for r in rows if r.model)
        self.loaded_at = self.clock()
        self.loads += 1

    async def _quiet_reload(self) -> None:
        try:
            await self.reload()
        except Exception:
            pass  # logged by _run; the next request tries again
