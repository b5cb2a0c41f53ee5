"""What the API handlers share inside one Serve replica: storage, actor handles, local caches."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ray.exceptions import RayActorError

from actors.runtime import DEPLOYMENTS, INVENTORY, RuntimeConfig, call, get_actor, get_pool_actor
from actors.storage import Store
from actors.token_store import Scope
from serve_app import metrics as metrics_mod
from serve_app.auth import TokenCache, bearer, require_admin
from serve_app.batcher import MicroBatcher
from serve_app.hold import HoldQueue, HoldSettings
from serve_app.inference_keys import DeploymentKey, KeyIndex
from serve_app.live_nodes import LiveNodes
from serve_app.metrics import ReplicaMetrics
from serve_app.proxy import InferenceProxy
from serve_app.ratelimit import RateLimiter
from serve_app.routing_cache import RoutingCache

log = logging.getLogger(__name__)

# the proxy's requests in flight per node go to the inventory this often (draining waits for a node's 0; the
# autoscaler reads the sums); unchanged figures are re-sent every LOAD_KEEPALIVE_S (a report expires after 3 s),
# and each answer brings back the load the replica's balancer cannot see (other replicas, engine queues)
LOAD_REPORT_S = 0.25
LOAD_KEEPALIVE_S = 1.0
# a small batch of heartbeats waits this long for more before its inventory call (serve_app/batcher.py)
HEARTBEAT_LINGER_S = 0.0005


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
            self._flush_heartbeats, linger_s=HEARTBEAT_LINGER_S
        )
        self.keys = KeyIndex(self.deployment_keys)  # inference key hash -> deployment (serve_app/inference_keys.py)
        self.tokens = TokenCache(api_token_hash, lambda: self.store)  # scoped API tokens (serve_app/auth.py)
        self.limiter = RateLimiter()  # per-key requests per minute (serve_app/ratelimit.py)
        self.proxy = InferenceProxy(
            self.routing,
            self.keys,
            self._proxy_admin,
            observe=self._observe_request,
            waiting=metrics_mod.request_waiting,
            limiter=self.limiter,
        )
        # scale from zero: requests for a deployment with no routed replica wait here (serve_app/hold.py)
        hold = HoldSettings(timeout_s=cfg.hold_timeout_s, max_per_deployment=cfg.hold_queue)
        self.hold = HoldQueue(self.routing, self._wake_autoscaler, self._hold_status, hold)
        self.proxy.hold = self.hold
        self.last_request: dict[str, float] = {}  # deployment id -> wall time of its newest answered request
        self.counters = Counters()
        self._hb_inventory: Any = None  # the inventory's handle for heartbeat flushes (a lookup per flush costs)
        self.live_nodes = LiveNodes(self._all_nodes)  # the inventory's view, shared for ~1 s (console, /metrics)
        self.metrics = ReplicaMetrics(self._metrics_snapshot)
        self._start_lock: asyncio.Lock | None = None
        self.started = False
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._load_task: asyncio.Task[None] | None = None

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
            self._load_task = asyncio.get_running_loop().create_task(self._report_load(), name="report-load")
            self.started = True

    async def close(self) -> None:
        if self._load_task is not None:
            self._load_task.cancel()
        await self.tokens.stop()
        await self.routing.stop()
        await self.proxy.close()
        if self.store:
            await self.store.close()

    async def _report_load(self) -> None:
        """Push the proxy's per-node requests in flight (proxy.outstanding) to the inventory (report_load)."""
        last: tuple[dict[str, int], dict[str, int], dict[str, float]] | None = None
        sent_at = 0.0
        failing = False
        while True:
            await asyncio.sleep(LOAD_REPORT_S)
            ongoing = {k: v for k, v in self.proxy.outstanding.items() if v > 0}
            queued: dict[str, int] = dict(self.hold.queued)  # requests held for a first replica
            recent = dict(self.last_request)  # the autoscaler's idle clock (scale to zero)
            now = time.monotonic()
            if (ongoing, queued, recent) == last and now - sent_at < LOAD_KEEPALIVE_S:
                continue  # unchanged: once a second all the same, for the other replicas' and engines' load
            try:
                ref = self.inventory().report_load.remote(self.replica_id, ongoing, queued or None, recent or None)
                pressure = await call(ref, 5)
                if isinstance(pressure, dict):
                    self.proxy.balancer.pressure = pressure
            except Exception as exc:  # the inventory restarting: the next round sends again
                if not failing:
                    log.warning("load report to the inventory failed: %s", exc)
                failing = True
                continue
            failing = False
            last, sent_at = (ongoing, queued, recent), now

    def _observe_request(self, deployment_id: str | None, status: int, seconds: float, ttft: float | None) -> None:
        metrics_mod.observe_request(deployment_id, status, seconds, ttft)
        if deployment_id:
            self.last_request[deployment_id] = time.time()
            if len(self.last_request) > 10_000:  # bounded: keep the most recent half
                for k in sorted(self.last_request, key=self.last_request.__getitem__)[:5_000]:
                    del self.last_request[k]

    async def _wake_autoscaler(self, deployment_id: str) -> None:
        """A request is held for `deployment_id`: tell the inventory now (not at the next load report) and wake
        the deployments actor, whose round then sees the request and scales the deployment up from zero."""
        ongoing = {k: v for k, v in self.proxy.outstanding.items() if v > 0}
        await call(self.inventory().report_load.remote(self.replica_id, ongoing, dict(self.hold.queued)), 5)
        await call(self.deployments().notify.remote(), 5)

    async def _hold_status(self, deployment_id: str) -> str | None:
        """Why holding a request for this deployment is pointless (None: a replica may come)."""
        assert self.store is not None
        d = await self.store.get_deployment(deployment_id)
        if d is None:
            return "the deployment was deleted"
        if d.delete_requested or d.state in ("stopping", "stopped"):
            return f"deployment {d.id} is {'being deleted' if d.delete_requested else d.state}"
        if d.state == "failed":
            return f"the deployment failed to start: {d.error or 'replicas failed'}"
        if d.desired_replicas == 0 and not d.autoscaling:
            return f"deployment {d.id} is scaled to 0 replicas and has no autoscaling policy"
        return None

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
        # the handle is kept (it follows the actor's restarts); if it fails, the next flush looks the actor up
        # again, and a failure on a kept handle is retried once at once with a fresh one (beats are idempotent)
        cached = self._hb_inventory
        inv = cached or self.inventory()
        try:
            out = await call(inv.heartbeats.remote(beats, from_ingress=True), 30)
        except Exception as exc:
            self._hb_inventory = None
            if cached is None or not isinstance(exc, RayActorError):
                raise
            inv = self.inventory()
            out = await call(inv.heartbeats.remote(beats, from_ingress=True), 30)
        self._hb_inventory = inv
        return out  # type: ignore[no-any-return]

    # ------------------------------------------------------------ secrets
    async def deployment_keys(self) -> list[DeploymentKey]:
        """Every deployment's inference key hash, model and engine key: what the proxy's key index holds
        (the one place that says where the engine key comes from)."""
        assert self.store is not None
        names = {m.id: m.name for m in await self.store.list_models()}
        return [
            DeploymentKey(
                d.id, names.get(d.model_id, ""), d.inference_key_hash, d.inference_key or None, d.rate_limit_rpm
            )
            for d in await self.store.list_deployments()
        ]

    async def _proxy_admin(self, token: str, digest: str) -> bool:
        """May this token (not a deployment's key) use every model through the proxy: an admin token."""
        return await self.admin(token)

    def forget_key(self, deployment_id: str) -> None:
        """The deployment's key changed (rotate-key): read the keys again before the next request."""
        self.keys.invalidate()

    async def admin(self, token: str | None) -> bool:
        """The bootstrap admin token or a token of scope admin (serve_app/auth.py)."""
        return await self.tokens.scope_of(token) == Scope.ADMIN


__all__ = ["CURRENT", "AppContext", "bearer", "require_admin"]  # bearer, require_admin: from serve_app/auth.py


CURRENT: list[AppContext] = []
