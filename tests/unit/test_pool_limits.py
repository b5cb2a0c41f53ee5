"""A pool's cost ceiling and GPU-type list at node creation (issue 11: pools follow their deployments)."""

from __future__ import annotations

from dataclasses import replace

from actors.inventory_core import InventoryCore
from actors.pool_core import PoolManager
from actors.pool_limits import COST_CEILING, GPU_TYPES, check_new_node, estimate_price
from actors.records import PoolRecord
from actors.retry import RetryPolicy
from adapters.base import ProvisionedNode, ProvisionRequest, ResourceOffer, WorkloadSpec
from tests.unit.fakes import FakeAdapter, FakeClock, FakeInventory, FakeStore, RecordingSleep, wait_until

A100 = ResourceOffer(provider="fake", region="r", gpu_type="A100", gpu_count=1, price_per_hour=1.5)
H100 = ResourceOffer(provider="fake", region="r", gpu_type="H100", gpu_count=1, price_per_hour=3.0)
CPU = ResourceOffer(provider="fake", region="r", price_per_hour=0.1)
GPU_WORK = WorkloadSpec(deployment_id="dep-1", model_name="m", engine="vllm", gpus=1)


def pool(**kw: object) -> PoolRecord:
    return replace(PoolRecord(id="p-1", name="gpu", provider="fake", max_nodes=10), **kw)  # type: ignore[arg-type]


def test_the_estimate_is_the_cheapest_fitting_offer() -> None:
    assert estimate_price(pool(), [H100, A100, CPU], gpus=1) == 1.5
    assert estimate_price(pool(allowed_gpu_types=["h100"]), [H100, A100], gpus=1) == 3.0
    assert estimate_price(pool(), [CPU], gpus=0) == 0.1
    assert estimate_price(pool(), [CPU], gpus=1) is None
    assert estimate_price(pool(), None, gpus=1) is None


def test_cost_ceiling_counts_what_runs_and_the_next_node() -> None:
    p = pool(max_cost_per_hour=4.0)
    assert check_new_node(p, 2.5, [A100], 1) == (None, 1.5)
    capped, _ = check_new_node(p, 3.0, [A100], 1)
    assert capped is not None and capped.what == COST_CEILING
    assert str(capped).startswith("capped by pool 'gpu': cost ceiling (")
    # unknown offers: only what is known counts, no refusal for the unknown
    assert check_new_node(p, 3.9, None, 1) == (None, 0.0)
    assert check_new_node(pool(), 1e9, [A100], 1)[0] is None  # no ceiling


def test_gpu_types_refuse_only_when_the_provider_offers_none_allowed() -> None:
    p = pool(allowed_gpu_types=["B200"])
    capped, _ = check_new_node(p, 0.0, [A100, H100], 1)
    assert capped is not None and capped.what == GPU_TYPES and "B200" in str(capped)
    assert check_new_node(p, 0.0, [A100], 0)[0] is None  # a CPU workload is not about GPU types
    assert check_new_node(p, 0.0, None, 1)[0] is None  # offers unknown: not a refusal


class PricedAdapter(FakeAdapter):
    offers = [A100, H100]
    discover_calls = 0

    async def discover_resources(self) -> list[ResourceOffer]:
        self.discover_calls += 1
        return list(self.offers)

    async def provision_node(self, req: ProvisionRequest) -> ProvisionedNode:
        node = await super().provision_node(req)
        node = replace(node, gpu_type="A100", gpu_count=1, price_per_hour=1.5)
        self.instances[req.node_id] = node
        return node


def manager(p: PoolRecord, adapter: FakeAdapter, store: FakeStore, clock: FakeClock) -> PoolManager:
    inv = FakeInventory(InventoryCore(15.0, clock=clock, wall=FakeClock(1e9)), store)
    return PoolManager(
        p,
        adapter,
        store,
        inv,
        token_key="k",
        heartbeat_url="http://127.0.0.1:1/inventory/heartbeat",
        heartbeat_interval_s=5.0,
        retry=RetryPolicy(attempts=2, base_s=0.1, cap_s=0.1, jitter=0.0),
        clock=clock,
        sleep=RecordingSleep(clock),
    )


async def test_a_pool_stops_at_its_cost_ceiling_with_a_reason_and_one_event() -> None:
    clock, store = FakeClock(), FakeStore()
    adapter = PricedAdapter("p-1")
    m = manager(pool(max_cost_per_hour=4.0), adapter, store, clock)
    try:
        created, error = await m.create_nodes(["n1", "n2", "n3"], GPU_WORK)
        assert [n["id"] for n in created] == ["n1", "n2"]  # 2 x 1.5 fits under 4.0, a third does not
        assert error is not None and error.startswith("capped by pool 'gpu': cost ceiling")
        await wait_until(lambda: all(store.nodes[i].price_per_hour == 1.5 for i in ("n1", "n2")))
        _, again = await m.create_nodes(["n3"], GPU_WORK)
        assert again is not None and "3.0000/h running" in again  # now counted at their real price
        assert store.event_kinds("p-1").count("pool.capped") == 1  # one event while the reason holds
        assert adapter.discover_calls == 1  # offers cached
        m.pool.max_cost_per_hour = 10.0  # PATCH raised it
        created, error = await m.create_nodes(["n3"], GPU_WORK)
        assert error is None and [n["id"] for n in created] == ["n3"]
    finally:
        await m.shutdown()


async def test_a_pool_without_an_allowed_gpu_type_on_offer_refuses_gpu_nodes() -> None:
    clock, store = FakeClock(), FakeStore()
    m = manager(pool(allowed_gpu_types=["B200"]), PricedAdapter("p-1"), store, clock)
    try:
        created, error = await m.create_nodes(["n1"], GPU_WORK)
        assert created == [] and error is not None and "allowed GPU types" in error
        assert "n1" not in store.nodes  # nothing half-written
    finally:
        await m.shutdown()
