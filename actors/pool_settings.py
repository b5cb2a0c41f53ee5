"""Changing a running pool's settings (PATCH /v1/pools/{id}): checked against the nodes it runs now, then
applied to its PoolManager. The API writes the row once the pool accepted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.pool_core import PoolManager

CHANGEABLE = ("min_nodes", "max_nodes", "target_nodes", "max_cost_per_hour", "allowed_gpu_types", "provider_config")


def check(m: PoolManager, changes: dict[str, Any]) -> tuple[str, str] | None:
    """(field, message) when the pool's alive nodes do not fit the new settings, else None."""
    alive = [a.record for a in m.nodes.values() if not a.terminating]
    max_nodes = changes.get("max_nodes", m.pool.max_nodes)
    if len(alive) > max_nodes:
        return "max_nodes", f"max_nodes: the pool runs {len(alive)} nodes now; stop or delete some first"
    cost = changes.get("max_cost_per_hour", m.pool.max_cost_per_hour)
    running = sum(r.price_per_hour or 0.0 for r in alive)
    if cost is not None and running > cost + 1e-9:
        return "max_cost_per_hour", f"max_cost_per_hour: the pool's nodes cost {running:.4f} per hour now"
    allowed = changes.get("allowed_gpu_types", m.pool.allowed_gpu_types)
    if allowed:
        off = sorted({r.gpu_type for r in alive if r.gpu_type and r.gpu_type not in allowed})
        if off:
            return "allowed_gpu_types", f"allowed_gpu_types: the pool runs nodes with {', '.join(off)}"
    return None


async def update_config(m: PoolManager, changes: dict[str, Any]) -> tuple[str, str] | None:
    """Check and apply under the pool's lock (no node is created meanwhile); then provision up to a raised
    min_nodes/target_nodes. Idempotent: the same changes again change nothing."""
    async with m._lock:
        refused = check(m, changes)
        if refused is not None:
            return refused
        for key, value in changes.items():
            if key == "provider_config":
                m.pool.provider_config = dict(value)
                m.adapter.config.clear()  # adapters that read their config live see the change
                m.adapter.config.update(value)
            elif key in CHANGEABLE:
                setattr(m.pool, key, value)
    await m.scale_idle()
    return None
