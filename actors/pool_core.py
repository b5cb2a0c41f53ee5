"""A compute pool's logic without Ray: one lightweight node actor (asyncio task + mailbox) per node.

The PoolManager owns provisioning and deprovisioning through the pool's adapter, adoption of what
the provider still runs after a restart, orphan cleanup, quota checks and idle-node scaling. Node
health (heartbeats) belongs to the inventory; the pool reports its lifecycle transitions there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from typing import Any, Protocol

from actors.records import NodeRecord, PoolRecord, hash_secret, new_id
from actors.retry import RetryPolicy, Sleep, with_retry
from actors.states import NODE_ALIVE, NodeState
from adapters.base import (
    NodeHealth,
    NodeRef,
    PermanentProviderError,
    ProviderAdapter,
    ProviderError,
    ProviderNodeStatus,
    ProvisionedNode,
    ProvisionRequest,
    WorkloadSpec,
)

log = logging.getLogger(__name__)


class QuotaExceeded(Exception):
    pass


class InventoryPort(Protocol):
    async def register(self, info: dict[str, Any]) -> None: ...
    async def register_many(self, infos: list[dict[str, Any]]) -> None: ...
    async def transition(self, node_id: str, state: NodeState, reason: str | None) -> bool: ...
    async def heartbeats(self, beats: list[dict[str, Any]]) -> list[Any]: ...


class StorePort(Protocol):
    async def insert_node(self, n: NodeRecord) -> NodeRecord: ...
    async def update_node_provisioned(self, node_id: str, fields: dict[str, Any]) -> NodeRecord | None: ...
    async def list_nodes(self, pool_id: str | None = None, states: Any = None) -> list[NodeRecord]: ...
    async def add_event(
        self, kind: str, entity_type: str, entity_id: str, data: dict[str, Any] | None = None
    ) -> None: ...


def node_token(key: str, node_id: str) -> str:
    """Each node's heartbeat token, derived from the control plane's key so any actor can recompute it."""
    return "nt_" + hmac.new(key.encode(), node_id.encode(), hashlib.sha256).hexdigest()


class Cmd(StrEnum):
    PROVISION = "provision"
    TERMINATE = "terminate"
    DRAIN = "drain"


class NodeActor:
    """One node's mailbox and lifecycle task; commands are processed one at a time, in order."""

    def __init__(self, manager: PoolManager, record: NodeRecord, workload: WorkloadSpec | None) -> None:
        self.manager = manager
        self.record = record
        self.workload = workload
        self.mailbox: asyncio.Queue[tuple[Cmd, str | None]] = asyncio.Queue()
        self.busy = False
        self.terminating = False
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.record.id

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"node:{self.id}")

    def send(self, cmd: Cmd, reason: str | None = None) -> None:
        if cmd in (Cmd.TERMINATE, Cmd.DRAIN):
            if self.terminating:
                return
            self.terminating = True
        self.mailbox.put_nowait((cmd, reason))

    async def stop(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # the caller itself is being cancelled: let it through
                raise

    async def _run(self) -> None:
        while True:
            cmd, reason = await self.mailbox.get()
            self.busy = True
            try:
                if cmd == Cmd.PROVISION and not self.terminating:
                    await self.manager._provision(self)
                elif cmd == Cmd.DRAIN:
                    await self.manager._drain(self, reason)
                elif cmd == Cmd.TERMINATE:
                    await self.manager._terminate(self, reason)
            except asyncio.CancelledError:
                raise
            except Exception:  # the lifecycle task must not die
                log.exception("node %s: %s failed", self.id, cmd)
            finally:
                self.busy = False
            if self.record.state == NodeState.TERMINATED:
                self.done.set()
                self.manager._forget(self.id)
                return


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
        drain_period_s: float = 5.0,
        call_timeout_s: float = 300.0,
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
        self.drain_period_s = drain_period_s
        self.call_timeout_s = call_timeout_s
        self.clock = clock
        self.sleep = sleep
        self.nodes: dict[str, NodeActor] = {}
        self._ended: set[str] = set()  # nodes this actor saw end: a retried create_node must not revive one
        self._lock = asyncio.Lock()
        self._health: dict[str, NodeHealth] = {}  # last provider-reported health (reports_health adapters)
        self._health_tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ boot
    async def start(self) -> None:
        """Rebuild from Postgres, then from provider truth (adopt, mark vanished, clean orphans)."""
        for rec in await self.store.list_nodes(self.pool.id, NODE_ALIVE):
            if rec.id not in self.nodes:
                actor = NodeActor(self, rec, None)
                self.nodes[rec.id] = actor
                actor.start()
                await self.inventory.register(self._info(rec))
                if rec.state == NodeState.DRAINING:
                    actor.send(Cmd.TERMINATE, rec.state_reason or "drained")
        await self.reconcile_provider(boot=True)
        if self.adapter.capabilities.reports_health and not self._health_tasks:
            self._health_tasks = [
                asyncio.create_task(self._run_health_watch(), name=f"health-watch:{self.pool.id}"),
                asyncio.create_task(self._repeat_health(), name=f"health-repeat:{self.pool.id}"),
            ]

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
                await self._send_health(list(self._health.values()))
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

    async def _send_health(self, items: list[NodeHealth]) -> None:
        if not items:
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
        await self.inventory.heartbeats(beats)

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
        return sum(1 for a in self.nodes.values() if not a.terminating)

    # ------------------------------------------------------------ commands (idempotent)
    async def create_node(self, node_id: str | None = None, workload: WorkloadSpec | None = None) -> dict[str, Any]:
        """Create (or find) a node and start provisioning it in the background; returns at once."""
        created, error = await self.create_nodes([node_id or new_id("node")], workload)
        if error is not None:
            raise QuotaExceeded(error)
        return created[0]

    async def create_nodes(
        self, node_ids: list[str], workload: WorkloadSpec | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """create_node for many ids (idempotent per id) with one inventory call for the batch: the nodes,
        in order, and the quota error that stopped the batch, if any."""
        out: list[dict[str, Any]] = []
        started: list[NodeActor] = []
        error: str | None = None
        async with self._lock:
            for node_id in node_ids:
                existing = self.nodes.get(node_id)
                if existing is not None:
                    out.append(existing.record.public())
                    continue
                if self.alive_count() >= self.pool.max_nodes:
                    error = f"pool {self.pool.name!r} is at its max_nodes quota ({self.pool.max_nodes})"
                    break
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

    async def terminate_node(self, node_id: str, reason: str | None = None) -> bool:
        actor = self.nodes.get(node_id)
        if actor is None:
            return False
        actor.send(Cmd.TERMINATE, reason)
        return True

    async def drain_node(self, node_id: str, reason: str | None = None) -> bool:
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
        resources = dict(actor.record.resources or {})
        resources.update(node.resources)
        if actor.workload is not None:
            resources["model_name"] = actor.workload.model_name
        served = resources.get("served_model")
        fields = {
            "provider_instance_id": node.provider_instance_id,
            "endpoint": node.endpoint,
            "ip_address": node.ip_address,
            "gpu_type": node.gpu_type,
            "gpu_count": node.gpu_count,
            "vcpu": node.vcpu,
            "ram_mb": node.ram_mb,
            "price_per_hour": node.price_per_hour,
            "resources": resources,
        }
        rec = await self.store.update_node_provisioned(actor.id, fields)
        if rec is not None:
            rec.state = actor.record.state
            actor.record = rec
        info = self._info(actor.record, actor.workload)
        info["served_model"] = served
        await self.inventory.register(info)

    async def _drain(self, actor: NodeActor, reason: str | None) -> None:
        await self._set_state(actor, NodeState.DRAINING, reason)
        await self.sleep(self.drain_period_s)
        await self._terminate(actor, reason)

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
            # stays draining; the provider reconcile retries later. Never forget a paid instance.
            log.error("deprovision of %s failed: %s", actor.id, exc)
            actor.terminating = False
            return
        await self._set_state(actor, NodeState.TERMINATED, reason)
        actor.record.state = NodeState.TERMINATED

    # ------------------------------------------------------------ provider truth
    async def reconcile_provider(self, boot: bool = False) -> dict[str, list[str]]:
        """Adopt what the provider runs, mark what vanished (confirmed only), clean up orphans."""
        report: dict[str, list[str]] = {"adopted": [], "vanished": [], "orphans": [], "retried": []}
        try:
            found = await self.adapter.list_nodes(self.pool.id)
        except ProviderError as exc:
            log.warning("pool %s: list_nodes failed: %s", self.pool.id, exc)
            return report
        by_id = {n.node_id: n for n in found}
        # alive in the database but tracked by no node actor: a lost write (the inventory acknowledged a
        # node's end, then died before flushing it). Gone at the provider: record it terminated again.
        async with self._lock:
            untracked = [r for r in await self.store.list_nodes(self.pool.id, NODE_ALIVE) if r.id not in self.nodes]
        for rec in untracked:
            if rec.id not in by_id:
                await self.inventory.register(self._info(rec))
                if await self.inventory.transition(rec.id, NodeState.TERMINATED, "vanished at the provider"):
                    report["vanished"].append(rec.id)
        for node_id, actor in list(self.nodes.items()):
            pn = by_id.pop(node_id, None)
            if pn is not None:
                if actor.record.state == NodeState.DRAINING and not actor.terminating:
                    actor.send(Cmd.TERMINATE, actor.record.state_reason)
                    report["retried"].append(node_id)
                elif not actor.busy and (boot or actor.record.endpoint != pn.endpoint):
                    # (a provision in flight records the node itself when it returns)
                    await self._record_provisioned(actor, pn)
                    report["adopted"].append(node_id)
                continue
            if actor.busy or not actor.mailbox.empty():
                continue  # a provision or deprovision is in flight: the provider may not list it yet
            if actor.record.state == NodeState.PROVISIONING and not boot and actor.record.endpoint is None:
                continue
            if actor.record.state == NodeState.FAILED and actor.record.deployment_id:
                continue  # its deployment counts the failure, then removes it (actors/deployment_core.py)
            status = await self._status(actor)
            if status in (ProviderNodeStatus.TERMINATED, ProviderNodeStatus.FAILED):
                # confirmed gone: clean what is left of it (files, an orphaned engine), then record it
                with contextlib.suppress(ProviderError):
                    await self.adapter.deprovision_node(
                        NodeRef(node_id, self.pool.id, actor.record.provider_instance_id)
                    )
                await self._set_state(actor, NodeState.TERMINATED, "vanished at the provider")
                actor.record.state = NodeState.TERMINATED
                await actor.stop()
                self._forget(node_id)
                report["vanished"].append(node_id)
        # leftovers of nodes that died and are no longer tracked (e.g. failed before a restart)
        list_dead = getattr(self.adapter, "list_dead", None)
        if callable(list_dead):
            with contextlib.suppress(ProviderError):
                for node_id in await list_dead(self.pool.id):
                    if node_id not in self.nodes:
                        await self.adapter.deprovision_node(NodeRef(node_id, self.pool.id))
                        report["vanished"].append(node_id)
        cleanup = bool(self.pool.provider_config.get("cleanup_orphans", True))
        for node_id, pn in by_id.items():
            report["orphans"].append(node_id)
            await self.store.add_event("node.orphan", "node", node_id, {"pool_id": self.pool.id, "cleaned": cleanup})
            if cleanup:
                ref = NodeRef(node_id, self.pool.id, pn.provider_instance_id)
                try:
                    await self.adapter.deprovision_node(ref)
                except ProviderError as exc:
                    log.warning("orphan %s cleanup failed: %s", node_id, exc)
        if any(report.values()):
            log.info("pool %s provider reconcile: %s", self.pool.id, {k: v for k, v in report.items() if v})
        return report

    async def _status(self, actor: NodeActor) -> ProviderNodeStatus:
        try:
            st = await self.adapter.get_node_status(NodeRef(actor.id, self.pool.id, actor.record.provider_instance_id))
            return st.status
        except ProviderError:
            return ProviderNodeStatus.UNKNOWN

    # ------------------------------------------------------------ idle capacity
    async def scale_idle(self) -> list[str]:
        """Keep at least target_nodes nodes in the pool; surplus idle nodes are terminated."""
        alive = [a for a in self.nodes.values() if not a.terminating]
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
                a.send(Cmd.TERMINATE, "scaled down")
        return created

    def summary(self) -> dict[str, Any]:
        return {
            "pool": asdict(self.pool),
            "nodes": {nid: str(a.record.state) for nid, a in self.nodes.items()},
        }
