"""Shared fakes for the unit tests: a steppable clock, a recording sleep, an in-memory provider
adapter, store and inventory. Nothing here starts Ray, PostgreSQL or Redis."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from actors.inventory_core import Heartbeat, HeartbeatResult, InventoryCore
from actors.records import NodeRecord
from actors.states import NodeState
from adapters.base import (
    Capabilities,
    NodeRef,
    NodeStatus,
    PermanentProviderError,
    ProviderAdapter,
    ProviderNodeStatus,
    ProvisionedNode,
    ProvisionRequest,
    ResourceOffer,
    TemporaryProviderError,
)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


class RecordingSleep:
    """An async sleep that records the delays, optionally advances a fake clock, and yields once."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.delays: list[float] = []
        self.clock = clock

    async def __call__(self, s: float) -> None:
        self.delays.append(s)
        if self.clock is not None:
            self.clock.advance(s)
        await asyncio.sleep(0)


async def wait_until(cond: Callable[[], bool], rounds: int = 500, what: str = "condition") -> None:
    """Let other tasks run (event-loop turns, no real time) until cond() holds; fail when it never does."""
    for _ in range(rounds):
        if cond():
            return
        await asyncio.sleep(0)
    if not cond():
        raise AssertionError(f"{what} did not hold after {rounds} event-loop turns")


