"""Handles for Python users of a running control plane (inside the same Ray cluster).

    inv = ray.get_actor("inventory", namespace="inferia")
    node = NodeHandle.lookup("node-1234")      # finds the owning pool through the inventory
    await node.status(); await node.logs(50); await node.drain(); await node.terminate()

A node is not a Ray actor (a node actor is an asyncio task inside its pool's PoolActor), so the
handle forwards every call to the owning PoolActor or to the inventory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from actors.runtime import DEPLOYMENTS, INVENTORY, NAMESPACE, PoolRef, get_pool_actor


def inventory() -> Any:
    return ray.get_actor(INVENTORY, namespace=NAMESPACE)


def deployments() -> Any:
    return ray.get_actor(DEPLOYMENTS, namespace=NAMESPACE)


def pool(pool_id: str) -> PoolRef:
    """The pool's actor (INFERIA_POOL_HOSTS, when set, must be the control plane's)."""
    return get_pool_actor(pool_id)


@dataclass(frozen=True)
class NodeHandle:
    node_id: str
    pool_id: str

    @classmethod
    def lookup(cls, node_id: str) -> NodeHandle:
        view = ray.get(inventory().node.remote(node_id))
        if view is None:
            raise KeyError(f"node {node_id!r} is not known to the inventory")
        return cls(node_id, view["pool_id"])

    async def status(self) -> dict[str, Any] | None:
        """The inventory's view: state, health score, seconds since the last heartbeat, endpoint."""
        return await inventory().node.remote(self.node_id)  # type: ignore[no-any-return]

    async def lifecycle(self) -> dict[str, Any] | None:
        """The pool's view: the node record and whether its node actor is busy."""
        return await pool(self.pool_id).node_status.remote(self.node_id)  # type: ignore[no-any-return]

    async def drain(self, reason: str = "drained by request") -> bool:
        return await pool(self.pool_id).drain_node.remote(self.node_id, reason)  # type: ignore[no-any-return]

    async def terminate(self, reason: str = "terminated by request") -> bool:
        return await pool(self.pool_id).terminate_node.remote(self.node_id, reason)  # type: ignore[no-any-return]

    async def logs(self, tail: int = 100) -> list[str]:
        return await pool(self.pool_id).get_logs.remote(self.node_id, tail)  # type: ignore[no-any-return]
