"""InventoryActor: the Ray shell around InventoryCore (heartbeats, health sweep, routing table)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from actors.bus import EventBus
from actors.endpoints import EndpointRule
from actors.inventory_core import DurationStat, Heartbeat, InventoryCore
from actors.runtime import Loop, RuntimeConfig, boot_in_background, setup_logging
from actors.states import NODE_ALIVE, NodeState
from actors.storage import Store

log = logging.getLogger(__name__)

# terminated nodes are kept this long so their late heartbeats are answered 410, then forgotten
TERMINATED_RETENTION_S = 600.0
# the routing table is rebuilt at most this often: a burst of changes (1,000 replicas coming up, a sweep
# after a network partition) makes one new version, not one per node. Each version costs a rebuild, a
# Redis publish (JSON) and an answer to every long-poll; at 10,000 nodes that is tens of ms, so the gap
# grows to ROUTES_COST_FACTOR x that cost (at most ROUTES_MAX_GAP_S): versions never take more than
# about a quarter of the actor's time, and heartbeats keep flowing during a big fill-up.
ROUTES_MIN_GAP_S = 0.05
ROUTES_MAX_GAP_S = 0.5
ROUTES_COST_FACTOR = 3.0
# bounded growth: old events and long-terminated node rows are deleted, at most PRUNE_BATCH rows of each per
# round (a backlog goes in slices, never in one long transaction)
PRUNE_INTERVAL_S = 60.0
PRUNE_BATCH = 5000


@ray.remote
class InventoryActor:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = RuntimeConfig(**cfg)
        setup_logging(self.cfg.log_level)
        self.core = InventoryCore(self.cfg.heartbeat_timeout_s, sweeping=False)
        self.core.endpoint_rule = EndpointRule.for_runtime(self.cfg)
        self.store: Store | None = None
        self.bus: EventBus | None = None
        self._boot_lock = asyncio.Lock()
        self._booted = False
        self._changed = asyncio.Condition()
        self._publish_wanted = asyncio.Event()
        self._sweep_loop = Loop("inventory.sweep", self._sweep, min(0.25, self.cfg.heartbeat_interval_s / 4))
        self._flush_loop = Loop("inventory.flush", self._flush, 0.5)
        self._publish_loop = Loop("inventory.publish", self._publish, 5.0)
        self._routes_loop = Loop("inventory.routes", self._rebuild_routes, 1.0, min_gap_s=ROUTES_MIN_GAP_S)
        self._prune_loop = Loop("inventory.prune", self._prune, PRUNE_INTERVAL_S)
        self.pruned = {"events": 0, "nodes": 0}
        self._published_version = 0
        self._publish_cost_s = 0.0  # the last Redis publish (encoding included)
        self.sweeps = DurationStat()  # the scan for missed heartbeats (the rebuild after it is core.rebuilds)
        boot_in_background(self._boot, "inventory")

    async def _boot(self) -> None:
        if self._booted:
            return
        async with self._boot_lock:
            if self._booted:
                return
            self.store = await Store.connect(self.cfg.dsn, max_size=4)
            self.bus = EventBus.from_url(self.cfg.redis_url)
            # rebuild from Postgres; "unknown is not dead": a node ready before the restart stays routable
            # until it misses heartbeats for the usual timeout, counted from now.
            for rec in await self.store.list_nodes(states=NODE_ALIVE):
                e = self.core.register(
                    {
                        "id": rec.id,
                        "pool_id": rec.pool_id,
                        "provider": rec.provider,
                        "state": rec.state,
                        "token_hash": rec.token_hash,
                        "deployment_id": rec.deployment_id,
                        "model_name": (rec.resources or {}).get("model_name"),
                        "served_model": (rec.resources or {}).get("served_model"),
                        "endpoint": rec.endpoint,
                        "provider_instance_id": rec.provider_instance_id,
                    }
                )
                e.engine_ready = rec.state == NodeState.READY
                e.health_score = rec.health_score
            self.core.refresh_routes()
            for lp in (self._sweep_loop, self._flush_loop, self._publish_loop, self._routes_loop, self._prune_loop):
                lp.start()
            self._booted = True
            self._publish_wanted.set()
            log.info("inventory ready with %d nodes", len(self.core.nodes))

    # ------------------------------------------------------------ loops
    async def _after_change(self) -> None:
        """Something may have changed the routing table: have it rebuilt soon (coalesced)."""
        self._routes_loop.wake.set()

    async def _rebuild_routes(self) -> bool:
        """Rebuild the routing table; False when nothing changed (the loop's gap then does not apply: a node
        registered as provisioning does not delay the version its readiness makes a moment later)."""
        t0 = time.perf_counter()
        if not self.core.refresh_routes():
            return False
        async with self._changed:
            self._changed.notify_all()
        self._publish_wanted.set()
        self._publish_loop.wake.set()
        cost = time.perf_counter() - t0 + self._publish_cost_s
        self._routes_loop.min_gap_s = max(ROUTES_MIN_GAP_S, min(ROUTES_MAX_GAP_S, ROUTES_COST_FACTOR * cost))
        return True

    async def _sweep(self) -> None:
        t0 = time.perf_counter()
        self.core.sweep()
        now = self.core.clock()
        for e in list(self.core.nodes.values()):
            if e.state == NodeState.TERMINATED and now - e.state_since > TERMINATED_RETENTION_S:
                self.core.forget(e.id)
        self.sweeps.add(time.perf_counter() - t0)
        await self._after_change()

    async def _flush(self) -> None:
        assert self.store is not None
        for refused in self.core.endpoint_rule.take_refused() if self.core.endpoint_rule else ():
            await self.store.add_event("node.endpoint_refused", "node", refused.pop("node_id"), refused)
        states, beats = self.core.take_writes()
        if not states and not beats:
            return
        try:
            await self.store.apply_node_transitions(states)
            await self.store.flush_heartbeats(beats)
        except Exception:
            self.core.restore_writes(states, beats)
            raise
        if self.bus is not None:
            await self.bus.emit_many([("node." + str(new), {"node_id": nid, "reason": r}) for nid, _, new, r in states])

    async def _prune(self) -> None:
        """Retention (INFERIA_EVENTS_RETENTION_S, INFERIA_TERMINATED_RETENTION_S): one bounded DELETE each."""
        assert self.store is not None
        self.pruned["events"] += await self.store.prune_events(self.cfg.events_retention_s, PRUNE_BATCH)
        self.pruned["nodes"] += await self.store.prune_terminated_nodes(self.cfg.terminated_retention_s, PRUNE_BATCH)

    async def _publish(self) -> None:
        if not self._publish_wanted.is_set() or self.bus is None:
            return
        self._publish_wanted.clear()
        table = self.core.current_table()
        t0 = time.perf_counter()
        ok = await self.bus.publish_routing(table)
        self._publish_cost_s = time.perf_counter() - t0
        if not ok:
            self._publish_wanted.set()  # redis down: try again next round
        else:
            self._published_version = table["version"]

    # ------------------------------------------------------------ API
    async def ready(self) -> bool:
        await self._boot()
        return True

    async def ingress_started(self) -> None:
        """Called by each API replica when it starts: begin (or restart) counting missed heartbeats (unless
        heartbeats kept arriving through the other replicas: InventoryCore.ingress_started)."""
        await self._boot()
        self.core.ingress_started()

    def _ingress_up(self) -> None:
        """An API replica reached us (its heartbeats or its routing long-poll): after a restart of this
        actor alone, no replica starts again to call ingress_started, so this resumes the sweep."""
        if not self.core.sweeping:
            log.info("heartbeat ingress reachable: counting missed heartbeats from now")
            self.core.grace_all()

    async def register(self, info: dict[str, Any]) -> None:
        await self.register_many([info])

    async def register_many(self, infos: list[dict[str, Any]]) -> None:
        """Add or refresh nodes (idempotent): a pool creating a batch of nodes makes one call."""
        await self._boot()
        for info in infos:
            self.core.register(info)
        await self._after_change()

    async def transition(self, node_id: str, state: str, reason: str | None = None) -> bool:
        await self._boot()
        ok = self.core.transition(node_id, NodeState(state), reason)
        await self._after_change()
        return ok

    async def heartbeats(
        self,
        beats: list[dict[str, Any]],
        from_ingress: bool = False,
        relay_pool: str | None = None,
        first_relay: bool = False,
    ) -> list[tuple[int, str | None, str | None]]:
        """One call per batch of heartbeats; returns (status, node_id, message) per heartbeat. from_ingress:
        sent by an API replica (node agents); relay_pool: sent by that pool relaying its provider's health
        (each interval, even empty: its relay is alive; first_relay: the first since that pool actor started)."""
        await self._boot()
        if from_ingress:
            self._ingress_up()
            self.core.ingress_beat_at = self.core.clock()
        if relay_pool is not None:
            results = self.core.relay(relay_pool, (Heartbeat(**b) for b in beats), first_relay)
        else:
            results = self.core.heartbeat_batch((Heartbeat(**b) for b in beats), checked=from_ingress)
        await self._after_change()
        return [(int(r.status), r.node_id, r.message) for r in results]

    async def report_load(
        self,
        replica_id: str,
        ongoing: dict[str, int],
        queued: dict[str, int] | None = None,
        last_request: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """Each API replica, every ~0.5 s while its figures change (else every second): per node id the
        requests its proxy has in flight, per deployment id those waiting (replaces its last report; expires
        after 3 s). Answers the load that replica's balancer cannot see itself (InventoryCore.pressure)."""
        await self._boot()
        self.core.report_load(replica_id, ongoing, queued, last_request)
        return self.core.pressure(replica_id)

    async def node_load(self, node_ids: list[str] | None = None) -> dict[str, int]:
        """In-flight requests per node, summed over the API replicas (draining waits for 0)."""
        await self._boot()
        return self.core.node_load(node_ids)

    async def load(self) -> dict[str, Any]:
        """{"nodes": {node_id: ongoing}, "deployments": {deployment_id: {"ongoing", "queued"}}}."""
        await self._boot()
        return {"nodes": self.core.node_load(), "deployments": self.core.deployment_load()}

    async def routing_table(self) -> dict[str, Any]:
        await self._boot()
        return self.core.current_table()

    async def wait_routing(self, known_version: int, timeout_s: float, from_ingress: bool = False) -> dict[str, Any]:
        """Long-poll: answers as soon as the version differs from known_version, or at the timeout."""
        await self._boot()
        if from_ingress:
            self._ingress_up()
        if self.core.version == known_version:
            async with self._changed:
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self.core.version != known_version), timeout_s
                    )
                except TimeoutError:
                    pass
        return self.core.current_table()

    async def nodes(self, deployment_only: bool = False) -> list[dict[str, Any]]:
        await self._boot()
        return self.core.snapshot(deployment_only)

    async def node_changes(self, epoch: str | None, version: int, deployment_only: bool = True) -> dict[str, Any]:
        """The node changes after `version` of `epoch`, or a full snapshot (`full`) when the caller must resync
        (actors/node_feed.py): what the deployments actor reads every round."""
        await self._boot()
        return self.core.node_changes(epoch, version, deployment_only)

    async def engine_metrics(self, deployment_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The engine metrics of the nodes of these deployments (the autoscaler's signals)."""
        await self._boot()
        return self.core.engine_metrics(deployment_ids)

    async def node(self, node_id: str) -> dict[str, Any] | None:
        await self._boot()
        e = self.core.nodes.get(node_id)
        return e.view(self.core.clock()) if e else None

    async def timings(self) -> dict[str, float]:
        """Cheap: the last and the recent maximum (1-2 min) of the health sweep and the routing rebuild."""
        sw, rb = self.sweeps.view(), self.core.rebuilds.view()
        return {
            "sweep_last_s": sw["last_s"],
            "sweep_max_s": sw["max_s"],
            "sweeps": sw["count"],
            "rebuild_last_s": rb["last_s"],
            "rebuild_max_s": rb["max_s"],
            "rebuilds": rb["count"],
        }

    async def stats(self) -> dict[str, Any]:
        await self._boot()
        return {
            **await self.timings(),
            "nodes_by_state": self.core.counts(),
            "heartbeats_total": self.core.heartbeats_total,
            "stale_heartbeats_total": self.core.stale_beats_total,
            "pruned_events": self.pruned["events"],
            "pruned_nodes": self.pruned["nodes"],
            "transitions_total": self.core.transitions_total,
            "routing_version": self.core.version,
            "published_version": self._published_version,
            "redis_healthy": bool(self.bus and self.bus.healthy),
            "sweep_ms": self.sweeps.last_s * 1000,
        }
