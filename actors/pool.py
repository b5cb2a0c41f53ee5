"""PoolActor: the Ray actor that runs a compute pool (or, with INFERIA_POOL_HOSTS, several), hosting a
lightweight node actor per node. PoolRuntime is one pool's part of it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import ray

from actors import pool_settings
from actors.generations import workload as generation_workload
from actors.pool_core import PoolManager
from actors.provider_calls import count_calls, totals
from actors.records import new_secret, workload_for
from actors.runtime import (
    INVENTORY,
    Loop,
    RuntimeConfig,
    boot_in_background,
    get_actor,
    host_index,
    pool_actor_name,
    setup_logging,
)
from actors.states import NODE_ALIVE, NodeState, PoolState
from actors.storage import Store
from adapters.base import PermanentProviderError, ProviderError, WorkloadSpec
from adapters.registry import create_adapter

log = logging.getLogger(__name__)

PROVIDER_RECONCILE_S = 10.0


class PoolGone(PermanentProviderError):
    """The pool is deleted (or never existed): its runtime has nothing to run."""


class RayInventory:
    """InventoryPort over the inventory actor's handle."""

    def __init__(self) -> None:
        self.handle = get_actor(INVENTORY)

    async def register(self, info: dict[str, Any]) -> None:
        await self.handle.register.remote(info)

    async def register_many(self, infos: list[dict[str, Any]]) -> None:
        await self.handle.register_many.remote(infos)

    async def transition(self, node_id: str, state: NodeState, reason: str | None) -> bool:
        return bool(await self.handle.transition.remote(node_id, str(state), reason))

    async def relay_health(self, pool_id: str, beats: list[dict[str, Any]], first: bool) -> list[Any]:
        return list(await self.handle.heartbeats.remote(beats, relay_pool=pool_id, first_relay=first))

    async def node_load(self, node_ids: list[str]) -> dict[str, int]:
        return dict(await self.handle.node_load.remote(node_ids))


def workload_spec(workload: dict[str, Any] | None) -> WorkloadSpec | None:
    if workload is None:
        return None
    w = dict(workload)
    w["args"] = tuple(w.get("args") or ())
    return WorkloadSpec(**w)


