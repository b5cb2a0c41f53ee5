"""Reads what /metrics reports about the control plane's current state (one snapshot per refresh)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from actors.runtime import call, get_pool_actor, pool_actor_name
from actors.states import NODE_ALIVE
from serve_app.metrics import Snapshot

if TYPE_CHECKING:
    from serve_app.context import AppContext

log = logging.getLogger(__name__)

_last_calls: dict[str, list[dict[str, Any]]] = {}  # pool actor name -> its last answer (a missed one keeps it)


async def _provider_calls(ctx: AppContext, pool_ids: list[str]) -> list[dict[str, Any]]:
    """Each pool actor's provider-call totals (one call per actor, not per pool, with pool hosts)."""
    by_name: dict[str, str] = {}
    for pid in pool_ids:
        by_name.setdefault(pool_actor_name(pid, ctx.cfg.pool_hosts), pid)

    async def one(name: str, pid: str) -> None:
        try:
            ref = get_pool_actor(pid)  # never creates a missing actor
            _last_calls[name] = await call(ref.provider_calls.remote(), 2)
        except Exception as exc:  # a restarting actor: keep its last figures
            log.debug("metrics: provider calls of %s unavailable: %s", name, exc)

    await asyncio.gather(*(one(n, p) for n, p in by_name.items()))
    for gone in set(_last_calls) - set(by_name):
        _last_calls.pop(gone, None)
    return [row for rows in _last_calls.values() for row in rows]


async def read_snapshot(ctx: AppContext) -> Snapshot:
    store = ctx.store
    assert store is not None
    inv_ref = ctx.inventory().stats.remote()
    dep_ref = ctx.deployments().stats.remote()
    pools = await store.list_pools()
    inv, dep_stats, nodes, deps, models, usage, calls = await asyncio.gather(
        call(inv_ref, 10),
        call(dep_ref, 10),
        ctx.live_nodes.get(),
        store.list_deployments(),
        store.list_models(),
        store.pool_usage(),
        _provider_calls(ctx, [p.id for p in pools if p.state != "deleted"]),
    )
    pool_names = {p.id: p.name for p in pools}
    model_names = {m.id: m.name for m in models}
    alive = {str(s) for s in NODE_ALIVE}
    return Snapshot(
        inventory=inv,
        deployments_actor=dep_stats,
        nodes=list(nodes.values()),
        deployments=[
            {
                "id": d.id,
                "model": model_names.get(d.model_id),
                "pool": pool_names.get(d.pool_id, d.pool_id),
                "state": str(d.state),
                "desired": d.desired_replicas,
            }
            for d in deps
        ],
        pools=[
            {
                "id": p.id,
                "name": p.name,
                "provider": p.provider,
                "state": str(p.state),
                "min_nodes": p.min_nodes,
                "target_nodes": p.target_nodes,
                "max_nodes": p.max_nodes,
                "max_cost_per_hour": p.max_cost_per_hour,
            }
            for p in pools
        ],
        usage=[u for u in usage if u["state"] in alive],
        provider_calls=calls,
        ongoing=dict(ctx.proxy.outstanding),
        replica={
            "heartbeat_requests": ctx.counters.heartbeat_requests,
            "heartbeat_batches": ctx.heartbeats.batches,
            "proxy_requests": ctx.proxy.requests_total,
        },
    )
