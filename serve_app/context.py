"""What the API handlers share inside one Serve replica: storage, actor handles, local caches."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from actors.records import secret_matches
from actors.runtime import DEPLOYMENTS, INVENTORY, RuntimeConfig, call, get_actor, get_pool_actor
from actors.storage import Store
from actors.token_store import Scope
from serve_app.auth import TokenCache, bearer, require_admin
from serve_app.batcher import MicroBatcher
from serve_app.live_nodes import LiveNodes
from serve_app.metrics import ReplicaMetrics
from serve_app.proxy import InferenceProxy
from serve_app.ratelimit import RateLimiter
from serve_app.routing_cache import RoutingCache


@dataclass
class Counters:
    heartbeat_requests: int = 0  # heartbeats themselves: self.heartbeats.items (the batcher counts them)


class AppContext:
    """Per replica process; the ingress stores it in CURRENT (below) for the request handlers."""

    def __init__(self, cfg: RuntimeConfig, api_token_hash: str) -> None:
        self.cfg = cfg
        self.api_token_hash = api_token_hash
        self.store: Store | None = None
        self.routing = RoutingCache(self._poll_routing)
        self.heartbeats: MicroBatcher[dict[str, Any], tuple[int, str | None, str | None]] = MicroBatcher(
            self._flush_heartbeats
        )
        self._keys: dict[str, tuple[str, str, float]] = {}  # deployment_id -> (key, hash, fetched_at)
        self.proxy = InferenceProxy(self.routing, self.inference_key)
        self.tokens = TokenCache(api_token_hash, lambda: self.store)  # scoped API tokens (serve_app/auth.py)
        self.limiter = RateLimiter(self._rate_limit_of)  # per-key requests per minute (serve_app/ratelimit.py)
        self.counters = Counters()
        self.live_nodes = LiveNodes(self._all_nodes)  # the inventory's view, shared for ~1 s (console, /metrics)
        self.metrics = ReplicaMetrics(self._metrics_snapshot)
        self._start_lock: asyncio.Lock | None = None
        self.started = False

    async def start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self.started:
                return
            self.routing.start()
            if self.store is None:
                self.store = await Store.connect(self.cfg.dsn, max_size=5, master_key=self.cfg.master_key or None)
            self.tokens.start()
            # heartbeats can reach the inventory from now on: it starts counting missed ones
            await call(self.inventory().ingress_started.remote(), 30)
            self.started = True

    async def close(self) -> None:
        await self.tokens.stop()
        await self.routing.stop()
        await self.proxy.close()
        if self.store:
            await self.store.close()

    # ------------------------------------------------------------ actors
    def inventory(self) -> Any:
        return get_actor(INVENTORY)

    def deployments(self) -> Any:
        return get_actor(DEPLOYMENTS)

    def pool_actor(self, pool_id: str) -> Any:
        return get_pool_actor(pool_id, self.cfg)

    async def _all_nodes(self) -> list[dict[str, Any]]:
        return await call(self.inventory().nodes.remote(), 30)  # type: ignore[no-any-return]

    async def _metrics_snapshot(self) -> Any:
        from serve_app.metrics_source import read_snapshot

        return await read_snapshot(self)

    async def _poll_routing(self, version: int, timeout_s: float) -> dict[str, Any]:
        # from_ingress: a (re)started inventory learns that heartbeats can reach it (and starts its sweep)
        ref = self.inventory().wait_routing.remote(version, timeout_s, from_ingress=True)
        return await call(ref, timeout_s + 10)  # type: ignore[no-any-return]

    async def _flush_heartbeats(self, beats: list[dict[str, Any]]) -> list[tuple[int, str | None, str | None]]:
        return await call(self.inventory().heartbeats.remote(beats, from_ingress=True), 30)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ secrets
    async def inference_key(self, deployment_id: str) -> str | None:
        hit = self._keys.get(deployment_id)
        if hit and time.monotonic() - hit[2] < 60:
            return hit[0]
        assert self.store is not None
        dep = await self.store.get_deployment(deployment_id)
        if dep is None:
            return None
        self._keys[deployment_id] = (dep.inference_key, dep.inference_key_hash, time.monotonic())
        return dep.inference_key

    async def inference_key_valid(self, token: str, model: str | None) -> str | None:
        """The deployment whose inference key the token is, when it serves this model (else None)."""
        if not model:
            return None
        for ep in self.routing.endpoints(model):
            dep_id = ep.get("deployment_id")
            if dep_id and await self.inference_key(dep_id) is not None:
                _, digest, _ = self._keys[dep_id]
                if secret_matches(token, digest):
                    return dep_id
        return None

    def forget_key(self, deployment_id: str) -> None:
        """The deployment's key changed (rotate-key): read it again."""
        self._keys.pop(deployment_id, None)

    async def _rate_limit_of(self, deployment_id: str) -> int | None:
        assert self.store is not None
        dep = await self.store.get_deployment(deployment_id)
        return dep.rate_limit_rpm if dep else None

    async def admin(self, token: str | None) -> bool:
        """The bootstrap admin token or a token of scope admin (serve_app/auth.py)."""
        return await self.tokens.scope_of(token) == Scope.ADMIN


__all__ = ["CURRENT", "AppContext", "bearer", "require_admin"]  # bearer, require_admin: from serve_app/auth.py


CURRENT: list[AppContext] = []
