"""Handles for Python users of a running control plane (inside the same Ray cluster).

    h = connect("192.0.2.2:6379")              # the Ray (GCS) address; controller.handles.connect() reads it
    ray.get(h.inventory.routing_table.remote())  # from the data dir's runtime.json of a running `up`
    pool = h.pool("pool-1234")                  # a PoolRef: ray.get(pool.summary.remote())
    node = h.node("node-1234")                  # finds the owning pool through the inventory
    await node.status(); await node.logs(50); await node.drain(); await node.terminate()

A node is not a Ray actor (a node actor is an asyncio task inside its pool's PoolActor), so the
handle forwards every call to the owning PoolActor or to the inventory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from actors.runtime import DEPLOYMENTS, INVENTORY, NAMESPACE, PoolRef, get_pool_actor, pool_actor_name


def inventory() -> Any:
    return ray.get_actor(INVENTORY, namespace=NAMESPACE)


def deployments() -> Any:
    return ray.get_actor(DEPLOYMENTS, namespace=NAMESPACE)


def pool(pool_id: str, pool_hosts: int | None = None) -> PoolRef:
    """The pool's actor. pool_hosts: the control plane's INFERIA_POOL_HOSTS (None: this process's variable)."""
    if pool_hosts is None:
        return get_pool_actor(pool_id)
    name = pool_actor_name(pool_id, pool_hosts)
    return PoolRef(ray.get_actor(name, namespace=NAMESPACE), pool_id, name)


@dataclass(frozen=True)
class Handles:
    """The actors of one running control plane: `inventory`, `deployments`, a pool's actor, a node."""

    inventory: Any
    deployments: Any
    pool_hosts: int | None = None

    def pool(self, pool_id: str) -> PoolRef:
        return pool(pool_id, self.pool_hosts)

    def node(self, node_id: str) -> NodeHandle:
        return NodeHandle.lookup(node_id, self.pool_hosts)


def connect(address: str | None = None, pool_hosts: int | None = None) -> Handles:
    """Join the Ray cluster at `address` (a GCS address, e.g. `ray_address` of runtime.json; None: "auto")
    in the control plane's namespace, unless this process already joined one, and return the handles."""
    if not ray.is_initialized():
        ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False)
    return Handles(inventory(), deployments(), pool_hosts)


@dataclass(frozen=True)
class NodeHandle:
    node_id: str
    pool_id: str
    pool_hosts: int | None = None

    @classmethod
    def lookup(cls, node_id: str, pool_hosts: int | None = None) -> NodeHandle:
        view = ray.get(inventory().node.remote(node_id))
        if view is None:
            raise KeyError(f"node {node_id!r} is not known to the inventory")
        return cls(node_id, view["pool_id"], pool_hosts)

    def _pool(self) -> PoolRef:
        return pool(self.pool_id, self.pool_hosts)

    async def status(self) -> dict[str, Any] | None:
        """The inventory's view: state, health score, seconds since the last heartbeat, endpoint."""
        return await inventory().node.remote(self.node_id)  # type: ignore[no-any-return]

    async def lifecycle(self) -> dict[str, Any] | None:
        """The pool's view: the node record and whether its node actor is busy."""
        return await self._pool().node_status.remote(self.node_id)  # type: ignore[no-any-return]

    async def drain(self, reason: str = "drained by request") -> bool:
        return await self._pool().drain_node.remote(self.node_id, reason)  # type: ignore[no-any-return]

    async def terminate(self, reason: str = "terminated by request") -> bool:
        return await self._pool().terminate_node.remote(self.node_id, reason)  # type: ignore[no-any-return]

    async def logs(self, tail: int = 100) -> list[str]:
        return await self._pool().get_logs.remote(self.node_id, tail)  # type: ignore[no-any-return]
