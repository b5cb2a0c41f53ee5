"""The provider reconcile of one pool, as named steps: what the provider runs is the truth about money.

Each round lists the pool's nodes at the provider once, then:
1. lost writes: alive in Postgres, tracked by no node actor, not at the provider -> recorded terminated;
2. known nodes the provider lists: adopt (merge its facts) or retry a terminate that did not finish;
3. known nodes it does not list: vanished only when `get_node_status` confirms it (unknown is not dead);
4. dead directories: what is left of nodes that died untracked (providers that keep local state);
5. orphans: listed for this pool but unknown to Postgres -> an event, and deprovisioned unless
   `cleanup_orphans: false`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from actors.node_actor import Cmd, NodeActor
from actors.records import NodeRecord
from actors.states import NODE_ALIVE, NodeState
from adapters.base import NodeRef, ProviderError, ProviderNodeStatus, ProvisionedNode

if TYPE_CHECKING:
    from actors.pool_core import PoolManager

log = logging.getLogger(__name__)

Report = dict[str, list[str]]


def empty_report() -> Report:
    return {"adopted": [], "vanished": [], "orphans": [], "retried": []}


def _real(v: Any) -> bool:
    return v is not None and v != 0 and v != "" and v != {}


def provider_fields(known: NodeRecord, node: ProvisionedNode) -> dict[str, Any]:
    """The provider's facts about a node, merged into what is known: a new real value wins, but None, 0 or
    empty (e.g. SkyPilot's list after a restart) never erases a known GPU type/count, price, endpoint or IP."""
    fields: dict[str, Any] = {}
    for key in (
        "provider_instance_id",
        "endpoint",
        "ip_address",
        "gpu_type",
        "gpu_count",
        "vcpu",
        "ram_mb",
        "price_per_hour",
    ):
        new = getattr(node, key)
        fields[key] = new if _real(new) else getattr(known, key)
    resources = dict(known.resources or {})
    resources.update({k: v for k, v in node.resources.items() if _real(v)})
    fields["resources"] = resources
    return fields


class ProviderReconcile:
    def __init__(self, manager: PoolManager) -> None:
        self.m = manager

    async def run(self, boot: bool = False) -> Report:
        m = self.m
        report = empty_report()
        try:
            found = await m.adapter.list_nodes(m.pool.id)
        except ProviderError as exc:
            log.warning("pool %s: list_nodes failed: %s", m.pool.id, exc)
            return report
        listed = {n.node_id: n for n in found}
        await self.lost_writes(listed, report)
        for node_id, actor in list(m.nodes.items()):
            pn = listed.pop(node_id, None)
            if pn is not None:
                await self.adopt(actor, pn, boot, report)
            else:
                await self.vanished(actor, boot, report)
        await self.dead_directories(report)
        await self.orphans(listed, report)
        if any(report.values()):
            log.info("pool %s provider reconcile: %s", m.pool.id, {k: v for k, v in report.items() if v})
        return report

    async def lost_writes(self, listed: dict[str, ProvisionedNode], report: Report) -> None:
        """Alive in the database but tracked by no node actor: the inventory acknowledged a node's end, then
        died before flushing it. Gone at the provider: record it terminated again."""
        m = self.m
        async with m._lock:
            untracked = [r for r in await m.store.list_nodes(m.pool.id, NODE_ALIVE) if r.id not in m.nodes]
        for rec in untracked:
            if rec.id not in listed:
                await m.inventory.register(m._info(rec))
                if await m.inventory.transition(rec.id, NodeState.TERMINATED, "vanished at the provider"):
                    report["vanished"].append(rec.id)

    async def adopt(self, actor: NodeActor, pn: ProvisionedNode, boot: bool, report: Report) -> None:
        """A known node the provider runs: finish an end that did not finish, else take its (merged) facts."""
        m = self.m
        if actor.end_wanted:
            if not actor.terminating:  # the last drain/terminate failed: send it again (never sticks)
                actor.send(Cmd.TERMINATE, actor.end_reason or actor.record.state_reason)
                report["retried"].append(actor.id)
            return
        if not actor.idle:
            return  # a provision in flight records the node itself when it returns
        if boot or _differs(actor, pn):
            await m._record_provisioned(actor, pn)
            report["adopted"].append(actor.id)

    async def vanished(self, actor: NodeActor, boot: bool, report: Report) -> None:
        """A known node the provider does not list: terminated only when the provider confirms it is gone."""
        m = self.m
        if not actor.idle:
            return  # a provision or deprovision is in flight: the provider may not list it yet
        if actor.record.state == NodeState.PROVISIONING and not boot and actor.record.endpoint is None:
            return
        if actor.record.state == NodeState.FAILED and actor.record.deployment_id and not actor.end_wanted:
            return  # its deployment counts the failure, then removes it (actors/deployment_core.py)
        status = await self._status(actor)
        if status not in (ProviderNodeStatus.TERMINATED, ProviderNodeStatus.FAILED):
            return
        # confirmed gone: clean what is left of it (files, an orphaned engine), then record it at once
        with contextlib.suppress(ProviderError):
            await m.adapter.deprovision_node(NodeRef(actor.id, m.pool.id, actor.record.provider_instance_id))
        await m._set_state(actor, NodeState.TERMINATED, "vanished at the provider")
        actor.record.state = NodeState.TERMINATED
        await actor.stop()
        m._forget(actor.id)
        report["vanished"].append(actor.id)

    async def dead_directories(self, report: Report) -> None:
        """Leftovers of nodes that died and are no longer tracked (e.g. failed before a restart)."""
        m = self.m
        list_dead = getattr(m.adapter, "list_dead", None)
        if not callable(list_dead):
            return
        with contextlib.suppress(ProviderError):
            for node_id in await list_dead(m.pool.id):
                if node_id not in m.nodes:
                    await m.adapter.deprovision_node(NodeRef(node_id, m.pool.id))
                    report["vanished"].append(node_id)

    async def orphans(self, listed: dict[str, ProvisionedNode], report: Report) -> None:
        """What the provider runs for this pool that Postgres does not know."""
        m = self.m
        cleanup = bool(m.pool.provider_config.get("cleanup_orphans", True))
        for node_id, pn in listed.items():
            report["orphans"].append(node_id)
            await m.store.add_event("node.orphan", "node", node_id, {"pool_id": m.pool.id, "cleaned": cleanup})
            if cleanup:
                try:
                    await m.adapter.deprovision_node(NodeRef(node_id, m.pool.id, pn.provider_instance_id))
                except ProviderError as exc:
                    log.warning("orphan %s cleanup failed: %s", node_id, exc)

    async def _status(self, actor: NodeActor) -> ProviderNodeStatus:
        m = self.m
        try:
            st = await m.adapter.get_node_status(NodeRef(actor.id, m.pool.id, actor.record.provider_instance_id))
            return st.status
        except ProviderError:
            return ProviderNodeStatus.UNKNOWN


def _differs(actor: NodeActor, pn: ProvisionedNode) -> bool:
    """Whether the provider reports a real new fact (None/0/empty never counts as a change)."""
    fields = provider_fields(actor.record, pn)
    rec = actor.record
    return any(getattr(rec, k) != v for k, v in fields.items() if k != "resources") or any(
        (rec.resources or {}).get(k) != v for k, v in fields["resources"].items()
    )
