"""Nodes registered straight into the inventory (no provider, no agent): the bench heartbeats for them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.records import hash_secret


def node_id(i: int) -> str:
    return f"node-{i:05d}"


def token(i: int) -> str:
    return f"tok-{i}"


def register(inv: Any, pool_id: str, count: int, model_of: Callable[[int], str] | None = None) -> list[str]:
    """Register `count` nodes with the inventory actor in one call and return their ids. With `model_of`,
    node i serves model model_of(i) at its own endpoint and enters the routing table once a `ready`
    heartbeat arrives; without, it is a bare `ready` node (heartbeats only)."""
    infos: list[dict[str, Any]] = []
    for i in range(count):
        info: dict[str, Any] = {
            "id": node_id(i),
            "pool_id": pool_id,
            "provider": "bench",
            "state": "ready" if model_of is None else "provisioning",
            "token_hash": hash_secret(token(i)),
        }
        if model_of is not None:
            model = model_of(i)
            info |= {"deployment_id": f"dep-{model}", "model_name": model, "endpoint": f"http://127.0.0.1:{20000 + i}"}
        infos.append(info)
    import ray

    ray.get(inv.register_many.remote(infos))
    return [i["id"] for i in infos]
