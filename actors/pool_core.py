"""A compute pool's logic without Ray: one lightweight node actor (asyncio task + mailbox) per node.

The PoolManager owns provisioning and deprovisioning through the pool's adapter, adoption of what
the provider still runs after a restart (actors/pool_reconcile.py), orphan cleanup, quota checks,
draining and idle-node scaling. Node health (heartbeats) belongs to the inventory; the pool reports its
lifecycle transitions there.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

from actors.node_actor import Cmd, EndedSet, NodeActor
from actors.pool_limits import check_new_node
from actors.pool_reconcile import ProviderReconcile, provider_fields
from actors.records import NodeRecord, PoolRecord, hash_secret, new_id
from actors.retry import RetryPolicy, Sleep, with_retry
from actors.states import NODE_ALIVE, NodeState, PoolState
from adapters.base import (
    NodeHealth,
    NodeRef,
    PermanentProviderError,
    ProviderAdapter,
    ProviderError,
    ProvisionedNode,
    ProvisionRequest,
    ResourceOffer,
    WorkloadSpec,
)

log = logging.getLogger(__name__)

__all__ = ["Cmd", "NodeActor", "PoolManager", "PoolNotActive", "QuotaExceeded", "node_token"]

# a draining node is idle once the API replicas' load reports (every ~0.5 s) show no request in flight for it;
# those reports are trusted only this long after the drain began (the routing table and a report must have
# gone round once), and the load is asked of the inventory at most once per poll for every draining node
DRAIN_MIN_S = 1.0
DRAIN_POLL_S = 0.5
# the provider's offers (for the price of a node not yet placed, and the GPU types it can give) are read again
# at most this often, and only by a pool with a cost ceiling or a GPU-type list
OFFERS_TTL_S = 60.0


class QuotaExceeded(Exception):
    pass


class PoolNotActive(QuotaExceeded):
    """The pool is deleting or deleted: no new node (the API answers 409)."""


class InventoryPort(Protocol):
    async def register(self, info: dict[str, Any]) -> None: ...
    async def register_many(self, infos: list[dict[str, Any]]) -> None: ...
    async def transition(self, node_id: str, state: NodeState, reason: str | None) -> bool: ...
    async def relay_health(self, pool_id: str, beats: list[dict[str, Any]], first: bool) -> list[Any]: ...
    async def node_load(self, node_ids: list[str]) -> dict[str, int]: ...


class StorePort(Protocol):
    async def insert_node(self, n: NodeRecord) -> NodeRecord: ...
    async def update_node_provisioned(self, node_id: str, fields: dict[str, Any]) -> NodeRecord | None: ...
    async def list_nodes(self, pool_id: str | None = None, states: Any = None) -> list[NodeRecord]: ...
    async def add_event(
        self, kind: str, entity_type: str, entity_id: str, data: dict[str, Any] | None = None
    ) -> None: ...


# a deployment id -> the workload its nodes run (None: the deployment is gone); rebuilds a re-provision
WorkloadLoader = Callable[[str], Awaitable[WorkloadSpec | None]]


def node_token(key: str, node_id: str) -> str:
    """Each node's heartbeat token, derived from the control plane's key so any actor can recompute it."""
    return "nt_" + hmac.new(key.encode(), node_id.encode(), hashlib.sha256).hexdigest()


class PoolManager:
    def __init__(
        self,
        pool: PoolRecord,
        adapter: ProviderAdapter,
        store: StorePort,
        inventory: InventoryPort,
        *,
        token_key: str,
        heartbeat_url: str,
        heartbeat_interval_s: float,
        heartbeat_fallback_url: str | None = None,
        retry: RetryPolicy | None = None,
        drain_timeout_s: float = 30.0,
        call_timeout_s: float = 300.0,
        workloads: WorkloadLoader | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.pool = pool
        self.adapter = adapter
        self.store = store
        self.inventory = inventory
        self.token_key = token_key
        self.heartbeat_url = heartbeat_url
        self.heartbeat_fallback_url = heartbeat_fallback_url
        self.heartbeat_interval_s = heartbeat_interval_s
        self.retry = retry or RetryPolicy()
        self.drain_timeout_s = drain_timeout_s
        self.call_timeout_s = call_timeout_s
        self.workloads = workloads
        self.clock = clock
        self.sleep = sleep
        self.nodes: dict[str, NodeActor] = {}
        self._ended = EndedSet(clock=clock)  # nodes this actor saw end: a retried create_node must not revive one
        self._lock = asyncio.Lock()
        self._health: dict[str, NodeHealth] = {}  # last provider-reported health (reports_health adapters)
        self._health_tasks: list[asyncio.Task[None]] = []
        self._relayed = False  # a relay of provider health reached the inventory since this actor started
        self._load: dict[str, int] = {}  # in-flight requests of the draining nodes (from the inventory)
        self._load_at = -1e18
        self._load_lock = asyncio.Lock()
        self.reconciler = ProviderReconcile(self)
        self._offers: list[ResourceOffer] | None = None
        self._offers_at = -1e18
        self._last_cap: str | None = None  # the last ceiling refusal, recorded as an event once

    # ------------------------------------------------------------ boot
    async def start(self) -> None:
        """Rebuild from Postgres, then from provider truth (adopt, mark vanished, clean orphans). A node whose
        provision never returned (no instance id, no endpoint) gets PROVISION again: provision is idempotent by
        node id, so a create that a crash cut halfway completes the same instance."""
        for rec in await self.store.list_nodes(self.pool.id, NODE_ALIVE):
            if rec.id in self.nodes:
                continue
            actor = NodeActor(self, rec, None)
            self.nodes[rec.id] = actor
            actor.start()
            await self.inventory.register(self._info(rec))
            if rec.state == NodeState.DRAINING:
                actor.send(Cmd.TERMINATE, rec.state_reason or "drained")
            elif rec.state == NodeState.PROVISIONING and rec.endpoint is None and rec.provider_instance_id is None:
                await self._provision_again(actor)
        await self.reconcile_provider(boot=True)
        if self.adapter.capabilities.reports_health and not self._health_tasks:
            self._health_tasks = [
                asyncio.create_task(self._run_health_watch(), name=f"health-watch:{self.pool.id}"),
                asyncio.create_task(self._repeat_health(), name=f"health-repeat:{self.pool.id}"),
            ]

    async def _provision_again(self, actor: NodeActor) -> None:
        dep = actor.record.deployment_id
        if dep is not None:
            workload = await self.workloads(dep) if self.workloads is not None else None
            if workload is None:  # its deployment is gone (or no way to know what it ran): end it
                actor.send(Cmd.TERMINATE, "deployment gone")
                return
            actor.workload = workload
        log.info("pool %s: provisioning %s again after a restart", self.pool.id, actor.id)
        actor.send(Cmd.PROVISION)

    async def shutdown(self) -> None:
        for task in self._health_tasks:
            task.cancel()
        for actor in list(self.nodes.values()):
            await actor.stop()
        await self.adapter.close()

    # ------------------------------------------------------------ provider-reported health
    async def _run_health_watch(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.adapter.watch_health(self.report_health)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pool %s: health watch failed (%s); restarting in %.1fs", self.pool.id, exc, delay)
                self._health.clear()  # unknown until the watch is back: no heartbeats meanwhile
            await self.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _repeat_health(self) -> None:
        while True:
            await self.sleep(self.heartbeat_interval_s)
            try:
                await self._send_health(list(self._health.values()), alive=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pool %s: sending provider health failed", self.pool.id)

    async def report_health(self, items: list[NodeHealth]) -> None:
        """Called by the adapter's watch: remember, and send at once as heartbeats."""
        fresh = [h for h in items if h.node_id in self.nodes]
        for h in fresh:
            self._health[h.node_id] = h
        for gone in [n for n in self._health if n not in self.nodes]:
            self._health.pop(gone, None)
        await self._send_health(fresh)

    async def _send_health(self, items: list[NodeHealth], alive: bool = False) -> None:
        """alive: the interval's relay, sent even empty (the inventory then knows this pool's relay is up and
        does not take the silence of a restarting pool actor for the death of its nodes)."""
        if not items and not alive:
            return
        beats = [
            {
                "token": node_token(self.token_key, h.node_id),
                "node_id": h.node_id,
                "state": h.state,
                "health_score": h.health_score,
                "endpoint": h.endpoint,
                "reason": h.reason,
            }
            for h in items
        ]
        await self.inventory.relay_health(self.pool.id, beats, not self._relayed)
        self._relayed = True

    def _info(self, rec: NodeRecord, workload: WorkloadSpec | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": rec.id,
            "pool_id": rec.pool_id,
            "provider": rec.provider,
            "state": str(rec.state),
            "token_hash": rec.token_hash,
            "deployment_id": rec.deployment_id,
            "endpoint": rec.endpoint,
            "provider_instance_id": rec.provider_instance_id,
        }
        res = rec.resources or {}
        info["model_name"] = res.get("model_name")
        info["served_model"] = res.get("served_model")
        if workload is not None:
            info["model_name"] = workload.model_name
        return info

    def _forget(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
        self._ended.add(node_id)

    def alive_count(self) -> int:
        return sum(1 for a in self.nodes.values() if not a.end_wanted)

    # ------------------------------------------------------------ commands (idempotent)
    async def create_node(self, node_id: str | None = None, workload: WorkloadSpec | None = None) -> dict[str, Any]:
        """Create (or find) a node and start provisioning it in the background; returns at once."""
        created, error = await self.create_nodes([node_id or new_id("node")], workload)
        if error is not None:
            raise (QuotaExceeded if self.pool.state == PoolState.ACTIVE else PoolNotActive)(error)
        return created[0]

    async def create_nodes(
        self, node_ids: list[str], workload: WorkloadSpec | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """create_node for many ids (idempotent per id) with one inventory call for the batch: the nodes,
        in order, and the error that stopped the batch (quota; a deleting pool refuses new nodes), if any."""
        out: list[dict[str, Any]] = []
        started: list[NodeActor] = []
        error: str | None = None
        gpus = workload.gpus if workload else 0
        offers = await self._current_offers()
        async with self._lock:
            running_cost = self._running_cost(offers, gpus)
            for node_id in node_ids:
                existing = self.nodes.get(node_id)
                if existing is not None:
                    out.append(existing.record.public())
                    continue
                if self.pool.state != PoolState.ACTIVE:
                    error = f"pool {self.pool.name!r} is {self.pool.state}: no new nodes"
                    break
                if self.alive_count() >= self.pool.max_nodes:
                    error = f"pool {self.pool.name!r} is at its max_nodes quota ({self.pool.max_nodes})"
                    break
                capped, price = check_new_node(self.pool, running_cost, offers, gpus)
                if capped is not None:
                    error = str(capped)
                    if error != self._last_cap:
                        self._last_cap = error
                        data = {"pool_id": self.pool.id, "limit": capped.what, "detail": capped.detail}
                        await self.store.add_event("pool.capped", "pool", self.pool.id, data)
                    break
                running_cost += price
                rec = NodeRecord(
                    id=node_id,
                    pool_id=self.pool.id,
                    provider=self.pool.provider,
                    state=NodeState.PROVISIONING,
                    token_hash=hash_secret(node_token(self.token_key, node_id)),
                    deployment_id=workload.deployment_id if workload else None,
                    resources={"model_name": workload.model_name} if workload else {},
                )
                rec = await self.store.insert_node(rec)
                if node_id in self._ended:  # a retried call: it ended here; its row may not say so yet
                    rec.state = NodeState.TERMINATED
                if rec.state in NODE_ALIVE:
                    actor = NodeActor(self, rec, workload)
                    self.nodes[node_id] = actor
                    actor.start()
                    started.append(actor)
                out.append(rec.public())
            if started:
                await self.inventory.register_many([self._info(a.record, workload) for a in started])
            for actor in started:
                actor.send(Cmd.PROVISION)
        return out, error

    async def _current_offers(self) -> list[ResourceOffer] | None:
        """The provider's offers (cached), or None when the pool has no ceiling to check or they can't be read."""
        if self.pool.max_cost_per_hour is None and not self.pool.allowed_gpu_types:
            return None
        if self.clock() - self._offers_at >= OFFERS_TTL_S:
            try:
                self._offers = list(await asyncio.wait_for(self.adapter.discover_resources(), self.call_timeout_s))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unknown is not "no": the ceilings then count only what is known
                log.warning("pool %s: offers unavailable (%s)", self.pool.id, exc)
                self._offers = None
            self._offers_at = self.clock()
        return self._offers

    def _running_cost(self, offers: list[ResourceOffer] | None, gpus: int) -> float:
        """Per hour: the price of every node that is not ending; a node not yet placed at the estimate."""
        if self.pool.max_cost_per_hour is None:
            return 0.0
        _, estimate = check_new_node(self.pool, 0.0, offers, gpus)
        return sum(a.record.price_per_hour or estimate for a in self.nodes.values() if not a.end_wanted)

    async def terminate_node(self, node_id: str, reason: str | None = None) -> bool:
        """Deprovision at once (a dead node, an explicit delete, `down`); hurries a drain in progress."""
        actor = self.nodes.get(node_id)
        if actor is None:
            return False
        actor.send(Cmd.TERMINATE, reason)
        return True

    async def drain_node(self, node_id: str, reason: str | None = None) -> bool:
        """Out of the routing table at once; deprovisioned when idle or after the drain timeout."""
        actor = self.nodes.get(node_id)
        if actor is None:
            return False
        actor.send(Cmd.DRAIN, reason or "drained by request")
        return True

    async def node_status(self, node_id: str) -> dict[str, Any] | None:
        actor = self.nodes.get(node_id)
        return None if actor is None else actor.record.public() | {"busy": actor.busy}

    async def get_logs(self, node_id: str, tail: int) -> list[str]:
        actor = self.nodes.get(node_id)
        ref = NodeRef(node_id, self.pool.id, actor.record.provider_instance_id if actor else None)
        return await self.adapter.get_logs(ref, tail)

    async def set_target(self, target: int) -> None:
        self.pool.target_nodes = target
        await self.scale_idle()

    # ------------------------------------------------------------ lifecycle steps (run by node actors)
    async def _set_state(self, actor: NodeActor, state: NodeState, reason: str | None) -> None:
        ok = await self.inventory.transition(actor.id, state, reason)
        if ok:
            actor.record.state = state
            actor.record.state_reason = reason

    async def _provision(self, actor: NodeActor) -> None:
        token = node_token(self.token_key, actor.id)
        req = ProvisionRequest(
            node_id=actor.id,
            pool_id=self.pool.id,
            heartbeat_url=self.heartbeat_url,
            heartbeat_fallback_url=self.heartbeat_fallback_url,
            node_token=token,
            heartbeat_interval_s=self.heartbeat_interval_s,
            workload=actor.workload,
            config=self.pool.provider_config,
        )
        try:
            node = await with_retry(
                lambda: self.adapter.provision_node(req),
                self.retry,
                what=f"provision {actor.id}",
                sleep=self.sleep,
                timeout_s=self.call_timeout_s,
            )
        except PermanentProviderError as exc:
            await self._set_state(actor, NodeState.FAILED, str(exc))
            await self.store.add_event("node.provision_failed", "node", actor.id, {"error": str(exc)})
            return
        except ProviderError as exc:
            await self._set_state(actor, NodeState.FAILED, f"provider unavailable: {exc}")
            return
        await self._record_provisioned(actor, node)

    async def _record_provisioned(self, actor: NodeActor, node: ProvisionedNode) -> None:
        fields = provider_fields(actor.record, node)
        if actor.workload is not None:
            fields["resources"]["model_name"] = actor.workload.model_name
        served = fields["resources"].get("served_model")
        rec = await self.store.update_node_provisioned(actor.id, fields)
        if rec is not None:
            rec.state = actor.record.state
            actor.record = rec
        info = self._info(actor.record, actor.workload)
        info["served_model"] = served
        await self.inventory.register(info)

    async def _drain(self, actor: NodeActor, reason: str | None) -> None:
        """Out of the routing table (draining), wait until no request is in flight for the node (or the drain
        timeout), then terminate. A node that never served (no endpoint yet, failed) does not wait."""
        served = actor.record.state != NodeState.FAILED and actor.record.endpoint is not None
        if actor.record.state != NodeState.DRAINING:
            await self._set_state(actor, NodeState.DRAINING, reason)
        if served:
            await self._wait_idle(actor)
        await self._terminate(actor, reason)

    async def _wait_idle(self, actor: NodeActor) -> None:
        start = self.clock()
        while not actor.hurry.is_set():
            waited = self.clock() - start
            if waited >= self.drain_timeout_s:
                log.info("node %s: drain timeout (%.0fs) with requests in flight", actor.id, self.drain_timeout_s)
                return
            if waited >= min(DRAIN_MIN_S, self.drain_timeout_s) and await self._ongoing(actor.id) == 0:
                return
            await self.sleep(min(DRAIN_POLL_S, self.drain_timeout_s - waited))

    async def _ongoing(self, node_id: str) -> int | None:
        """Requests in flight for a draining node, summed over the API replicas; None when unknown (not idle)."""
        async with self._load_lock:
            if self.clock() - self._load_at >= DRAIN_POLL_S or node_id not in self._load:
                ids = [a.id for a in self.nodes.values() if a.record.state == NodeState.DRAINING]
                try:
                    load = await self.inventory.node_load(ids)
                except Exception as exc:  # unknown is not idle: keep waiting (bounded by the drain timeout)
                    log.warning("pool %s: load of draining nodes unavailable: %s", self.pool.id, exc)
                    return None
                self._load = {i: int(load.get(i, 0)) for i in ids}
                self._load_at = self.clock()
            return self._load.get(node_id)

    async def _terminate(self, actor: NodeActor, reason: str | None) -> None:
        if actor.record.state != NodeState.DRAINING:
            await self._set_state(actor, NodeState.DRAINING, reason)
        ref = NodeRef(actor.id, self.pool.id, actor.record.provider_instance_id)
        try:
            await with_retry(
                lambda: self.adapter.deprovision_node(ref),
                self.retry,
                what=f"deprovision {actor.id}",
                sleep=self.sleep,
                timeout_s=self.call_timeout_s,
            )
        except ProviderError as exc:
            # stays draining; the provider reconcile retries later (the node actor accepts the next
            # terminate whatever went wrong). Never forget a paid instance.
            log.error("deprovision of %s failed: %s", actor.id, exc)
            return
        await self._set_state(actor, NodeState.TERMINATED, reason)
        actor.record.state = NodeState.TERMINATED

    # ------------------------------------------------------------ provider truth
    async def reconcile_provider(self, boot: bool = False) -> dict[str, list[str]]:
        """Adopt what the provider runs, mark what vanished (confirmed only), clean up orphans."""
        return await self.reconciler.run(boot)

    # ------------------------------------------------------------ idle capacity
    async def scale_idle(self) -> list[str]:
        """Keep at least target_nodes nodes in the pool; surplus idle nodes are drained."""
        if self.pool.state != PoolState.ACTIVE:
            return []
        alive = [a for a in self.nodes.values() if not a.end_wanted]
        idle = [a for a in alive if a.record.deployment_id is None]
        created: list[str] = []
        target = max(self.pool.target_nodes, self.pool.min_nodes)
        if len(alive) < target:
            for _ in range(target - len(alive)):
                try:
                    rec = await self.create_node()
                except QuotaExceeded:
                    break
                created.append(rec["id"])
        elif len(alive) > target and idle:
            for a in idle[: len(alive) - target]:
                a.send(Cmd.DRAIN, "scaled down")
        return created

    def summary(self) -> dict[str, Any]:
        return {
            "pool": asdict(self.pool),
            "nodes": {nid: str(a.record.state) for nid, a in self.nodes.items()},
        }
