"""DeploymentActor: the level-triggered reconciler that keeps every deployment at its replicas."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import ray

from actors.autoscale_runner import URGENT_POLL_S, AutoscaleRunner, annotate_load
from actors.deployment_core import (
    CreateReplicas,
    DeploymentPlanner,
    DeploymentView,
    QuietRounds,
    RemoveReplica,
    SetState,
)
from actors.generations import workload as generation_workload
from actors.node_feed import NodeMirror
from actors.records import DeploymentRecord, ModelRecord, ReplicaRecord, new_id, workload_for
from actors.rollout import RolloutPlanner
from actors.rollout_runner import RolloutRunner
from actors.runtime import (
    INVENTORY,
    Loop,
    RuntimeConfig,
    boot_in_background,
    get_actor,
    get_pool_actor,
    setup_logging,
)
from actors.states import DEPLOYMENT_ACTIVE, DEPLOYMENT_DELETABLE, DeploymentState
from actors.storage import Store

log = logging.getLogger(__name__)

REMOVE_RETRY_S = 30.0
# nodes asked of a pool per actor call when a deployment scales up
CREATE_BATCH = 100
# deployments scaling up at the same time within one reconcile round
CREATE_CONCURRENCY = 8
ROUNDS_KEPT = 120  # reconcile rounds whose duration stats() reports


@ray.remote
class DeploymentActor:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = RuntimeConfig(**cfg)
        setup_logging(self.cfg.log_level)
        self.planner = DeploymentPlanner(
            replace_grace_s=self.cfg.replace_grace_s, provision_timeout_s=self.cfg.provision_timeout_s
        )
        self.store: Store | None = None
        self.autoscaler = AutoscaleRunner()
        self.rollouts = RolloutRunner(  # issue 12: deployments in `updating` (actors/rollout.py)
            RolloutPlanner(
                deadline_s=self.cfg.rollout_deadline_s,
                replace_grace_s=self.cfg.replace_grace_s,
                provision_timeout_s=self.cfg.provision_timeout_s,
            )
        )
        self._boot_lock = asyncio.Lock()
        self._loop: Loop | None = None
        self._urgent: Loop | None = None
        self._removing: dict[str, float] = {}  # node_id -> when removal was last requested
        self._replica_state: dict[tuple[str, str], str] = {}
        self.last_reconcile_ms = 0.0
        self.reconciles = 0
        # the inventory's nodes, kept by its delta feed (actors/node_feed.py): a quiet round reads a version
        self.mirror = NodeMirror()
        self.quiet = QuietRounds()
        # per round: (ms, node changes, ms of its reads: the deployments and the node feed, side by side)
        self.rounds: deque[tuple[float, int, float]] = deque(maxlen=ROUNDS_KEPT)
        self._read_ms = 0.0
        boot_in_background(self._boot, "deployments")

    async def _boot(self) -> None:
        if self._loop is not None:
            return
        async with self._boot_lock:
            if self._loop is not None:
                return
            self.store = await Store.connect(self.cfg.dsn, max_size=4, master_key=self.cfg.master_key)
            for r in await self.store.list_replicas():
                self._replica_state[(r.deployment_id, r.node_id)] = r.state
            self._loop = Loop("deployments.reconcile", self.reconcile, self.cfg.reconcile_interval_s)
            self._loop.start()
            # issue 11: a request at zero or a panic load wakes the round at once (autoscale_runner.urgent)
            self._urgent = Loop("deployments.autoscale", self._autoscale_urgent, URGENT_POLL_S)
            self._urgent.start()

    async def _autoscale_urgent(self) -> None:
        if self.autoscaler.watching() and self._loop is not None:
            if self.autoscaler.urgent(await get_actor(INVENTORY).load.remote()):
                self._loop.wake.set()

    async def ready(self) -> bool:
        await self._boot()
        return True

    async def notify(self) -> None:
        """Something changed (API call): reconcile now rather than at the next tick."""
        await self._boot()
        assert self._loop is not None
        self.quiet.invalidate()
        self._loop.wake.set()

    async def stats(self) -> dict[str, Any]:
        await self._boot()
        m = self.mirror
        return {
            "reconciles": self.reconciles,
            "last_reconcile_ms": self.last_reconcile_ms,
            "rounds": list(self.rounds),  # the last rounds: (ms, nodes the feed changed, reads ms), oldest first
            "node_feed": {
                "nodes": len(m),
                "epoch": m.epoch,
                "version": m.version,
                "full_reads": m.full_reads,
                "delta_reads": m.delta_reads,
                "quiet_rounds": self.quiet.skipped,
            },
        }

    async def _read_nodes(self) -> int:
        """Bring the mirror of the nodes with a deployment up to date: the changes since its version (all of
        them after a restart of either actor, or when it fell behind the feed's history); returns how many."""
        epoch, version = self.mirror.position()
        return self.mirror.apply(await get_actor(INVENTORY).node_changes.remote(epoch, version, True))

    def _round_done(self, t0: float, changes: int) -> None:
        self.reconciles += 1
        self.last_reconcile_ms = (time.perf_counter() - t0) * 1000
        self.rounds.append((round(self.last_reconcile_ms, 3), changes, round(self._read_ms, 3)))

    async def reconcile(self) -> None:
        store = self.store
        assert store is not None
        t0 = time.perf_counter()
        active = set(DEPLOYMENT_ACTIVE) | {
            DeploymentState.STOPPING,
            DeploymentState.FAILED,
            DeploymentState.STOPPED,
        }
        # the deployments (Postgres) and the node changes (the inventory) side by side
        rows, changes = await asyncio.gather(store.list_deployments(states=active), self._read_nodes())
        self._read_ms = (time.perf_counter() - t0) * 1000
        deps = {d.id: d for d in rows}
        seen = list(deps.values())
        if self.quiet.quiet(seen, changes > 0):  # nothing changed and nothing waits on time: nothing to do
            self._round_done(t0, 0)
            return
        self.quiet.invalidate()
        await self._stop_deleted(deps)
        nodes = self.mirror.nodes()
        scaling = [d.id for d in deps.values() if d.autoscaling]
        if scaling:  # issue 11: targets follow the load (autoscale_runner.py)
            try:
                load = await get_actor(INVENTORY).load.remote()
                engines = await get_actor(INVENTORY).engine_metrics.remote(scaling)
            except Exception as exc:  # the inventory restarting: the engines' own figures (heartbeats) alone
                log.warning("autoscaling without the proxies' load this round: %s", type(exc).__name__)
                load, engines = {}, None
            if engines is not None:  # not in the node feed (they change with every heartbeat)
                wanted = set(scaling)
                for n in nodes:
                    if n.get("deployment_id") in wanted:
                        n["metrics"] = engines.get(n["id"]) or {}
            annotate_load(nodes, load.get("nodes") or {})
            await self.autoscaler.run(store, deps, nodes, load)
        rolling = await self.rollouts.run(store, deps, nodes)  # the deployments in `updating`
        views = [
            DeploymentView(d.id, d.state, d.desired_replicas, d.generation, d.error)
            for d in deps.values()
            if d.state != DeploymentState.UPDATING
        ]
        actions = self.planner.plan(views, nodes) + rolling
        await self._sync_replicas(deps, nodes)
        models: dict[str, ModelRecord | None] = {}
        creates: list[Any] = []
        for a in actions:
            dep = deps.get(a.deployment_id)
            if dep is None:
                continue
            try:
                if isinstance(a, CreateReplicas):
                    if dep.model_id not in models:
                        models[dep.model_id] = await store.get_model(dep.model_id)
                    model = models[dep.model_id]
                    if model is not None:
                        creates.append(self._create_logged(dep, model, a.count))
                elif isinstance(a, RemoveReplica):
                    await self._remove(dep, a.node_id, a.reason, a.drain)
                elif isinstance(a, SetState):
                    new = await store.cas_deployment(dep.id, [dep.state], a.state, error=a.error)
                    if new is not None:
                        if new.state != dep.state:
                            log.info("deployment %s: %s -> %s", dep.id, dep.state, a.state)
                        deps[dep.id] = new
            except Exception:
                log.exception("deployment %s: action %s failed", dep.id, a)
        # deployments scale up side by side (their pools may run in different actors), a few at a time
        sem = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def bounded(coro: Any) -> None:
            async with sem:
                await coro

        await asyncio.gather(*(bounded(c) for c in creates))
        await self._finish_deletes(deps, nodes)
        updating = any(d.state == DeploymentState.UPDATING for d in deps.values())
        self.quiet.ran(seen, steady=not actions and not self.planner.time_bound and not scaling and not updating)
        self._round_done(t0, changes)

    async def _stop_deleted(self, deps: dict[str, DeploymentRecord]) -> None:
        """A deployment marked for deletion and still active goes to stopping (the API sets it too, but its
        compare-and-set loses when this actor moved the state in between, e.g. degraded -> running)."""
        assert self.store is not None
        for dep in list(deps.values()):
            if not dep.delete_requested or dep.state not in DEPLOYMENT_ACTIVE:
                continue
            new = await self.store.cas_deployment(dep.id, [dep.state], DeploymentState.STOPPING)
            if new is not None:
                log.info("deployment %s: %s -> stopping (delete requested)", dep.id, dep.state)
                deps[dep.id] = new

    async def _finish_deletes(self, deps: dict[str, DeploymentRecord], nodes: list[dict[str, Any]]) -> None:
        """A deployment marked for deletion goes once it is stopped/failed and none of its nodes is left."""
        assert self.store is not None
        for dep in deps.values():
            if not dep.delete_requested or dep.state not in DEPLOYMENT_DELETABLE:
                continue
            if any(n.get("deployment_id") == dep.id and n["state"] != "terminated" for n in nodes):
                continue
            if await self.store.delete_deployment(dep.id, DEPLOYMENT_DELETABLE):
                self.planner.forget(dep.id)
                for key in [k for k in self._replica_state if k[0] == dep.id]:
                    self._replica_state.pop(key, None)
                log.info("deployment %s deleted", dep.id)

    async def reset(self, deployment_id: str) -> None:
        """Forget failure counts (a user restarts a failed deployment)."""
        await self._boot()
        self.planner.reset(deployment_id)
        self.quiet.invalidate()

    async def _create_logged(self, dep: DeploymentRecord, model: ModelRecord, count: int) -> None:
        try:
            await self._create(dep, model, count)
        except Exception:
            log.exception("deployment %s: creating %d replicas failed", dep.id, count)

    async def _create(self, dep: DeploymentRecord, model: ModelRecord, count: int) -> None:
        """Ask the pool for `count` new nodes, in batches of CREATE_BATCH (one actor call and one replicas
        write per batch: 1,000 replicas are 10 round trips, not 2,000)."""
        assert self.store is not None
        pool = get_pool_actor(dep.pool_id, self.cfg)
        wl = await generation_workload(self.store, dep, model) or workload_for(dep, model)  # the target generation
        left = count
        while left > 0:
            ids = [new_id("node") for _ in range(min(left, CREATE_BATCH))]
            left -= len(ids)
            res = await pool.create_nodes.remote(ids, wl)
            made = [n["id"] for n in res["nodes"]]
            await self.store.insert_replicas([ReplicaRecord(dep.id, n, "provisioning", dep.generation) for n in made])
            for n in made:
                self._replica_state[(dep.id, n)] = "provisioning"
            if not res["ok"]:
                # quota: stays in its state, the reason is shown to the user; retried next round
                if dep.error != res["error"]:
                    await self.store.cas_deployment(dep.id, [dep.state], dep.state, error=res["error"])
                    dep.error = res["error"]
                return
            if dep.error:
                await self.store.cas_deployment(dep.id, [dep.state], dep.state, error=None)
                dep.error = None

    async def _remove(self, dep: DeploymentRecord, node_id: str, reason: str, drain: bool = True) -> None:
        """Drain (out of the routing table, in-flight requests finish) or, for a dead node, terminate at once."""
        now = time.monotonic()
        if now - self._removing.get(node_id, -1e9) < REMOVE_RETRY_S:
            return
        self._removing[node_id] = now
        if len(self._removing) > 1000:  # bounded: a node whose end this actor never saw is not kept forever
            for nid in [k for k, at in self._removing.items() if now - at > 10 * REMOVE_RETRY_S]:
                del self._removing[nid]
        log.info("deployment %s: %s replica on %s (%s)", dep.id, "draining" if drain else "removing", node_id, reason)
        pool = get_pool_actor(dep.pool_id, self.cfg)
        await (pool.drain_node if drain else pool.terminate_node).remote(node_id, reason)

    async def _sync_replicas(self, deps: dict[str, DeploymentRecord], nodes: list[dict[str, Any]]) -> None:
        """Mirror node states into the replicas table; write only what changed."""
        assert self.store is not None
        seen: set[tuple[str, str]] = set()
        for n in nodes:
            dep_id = n.get("deployment_id")
            if dep_id not in deps:
                continue
            key = (dep_id, n["id"])
            seen.add(key)
            state = n["state"]
            if state == "terminated":
                if key in self._replica_state:
                    await self.store.delete_replica(*key)
                    self._replica_state.pop(key, None)
                    self._removing.pop(n["id"], None)
                continue
            if self._replica_state.get(key) != state:
                rec = ReplicaRecord(dep_id, n["id"], state, deps[dep_id].generation, endpoint=n.get("endpoint"))
                await self.store.upsert_replica(rec)
                self._replica_state[key] = state
        for key in [k for k in self._replica_state if k not in seen and k[0] in deps]:
            await self.store.delete_replica(*key)
            self._replica_state.pop(key, None)