async def settle(rounds: int = 50) -> None:
    """Give every ready task a few turns."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------------------------- adapter
class FakeAdapter(ProviderAdapter):
    """In-memory provider. Idempotent by node id, like the real contract asks.

    Knobs: `temporary_failures` (the next N provision calls raise TemporaryProviderError),
    `permanent_error` (every provision call raises PermanentProviderError with this text),
    `lose_replies` (the next N provision calls create the instance, then raise a temporary error),
    `deprovision_failures` (the next N deprovision calls raise TemporaryProviderError),
    `status_override` (node id -> status reported by get_node_status), `list_error`,
    `gate` (when set, provision waits for it: a call "in flight").
    """

    name: ClassVar[str] = "fake"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, pool_id: str, config: dict[str, Any] | None = None, data_dir: str | None = None) -> None:
        super().__init__(pool_id, config, data_dir)
        self.instances: dict[str, ProvisionedNode] = {}
        self.temporary_failures = 0
        self.permanent_error: str | None = None
        self.lose_replies = 0
        self.deprovision_failures = 0
        self.status_override: dict[str, ProviderNodeStatus] = {}
        self.list_error = False
        self.gate: asyncio.Event | None = None
        self.provision_calls: list[str] = []
        self.deprovision_calls: list[str] = []
        self.status_calls: list[str] = []
        self.created = 0
        self.closed = False
        self._seq = 0

    async def discover_resources(self) -> list[ResourceOffer]:
        return [ResourceOffer(provider=self.name, region="local")]

    def make_instance(self, node_id: str, pool_id: str | None = None) -> ProvisionedNode:
        """Create an instance directly (as if created behind the control plane's back)."""
        self._seq += 1
        node = ProvisionedNode(
            node_id=node_id,
            pool_id=pool_id or self.pool_id,
            provider_instance_id=f"i-{self._seq:04d}",
            endpoint=f"http://10.0.0.{self._seq}:8000",
            ip_address=f"10.0.0.{self._seq}",
            vcpu=4,
            ram_mb=8192,
            resources={"served_model": f"served-{node_id}"},
        )
        self.instances[node_id] = node
        self.created += 1
        return node

    async def provision_node(self, req: ProvisionRequest) -> ProvisionedNode:
        self.provision_calls.append(req.node_id)
        if self.gate is not None:
            await self.gate.wait()
        if self.permanent_error is not None:
            raise PermanentProviderError(self.permanent_error)
        if self.temporary_failures > 0:
            self.temporary_failures -= 1
            raise TemporaryProviderError("rate limited (429)")
        node = self.instances.get(req.node_id)
        if node is None:
            node = self.make_instance(req.node_id, req.pool_id)
        if self.lose_replies > 0:
            self.lose_replies -= 1
            raise TemporaryProviderError("connection reset after the instance was created")
        return node

    async def deprovision_node(self, node: NodeRef) -> None:
        self.deprovision_calls.append(node.node_id)
        if self.deprovision_failures > 0:
            self.deprovision_failures -= 1
            raise TemporaryProviderError("provider API down")
        self.instances.pop(node.node_id, None)  # already gone is success

    async def get_node_status(self, node: NodeRef) -> NodeStatus:
        self.status_calls.append(node.node_id)
        if node.node_id in self.status_override:
            return NodeStatus(self.status_override[node.node_id])
        if node.node_id in self.instances:
            return NodeStatus(ProviderNodeStatus.RUNNING)
        return NodeStatus(ProviderNodeStatus.TERMINATED, "not found")

    async def list_nodes(self, pool_id: str) -> list[ProvisionedNode]:
        if self.list_error:
            raise TemporaryProviderError("list failed")
        return [n for n in self.instances.values() if n.pool_id == pool_id]

    async def get_logs(self, node: NodeRef, tail: int = 100) -> list[str]:
        return [f"log line of {node.node_id}"][:tail]

    async def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------------------------- store
_PROVISIONED_FIELDS = {
    "provider_instance_id",
    "gpu_type",
    "gpu_count",
    "vcpu",
    "ram_mb",
    "ip_address",
    "endpoint",
    "resources",
    "price_per_hour",
    "token_hash",
}


class FakeStore:
    """The StorePort methods the pool uses, in memory, with the storage layer's semantics."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeRecord] = {}
        self.events: list[tuple[str, str, str, dict[str, Any]]] = []
        self.insert_calls = 0

    async def insert_node(self, n: NodeRecord) -> NodeRecord:
        """Idempotent by id: a retried insert returns the existing row."""
        self.insert_calls += 1
        if n.id not in self.nodes:
            self.nodes[n.id] = copy.deepcopy(n)
            await self.add_event("node.created", "node", n.id, {"pool_id": n.pool_id})
        return copy.deepcopy(self.nodes[n.id])

    async def update_node_provisioned(self, node_id: str, fields: dict[str, Any]) -> NodeRecord | None:
        rec = self.nodes.get(node_id)
        if rec is None:
            return None
        for k, v in fields.items():
            if k in _PROVISIONED_FIELDS:
                setattr(rec, k, copy.deepcopy(v))
        return copy.deepcopy(rec)

    async def list_nodes(
        self, pool_id: str | None = None, states: Iterable[NodeState] | None = None
    ) -> list[NodeRecord]:
        wanted = None if states is None else {str(s) for s in states}
        return [
            copy.deepcopy(r)
            for r in self.nodes.values()
            if (pool_id is None or r.pool_id == pool_id) and (wanted is None or str(r.state) in wanted)
        ]

    async def add_event(self, kind: str, entity_type: str, entity_id: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((kind, entity_type, entity_id, dict(data or {})))

    def apply_node_transitions(
        self, changes: Sequence[tuple[str, Sequence[NodeState], NodeState, str | None]]
    ) -> list[str]:
        """Compare-and-set, like Store.apply_node_transitions."""
        changed = []
        for node_id, expected, new, reason in changes:
            rec = self.nodes.get(node_id)
            if rec is not None and str(rec.state) in {str(s) for s in expected}:
                rec.state = NodeState(new)
                rec.state_reason = reason
                changed.append(node_id)
        return changed

    def event_kinds(self, entity_id: str | None = None) -> list[str]:
        return [k for k, _, eid, _ in self.events if entity_id is None or eid == entity_id]


# ---------------------------------------------------------------------------------------------- inventory
class FakeInventory:
    """InventoryPort over a real InventoryCore; flushes its state writes to the fake store at once."""

    def __init__(self, core: InventoryCore, store: FakeStore | None = None) -> None:
        self.core = core
        self.store = store
        self.registered: list[dict[str, Any]] = []
        self.register_batches = 0
        self.transitions: list[tuple[str, NodeState, str | None, bool]] = []
        self.load_calls = 0

    async def register(self, info: dict[str, Any]) -> None:
        self.registered.append(dict(info))
        self.core.register(info)

    async def register_many(self, infos: list[dict[str, Any]]) -> None:
        self.register_batches += 1
        for info in infos:
            await self.register(info)

    async def transition(self, node_id: str, state: NodeState, reason: str | None) -> bool:
        ok = self.core.transition(node_id, NodeState(state), reason)
        self.transitions.append((node_id, NodeState(state), reason, ok))
        self.flush()
        return ok

    def heartbeat(self, hb: Heartbeat) -> HeartbeatResult:
        res = self.core.heartbeat(hb)
        self.flush()
        return res

    async def relay_health(self, pool_id: str, beats: list[dict[str, Any]], first: bool) -> list[Any]:
        results = self.core.relay(pool_id, (Heartbeat(**b) for b in beats), first)
        self.flush()
        return [(int(r.status), r.node_id, r.message) for r in results]

    async def node_load(self, node_ids: list[str]) -> dict[str, int]:
        self.load_calls += 1
        return self.core.node_load(node_ids)

    def flush(self) -> None:
        states, _beats = self.core.take_writes()
        if self.store is not None:
            self.store.apply_node_transitions(states)

    def state(self, node_id: str) -> NodeState | None:
        e = self.core.nodes.get(node_id)
        return None if e is None else e.state
