"""PATCH /v1/pools' pool side: a change is checked against the nodes the pool runs (under its lock) and
applied to the running PoolManager; the provider-call counters of the pool actors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from actors import pool_settings, provider_calls
from actors.inventory_core import InventoryCore
from actors.pool_core import PoolManager
from actors.records import PoolRecord
from adapters.base import ProvisionedNode, ProvisionRequest, TemporaryProviderError
from tests.unit.fakes import FakeAdapter, FakeClock, FakeInventory, FakeStore, wait_until


class PricedAdapter(FakeAdapter):
    """Fake instances with a GPU type and a price."""

    def make_instance(self, node_id: str, pool_id: str | None = None) -> ProvisionedNode:
        return replace(super().make_instance(node_id, pool_id), gpu_type="A100", price_per_hour=1.5)


async def _manager(max_nodes: int = 4, **pool: object) -> tuple[PoolManager, FakeAdapter, FakeStore]:
    rec = PoolRecord(id="pool-1", name="p", provider="fake", max_nodes=max_nodes, **pool)  # type: ignore[arg-type]
    adapter = PricedAdapter(rec.id)
    store = FakeStore()
    inv = FakeInventory(InventoryCore(15.0, clock=FakeClock(), wall=FakeClock(2e9)), store)
    m = PoolManager(
        rec,
        adapter,
        store,
        inv,
        token_key="ntk_k",
        heartbeat_url="http://127.0.0.1:8000/inventory/heartbeat",
        heartbeat_interval_s=5.0,
    )
    await m.start()
    return m, adapter, store


async def _provisioned(m: PoolManager, n: int) -> None:
    for i in range(n):
        await m.create_node(f"node-{i}")
    await wait_until(lambda: all(a.record.price_per_hour for a in m.nodes.values()), what="nodes provisioned")


async def test_max_nodes_below_the_alive_count_is_refused_and_nothing_changes() -> None:
    m, _, _ = await _manager(max_nodes=4)
    await _provisioned(m, 3)
    refused = await pool_settings.update_config(m, {"max_nodes": 2, "min_nodes": 1})
    assert refused is not None and refused[0] == "max_nodes" and "3 nodes" in refused[1]
    assert (m.pool.max_nodes, m.pool.min_nodes) == (4, 0)  # nothing half-applied
    assert await pool_settings.update_config(m, {"max_nodes": 3}) is None
    assert m.pool.max_nodes == 3
    await m.shutdown()


async def test_raising_max_nodes_lifts_the_quota_at_once() -> None:
    m, _, _ = await _manager(max_nodes=1)
    await _provisioned(m, 1)
    created, error = await m.create_nodes(["node-x"])
    assert error is not None and "max_nodes" in error
    assert await pool_settings.update_config(m, {"max_nodes": 2}) is None
    created, error = await m.create_nodes(["node-x"])
    assert error is None and [c["id"] for c in created] == ["node-x"]
    await m.shutdown()


async def test_cost_and_gpu_type_limits_are_checked_against_running_nodes() -> None:
    m, _, _ = await _manager()
    await _provisioned(m, 2)  # 2 x 1.5 per hour, A100
    refused = await pool_settings.update_config(m, {"max_cost_per_hour": 2.0})
    assert refused is not None and refused[0] == "max_cost_per_hour" and "3.0000" in refused[1]
    refused = await pool_settings.update_config(m, {"allowed_gpu_types": ["H100"]})
    assert refused == ("allowed_gpu_types", "allowed_gpu_types: the pool runs nodes with A100")
    ok = {"max_cost_per_hour": 3.0, "allowed_gpu_types": ["A100", "H100"]}
    assert await pool_settings.update_config(m, ok) is None
    assert m.pool.max_cost_per_hour == 3.0 and m.pool.allowed_gpu_types == ["A100", "H100"]
    assert await pool_settings.update_config(m, ok) is None  # idempotent
    await m.shutdown()


async def test_raised_min_nodes_provisions_idle_nodes_and_config_reaches_the_adapter() -> None:
    m, adapter, _ = await _manager()
    assert await pool_settings.update_config(m, {"min_nodes": 2, "provider_config": {"cleanup_orphans": False}}) is None
    assert len(m.nodes) == 2
    assert adapter.config == {"cleanup_orphans": False} and m.pool.provider_config == {"cleanup_orphans": False}
    await m.shutdown()


async def test_provider_calls_are_counted_per_provider_and_call() -> None:
    before = {(r["provider"], r["call"]): r for r in provider_calls.totals()}
    adapter = FakeAdapter("pool-c")
    assert provider_calls.count_calls(adapter, "counted-fake") is adapter
    provider_calls.count_calls(adapter, "counted-fake")  # wrapping twice counts once
    adapter.temporary_failures = 1
    req = ProvisionRequest(
        node_id="n1", pool_id="pool-c", heartbeat_url="http://x", node_token="t", heartbeat_interval_s=5
    )
    with pytest.raises(TemporaryProviderError):
        await adapter.provision_node(req)
    await adapter.provision_node(req)
    await adapter.list_nodes("pool-c")
    rows = {(r["provider"], r["call"]): r for r in provider_calls.totals()}
    assert ("counted-fake", "provision_node") not in before
    assert rows[("counted-fake", "provision_node")] == {
        "provider": "counted-fake",
        "call": "provision_node",
        "calls": 2,
        "errors": 1,
    }
    assert rows[("counted-fake", "list_nodes")]["calls"] == 1
    assert rows[("counted-fake", "list_nodes")]["errors"] == 0


def test_changeable_fields_are_pool_record_fields() -> None:
    assert set(pool_settings.CHANGEABLE) <= set(PoolRecord.__dataclass_fields__)