class PoolRuntime:
    """One pool: its PoolManager, its provider-reconcile loop and its API (all idempotent)."""

    def __init__(
        self,
        pool_id: str,
        cfg: RuntimeConfig,
        store: Callable[[], Awaitable[Store]],
        on_deleted: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.pool_id = pool_id
        self.cfg = cfg
        self._get_store = store
        self._on_deleted = on_deleted  # the deletion settled: the actor stops this runtime (or itself)
        self.retired = False
        self.manager: PoolManager | None = None
        self.store: Store | None = None
        self._boot_lock = asyncio.Lock()
        self._loop: Loop | None = None
        boot_in_background(self._boot_unless_gone, f"pool.{pool_id}")

    async def _boot(self) -> PoolManager:
        if self.manager is not None:
            return self.manager
        async with self._boot_lock:
            if self.manager is not None:
                return self.manager
            self.store = await self._get_store()
            pool = await self.store.get_pool(self.pool_id)
            if pool is None:
                raise PoolGone(f"pool {self.pool_id} does not exist")
            adapter = count_calls(
                create_adapter(pool.provider, pool.id, pool.provider_config, self.cfg.data_dir), pool.provider
            )
            token_key = await self.store.get_or_create_secret("node_token_key", lambda: new_secret("ntk"))
            manager = PoolManager(
                pool,
                adapter,
                self.store,
                RayInventory(),
                token_key=token_key,
                heartbeat_url=self.cfg.heartbeat_url,
                heartbeat_fallback_url=self.cfg.heartbeat_fallback_url,
                heartbeat_interval_s=self.cfg.heartbeat_interval_s,
                drain_timeout_s=self.cfg.drain_timeout_s,
                workloads=self._workload,
            )
            await manager.start()
            self.manager = manager
            self._loop = Loop(f"pool.{self.pool_id}", self._tick, PROVIDER_RECONCILE_S)
            self._loop.start()
            log.info("pool %s (%s) ready with %d nodes", pool.name, pool.provider, len(manager.nodes))
            return manager

    async def _workload(self, deployment_id: str) -> WorkloadSpec | None:
        """What a deployment's nodes run, from Postgres (a restarted pool provisions a node again with it)."""
        assert self.store is not None
        dep = await self.store.get_deployment(deployment_id)
        model = await self.store.get_model(dep.model_id) if dep is not None else None
        if dep is None or model is None:
            return None
        # the target generation's model, arguments, environment and image (issue 12)
        return workload_spec(await generation_workload(self.store, dep, model) or workload_for(dep, model))

    async def _boot_unless_gone(self) -> None:
        try:
            await self._boot()
        except PermanentProviderError as exc:  # deleted pool, provider not installed: nothing to retry
            log.warning("pool %s not started: %s", self.pool_id, exc)
            if isinstance(exc, PoolGone):
                self._retire()

    async def _tick(self) -> None:
        m = self.manager
        if m is None or self.store is None:
            return
        fresh = await self.store.get_pool(self.pool_id)
        if fresh is not None:
            m.pool.target_nodes = fresh.target_nodes
            m.pool.max_nodes = fresh.max_nodes
            m.pool.min_nodes = fresh.min_nodes
            m.pool.max_cost_per_hour = fresh.max_cost_per_hour
            m.pool.allowed_gpu_types = fresh.allowed_gpu_types
            if fresh.state == PoolState.DELETING:
                m.pool.state = PoolState.DELETING
        await m.reconcile_provider()
        if m.pool.state == PoolState.ACTIVE:
            await m.scale_idle()
        elif m.pool.state == PoolState.DELETING:
            await self.delete_pool()  # idempotent: resumes a deletion a restart (or a crash) interrupted

    # ------------------------------------------------------------ API (all idempotent)
    async def ready(self) -> bool:
        await self._boot()
        return True

    async def create_node(self, node_id: str, workload: dict[str, Any] | None) -> dict[str, Any]:
        res = await self.create_nodes([node_id], workload)
        return {"ok": True, "node": res["nodes"][0]} if res["ok"] else {"ok": False, "error": res["error"]}

    async def create_nodes(self, node_ids: list[str], workload: dict[str, Any] | None) -> dict[str, Any]:
        m = await self._boot()
        await self._refresh_state(m)
        created, error = await m.create_nodes(node_ids, workload_spec(workload))
        out: dict[str, Any] = {"ok": error is None, "error": error, "nodes": created}
        if error is not None and m.pool.state != PoolState.ACTIVE:
            out["code"] = "pool_not_active"
        return out

    async def _refresh_state(self, m: PoolManager) -> None:
        """A deletion is marked in Postgres (by the API, in one transaction with its check) before this actor
        hears of it: new nodes are refused from that moment, whatever this actor last saw."""
        if m.pool.state != PoolState.ACTIVE or self.store is None:
            return
        fresh = await self.store.get_pool(self.pool_id)
        if fresh is None or fresh.state != PoolState.ACTIVE:
            m.pool.state = PoolState.DELETED if fresh is None else fresh.state

    async def terminate_node(self, node_id: str, reason: str | None = None) -> bool:
        m = await self._boot()
        return await m.terminate_node(node_id, reason)

    async def drain_node(self, node_id: str, reason: str | None = None) -> bool:
        m = await self._boot()
        return await m.drain_node(node_id, reason)

    async def node_status(self, node_id: str) -> dict[str, Any] | None:
        m = await self._boot()
        return await m.node_status(node_id)

    async def get_logs(self, node_id: str, tail: int = 100) -> list[str]:
        try:  # (a deleted pool's runtime does not boot: PoolGone)
            return await (await self._boot()).get_logs(node_id, tail)
        except ProviderError as exc:
            return [f"logs unavailable: {exc}"]

    async def scale(self, target: int) -> list[str]:
        m = await self._boot()
        m.pool.target_nodes = target
        return await m.scale_idle()

    async def update_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        m = await self._boot()
        refused = await pool_settings.update_config(m, changes)
        return {"ok": True} if refused is None else {"ok": False, "field": refused[0], "message": refused[1]}

    async def discover(self) -> list[dict[str, Any]]:
        m = await self._boot()
        return [asdict(o) for o in await m.adapter.discover_resources()]

    async def reconcile_now(self) -> dict[str, list[str]]:
        m = await self._boot()
        return await m.reconcile_provider()

    async def summary(self) -> dict[str, Any]:
        m = await self._boot()
        return m.summary()

    async def delete_pool(self) -> bool:
        """Terminate every node, wait for them to be gone, mark the pool deleted. Idempotent."""
        m = await self._boot()
        assert self.store is not None
        await self.store.set_pool_state(self.pool_id, PoolState.DELETING, [PoolState.ACTIVE, PoolState.DELETING])
        m.pool.state = PoolState.DELETING
        m.pool.target_nodes = 0
        for node_id in list(m.nodes):
            await m.drain_node(node_id, "pool deleted")
        for _ in range(int((m.drain_timeout_s + 60) * 10)):
            if not m.nodes:
                break
            await asyncio.sleep(0.1)
        if m.nodes:
            return False
        for _ in range(100):  # the inventory writes the nodes' terminated states within its flush period
            left = await self.store.list_nodes(self.pool_id, NODE_ALIVE)
            if not left:
                break
            await asyncio.sleep(0.1)
        if left:
            return False  # the provider reconcile settles what is left; the next tick tries again
        await self.store.set_pool_state(self.pool_id, PoolState.DELETED, [PoolState.DELETING])
        m.pool.state = PoolState.DELETED
        self._retire()
        return True

    def _retire(self) -> None:
        """The deletion settled: stop the reconcile loop and the adapter (no loop left calling list_nodes). From
        a task of its own: the loop being stopped may be the one that finished the deletion."""
        if self.retired:
            return
        self.retired = True

        async def retire() -> None:
            await self.shutdown()
            if self._on_deleted is not None:
                await self._on_deleted(self.pool_id)
            log.info("pool %s deleted: its runtime stopped", self.pool_id)

        asyncio.get_running_loop().create_task(retire(), name=f"retire:{self.pool_id}")

    async def terminate_all(self, reason: str) -> int:
        """Terminate every node of this pool and wait (bounded) until they are gone."""
        m = await self._boot()
        if self._loop and self._loop.task:
            self._loop.task.cancel()  # no idle-node scaling while we stop
        m.pool.target_nodes = m.pool.min_nodes = 0
        for node_id in list(m.nodes):
            await m.terminate_node(node_id, reason)
        for _ in range(600):
            if not m.nodes:
                break
            await asyncio.sleep(0.1)
        return len(m.nodes)

    async def shutdown(self) -> None:
        if self._loop and self._loop.task:
            self._loop.task.cancel()
        if self.manager:
            await self.manager.shutdown()


@ray.remote
class PoolActor:
    """The Ray actor that runs pools: by default one pool (named `pool:<id>`, constructed with the pool id);
    with INFERIA_POOL_HOSTS=N, one of N hosts (`pools:<k>`, constructed with that name) running every
    pool whose id hashes to k. Each method takes the pool id first; callers use `runtime.PoolRef`, which
    adds it. On (re)start a host rebuilds its pools from Postgres, as a one-pool actor does."""

    def __init__(self, key: str, cfg: dict[str, Any]) -> None:
        self.key = key
        self.cfg = RuntimeConfig(**cfg)
        setup_logging(self.cfg.log_level)
        self.pools: dict[str, PoolRuntime] = {}
        self._store: Store | None = None
        self._store_lock = asyncio.Lock()
        boot_in_background(self._boot, f"pool-actor.{key}")

    async def _shared_store(self) -> Store:
        """One connection pool for every pool this process runs."""
        if self._store is None:
            async with self._store_lock:
                if self._store is None:
                    size = 3 if host_index(self.key) is None else 6
                    self._store = await Store.connect(self.cfg.dsn, max_size=size)
        return self._store

    async def _boot(self) -> None:
        if host_index(self.key) is None:
            self._runtime(self.key)
            return
        store = await self._shared_store()
        for pool in await store.list_pools():
            if pool.state in (PoolState.ACTIVE, PoolState.DELETING):
                if pool_actor_name(pool.id, self.cfg.pool_hosts) == self.key:
                    self._runtime(pool.id)

    def _runtime(self, pool_id: str) -> PoolRuntime:
        rt = self.pools.get(pool_id)
        if rt is None:
            rt = self.pools[pool_id] = PoolRuntime(pool_id, self.cfg, self._shared_store, self._retired)
        return rt

    async def _retired(self, pool_id: str) -> None:
        """A pool's deletion settled and its runtime stopped: a host drops it; a one-pool actor ends (without
        a restart), a little later so that the call that finished the deletion gets its answer."""
        self.pools.pop(pool_id, None)
        if host_index(self.key) is None:
            await asyncio.sleep(1.0)
            log.info("pool actor %s: pool deleted, exiting", self.key)
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def hosted(self) -> list[str]:
        """The pools this actor runs."""
        return sorted(self.pools)

    # ------------------------------------------------------------ API: PoolRuntime's, by pool id
    async def ready(self, pool_id: str) -> bool:
        return await self._runtime(pool_id).ready()

    async def create_node(self, pool_id: str, node_id: str, workload: dict[str, Any] | None) -> dict[str, Any]:
        return await self._runtime(pool_id).create_node(node_id, workload)

    async def create_nodes(self, pool_id: str, node_ids: list[str], workload: dict[str, Any] | None) -> dict[str, Any]:
        """Many create_node in one call (a deployment scaling by hundreds): the created nodes, in order, and
        the quota error that stopped it, if any. Idempotent per node id, like create_node."""
        return await self._runtime(pool_id).create_nodes(node_ids, workload)

    async def terminate_node(self, pool_id: str, node_id: str, reason: str | None = None) -> bool:
        return await self._runtime(pool_id).terminate_node(node_id, reason)

    async def drain_node(self, pool_id: str, node_id: str, reason: str | None = None) -> bool:
        return await self._runtime(pool_id).drain_node(node_id, reason)

    async def node_status(self, pool_id: str, node_id: str) -> dict[str, Any] | None:
        return await self._runtime(pool_id).node_status(node_id)

    async def get_logs(self, pool_id: str, node_id: str, tail: int = 100) -> list[str]:
        return await self._runtime(pool_id).get_logs(node_id, tail)

    async def scale(self, pool_id: str, target: int) -> list[str]:
        return await self._runtime(pool_id).scale(target)

    async def update_config(self, pool_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply changed pool settings, refused ({"ok": False, "field", "message"}) when the nodes it runs
        do not fit them."""
        return await self._runtime(pool_id).update_config(changes)

    async def provider_calls(self, pool_id: str = "") -> list[dict[str, Any]]:
        """Provider calls and errors made by this actor (every pool it runs), for /metrics."""
        return totals()

    async def discover(self, pool_id: str) -> list[dict[str, Any]]:
        return await self._runtime(pool_id).discover()

    async def reconcile_now(self, pool_id: str) -> dict[str, list[str]]:
        return await self._runtime(pool_id).reconcile_now()

    async def summary(self, pool_id: str) -> dict[str, Any]:
        return await self._runtime(pool_id).summary()

    async def delete_pool(self, pool_id: str) -> bool:
        return await self._runtime(pool_id).delete_pool()

    async def terminate_all(self, pool_id: str, reason: str) -> int:
        return await self._runtime(pool_id).terminate_all(reason)

    async def shutdown(self) -> None:
        for rt in list(self.pools.values()):
            await rt.shutdown()
        if self._store is not None:
            await self._store.close()
