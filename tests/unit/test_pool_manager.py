"""PoolManager with a fake adapter, store and inventory: provisioning, retries, quota, termination,
provider reconciliation (adoption, vanished nodes, orphans) and idle scaling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from actors.inventory_core import Heartbeat, HeartbeatStatus, InventoryCore
from actors.node_actor import EndedSet
from actors.pool_core import DRAIN_MIN_S, PoolManager, PoolNotActive, QuotaExceeded, node_token
from actors.records import PoolRecord, secret_matches
from actors.retry import RetryPolicy
from actors.states import NodeState, PoolState
from adapters.base import (
    NodeRef,
    ProviderNodeStatus,
    ProvisionRequest,
    TemporaryProviderError,
    WorkloadSpec,
)
from tests.unit.fakes import (
    FakeAdapter,
    FakeClock,
    FakeInventory,
    FakeStore,
    RecordingSleep,
    settle,
    wait_until,
)

N = NodeState
POOL = "pool-1"
KEY = "ntk_test-key"
RETRY = RetryPolicy(attempts=4, base_s=0.5, cap_s=4.0, jitter=0.0)
WORKLOAD = WorkloadSpec(deployment_id="dep-1", model_name="llama", engine="llamacpp", source="x.gguf")


@dataclass
class Env:
    pool: PoolRecord
    adapter: FakeAdapter
    store: FakeStore
    inventory: FakeInventory
    clock: FakeClock
    sleep: RecordingSleep
    manager: PoolManager
    managers: list[PoolManager]

    def restart(self) -> Env:
        """A new PoolManager (and inventory) on the same store and provider: a control-plane restart."""
        pool = PoolRecord(**self.pool.to_dict())
        core = InventoryCore(15.0, clock=self.clock, wall=FakeClock(2e9))
        inventory = FakeInventory(core, self.store)
        sleep = RecordingSleep(self.clock)
        manager = _manager(pool, self.adapter, self.store, inventory, self.clock, sleep)
        self.managers.append(manager)
        return Env(pool, self.adapter, self.store, inventory, self.clock, sleep, manager, self.managers)


def _manager(
    pool: PoolRecord,
    adapter: FakeAdapter,
    store: FakeStore,
    inventory: FakeInventory,
    clock: FakeClock,
    sleep: RecordingSleep,
) -> PoolManager:
    return PoolManager(
        pool,
        adapter,
        store,
        inventory,
        token_key=KEY,
        heartbeat_url="http://127.0.0.1:8000/inventory/heartbeat",
        heartbeat_interval_s=5.0,
        retry=RETRY,
        drain_timeout_s=7.0,
        call_timeout_s=30.0,
        workloads=workloads,
        clock=clock,
        sleep=sleep,
    )


async def workloads(deployment_id: str) -> WorkloadSpec | None:
    """The deployments "in Postgres": only dep-1 exists."""
    return WORKLOAD if deployment_id == WORKLOAD.deployment_id else None


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    pool = PoolRecord(id=POOL, name="p1", provider="fake", max_nodes=4)
    adapter = FakeAdapter(POOL)
    store = FakeStore()
    inventory = FakeInventory(InventoryCore(15.0, clock=clock, wall=FakeClock(1e9)), store)
    sleep = RecordingSleep(clock)
    manager = _manager(pool, adapter, store, inventory, clock, sleep)
    e = Env(pool, adapter, store, inventory, clock, sleep, manager, [manager])
    yield e
    for m in e.managers:
        await crash(m)
        await m.shutdown()


async def crash(m: PoolManager) -> None:
    """Stop every node actor the way a dying process would: cancel until the tasks are done."""
    for actor in list(m.nodes.values()):
        task = actor._task
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)


async def provisioned(env: Env, node_id: str, workload: WorkloadSpec | None = WORKLOAD) -> None:
    await env.manager.create_node(node_id, workload)
    await wait_until(lambda: env.store.nodes[node_id].endpoint is not None, what=f"{node_id} provisioned")
    await wait_until(lambda: not env.manager.nodes[node_id].busy, what=f"{node_id} idle")


def ready_beat(env: Env, node_id: str) -> None:
    res = env.inventory.heartbeat(Heartbeat(token=node_token(KEY, node_id), node_id=node_id))
    assert res.status == HeartbeatStatus.OK


async def gone(env: Env, node_id: str) -> None:
    await wait_until(lambda: node_id not in env.manager.nodes, what=f"{node_id} forgotten")


# ------------------------------------------------------------------------------------------- create
async def test_node_token_is_derived_per_node() -> None:
    assert node_token(KEY, "a") == node_token(KEY, "a")
    assert node_token(KEY, "a") != node_token(KEY, "b")
    assert node_token(KEY, "a") != node_token("other", "a")
    assert node_token(KEY, "a").startswith("nt_")


async def test_create_node_is_idempotent_by_node_id(env: Env) -> None:
    first = await env.manager.create_node("n1", WORKLOAD)
    second = await env.manager.create_node("n1", WORKLOAD)
    assert first["id"] == second["id"] == "n1"
    await wait_until(lambda: env.store.nodes["n1"].endpoint is not None)
    third = await env.manager.create_node("n1", WORKLOAD)
    await settle()
    assert third["id"] == "n1"
    assert env.adapter.created == 1
    assert env.adapter.provision_calls == ["n1"]
    assert list(env.store.nodes) == ["n1"]
    assert env.store.event_kinds("n1").count("node.created") == 1
    assert "token_hash" not in first


async def test_concurrent_creates_of_one_node_make_one_instance(env: Env) -> None:
    results = await asyncio.gather(*(env.manager.create_node("n1", WORKLOAD) for _ in range(5)))
    assert {r["id"] for r in results} == {"n1"}
    await wait_until(lambda: env.store.nodes["n1"].endpoint is not None)
    await settle()
    assert env.adapter.created == 1
    assert len(env.adapter.provision_calls) == 1


async def test_create_nodes_registers_a_batch_at_once_and_stops_at_the_quota(env: Env) -> None:
    env.manager.pool.max_nodes = 3
    await env.manager.create_node("n0", WORKLOAD)
    created, error = await env.manager.create_nodes(["n0", "n1", "n2", "n3", "n4"], WORKLOAD)
    assert [n["id"] for n in created] == ["n0", "n1", "n2"]  # n0 found, n1 and n2 new, then the quota
    assert error is not None and "max_nodes" in error
    assert env.inventory.register_batches == 2  # one for n0's own call, one for the batch
    assert [i["id"] for i in env.inventory.registered] == ["n0", "n1", "n2"]
    await wait_until(lambda: len(env.adapter.instances) == 3)


async def test_create_node_without_id_makes_a_new_id(env: Env) -> None:
    a = await env.manager.create_node()
    b = await env.manager.create_node()
    assert a["id"] != b["id"]
    assert a["id"].startswith("node-")
    assert a["deployment_id"] is None


async def test_provisioning_records_endpoint_and_registers(env: Env) -> None:
    rec = await env.manager.create_node("n1", WORKLOAD)
    assert rec["state"] == N.PROVISIONING
    assert rec["deployment_id"] == "dep-1"
    await wait_until(lambda: env.store.nodes["n1"].endpoint is not None)
    inst = env.adapter.instances["n1"]
    stored = env.store.nodes["n1"]
    assert stored.endpoint == inst.endpoint
    assert stored.provider_instance_id == inst.provider_instance_id
    assert stored.ip_address == inst.ip_address
    assert stored.resources["model_name"] == "llama"
    assert stored.resources["served_model"] == "served-n1"
    assert secret_matches(node_token(KEY, "n1"), stored.token_hash)

    entry = env.inventory.core.nodes["n1"]
    assert entry.state == N.PROVISIONING
    assert entry.endpoint == inst.endpoint
    assert entry.provider_instance_id == inst.provider_instance_id
    assert entry.model_name == "llama"
    assert entry.served_model == "served-n1"
    assert entry.deployment_id == "dep-1"

    # the node's own token (the one handed to the provider) is accepted by the inventory
    ready_beat(env, "n1")
    table = env.inventory.core.routing_table()
    assert table["models"]["llama"][0]["endpoint"] == inst.endpoint
    assert table["models"]["llama"][0]["served_model"] == "served-n1"


async def test_provision_request_carries_the_node_token(env: Env) -> None:
    seen: list[ProvisionRequest] = []
    original = env.adapter.provision_node

    async def spy(req: ProvisionRequest) -> object:
        seen.append(req)
        return await original(req)

    env.adapter.provision_node = spy  # type: ignore[method-assign,assignment]
    await provisioned(env, "n1")
    assert len(seen) == 1
    req = seen[0]
    assert req.node_token == node_token(KEY, "n1")
    assert req.heartbeat_url.endswith("/inventory/heartbeat")
    assert req.heartbeat_interval_s == 5.0
    assert req.workload == WORKLOAD
    assert KEY not in repr(req) and req.node_token not in repr(req)


async def test_temporary_errors_are_retried_with_growing_delays(env: Env) -> None:
    env.adapter.temporary_failures = 2
    await provisioned(env, "n1")
    assert env.sleep.delays == [0.5, 1.0]
    assert env.adapter.provision_calls == ["n1"] * 3
    assert env.adapter.created == 1
    assert env.inventory.state("n1") == N.PROVISIONING


async def test_temporary_errors_exhausted_fail_the_node(env: Env) -> None:
    env.adapter.temporary_failures = 100
    await env.manager.create_node("n1", WORKLOAD)
    await wait_until(lambda: env.inventory.state("n1") == N.FAILED)
    assert env.sleep.delays == [0.5, 1.0, 2.0]
    assert len(env.adapter.provision_calls) == RETRY.attempts
    entry = env.inventory.core.nodes["n1"]
    assert entry.reason is not None and entry.reason.startswith("provider unavailable")
    assert env.store.nodes["n1"].state == N.FAILED


async def test_lost_reply_does_not_create_a_second_instance(env: Env) -> None:
    env.adapter.lose_replies = 1
    await provisioned(env, "n1")
    assert env.adapter.provision_calls == ["n1", "n1"]
    assert env.adapter.created == 1
    assert list(env.adapter.instances) == ["n1"]
    assert env.store.nodes["n1"].endpoint == env.adapter.instances["n1"].endpoint


async def test_permanent_error_fails_the_node_with_the_reason(env: Env) -> None:
    env.adapter.permanent_error = "engine vllm is not available on this provider"
    await env.manager.create_node("n1", WORKLOAD)
    await wait_until(lambda: env.inventory.state("n1") == N.FAILED)
    await settle()
    assert env.adapter.provision_calls == ["n1"]  # not retried
    assert env.sleep.delays == []
    entry = env.inventory.core.nodes["n1"]
    assert entry.reason == "engine vllm is not available on this provider"
    assert env.store.nodes["n1"].state == N.FAILED
    assert env.store.nodes["n1"].state_reason == "engine vllm is not available on this provider"
    assert "node.provision_failed" in env.store.event_kinds("n1")
    assert env.manager.nodes["n1"].record.state == N.FAILED


async def test_quota(env: Env) -> None:
    env.pool.max_nodes = 2
    await env.manager.create_node("a")
    await env.manager.create_node("b")
    with pytest.raises(QuotaExceeded, match=r"max_nodes quota \(2\)"):
        await env.manager.create_node("c")
    assert "c" not in env.store.nodes
    # asking again for a node that exists is not a new node
    assert (await env.manager.create_node("a"))["id"] == "a"
    await wait_until(lambda: env.adapter.created == 2)
    # a node on its way out frees its slot
    assert await env.manager.terminate_node("a")
    assert (await env.manager.create_node("c"))["id"] == "c"
    await wait_until(lambda: "c" in env.adapter.instances and "a" not in env.adapter.instances)


async def test_shutdown_while_a_provision_call_returns(env: Env) -> None:
    """shutdown() must not hang when it cancels a node actor whose provider call just completed."""
    await env.manager.create_node("n1", WORKLOAD)
    await env.manager.create_node("n2", WORKLOAD)
    task = asyncio.ensure_future(env.manager.shutdown())
    done, _ = await asyncio.wait({task}, timeout=0.5)
    stuck = [a.id for a in env.manager.nodes.values() if a._task is not None and not a._task.done()]
    assert task in done, f"shutdown() hangs: the cancellation of node actors {stuck} was swallowed"
    assert env.adapter.closed


async def test_shutdown_stops_idle_node_actors(env: Env) -> None:
    await provisioned(env, "n1")
    actor = env.manager.nodes["n1"]
    task = asyncio.ensure_future(env.manager.shutdown())
    done, _ = await asyncio.wait({task}, timeout=0.5)
    assert task in done
    assert actor._task is not None and actor._task.done()


# ------------------------------------------------------------------------------------------- terminate
async def test_terminate_drains_then_terminates_and_removes_the_instance(env: Env) -> None:
    await provisioned(env, "n1")
    ready_beat(env, "n1")
    assert await env.manager.terminate_node("n1", "scaled down")
    await gone(env, "n1")
    moves = [(state, ok) for nid, state, _, ok in env.inventory.transitions if nid == "n1"]
    assert moves == [(N.DRAINING, True), (N.TERMINATED, True)]
    assert env.inventory.state("n1") == N.TERMINATED
    assert env.inventory.core.nodes["n1"].reason == "scaled down"
    assert env.store.nodes["n1"].state == N.TERMINATED
    assert "n1" not in env.adapter.instances
    assert env.adapter.deprovision_calls == ["n1"]
    assert env.inventory.core.routing_table()["models"] == {}
    # a second terminate is harmless
    assert await env.manager.terminate_node("n1") is False
    await settle()
    assert env.adapter.deprovision_calls == ["n1"]
    # and the node id cannot be brought back
    rec = await env.manager.create_node("n1", WORKLOAD)
    assert rec["state"] == N.TERMINATED
    assert "n1" not in env.manager.nodes
    assert env.adapter.created == 1


async def test_double_terminate_deprovisions_once(env: Env) -> None:
    await provisioned(env, "n1")
    assert await env.manager.terminate_node("n1")
    assert await env.manager.terminate_node("n1")
    assert await env.manager.drain_node("n1")
    await gone(env, "n1")
    await settle()
    assert env.adapter.deprovision_calls == ["n1"]


async def test_terminate_while_provisioning_does_not_leak(env: Env) -> None:
    env.adapter.gate = asyncio.Event()
    await env.manager.create_node("n1", WORKLOAD)
    await wait_until(lambda: env.manager.nodes["n1"].busy)
    assert await env.manager.terminate_node("n1")
    env.adapter.gate.set()
    await gone(env, "n1")
    assert env.adapter.instances == {}
    assert env.inventory.state("n1") == N.TERMINATED


async def test_terminate_before_provisioning_starts_skips_it(env: Env) -> None:
    await env.manager.create_node("n1", WORKLOAD)
    assert await env.manager.terminate_node("n1")  # queued behind PROVISION, before it ran
    await gone(env, "n1")
    assert env.adapter.provision_calls == []
    assert env.adapter.created == 0
    assert env.inventory.state("n1") == N.TERMINATED


async def test_terminate_a_failed_node(env: Env) -> None:
    env.adapter.permanent_error = "bad config"
    await env.manager.create_node("n1", WORKLOAD)
    await wait_until(lambda: env.inventory.state("n1") == N.FAILED)
    await wait_until(lambda: not env.manager.nodes["n1"].busy)
    assert await env.manager.terminate_node("n1")
    await gone(env, "n1")
    assert env.inventory.state("n1") == N.TERMINATED
    assert env.store.nodes["n1"].state == N.TERMINATED


async def test_drain_of_an_idle_node_terminates_it_soon(env: Env) -> None:
    await provisioned(env, "n1")
    ready_beat(env, "n1")
    assert await env.manager.drain_node("n1")
    await gone(env, "n1")
    assert sum(env.sleep.delays) == pytest.approx(DRAIN_MIN_S)  # no request in flight: no drain timeout
    reasons = [(state, reason) for nid, state, reason, _ in env.inventory.transitions if nid == "n1"]
    assert reasons == [(N.DRAINING, "drained by request"), (N.TERMINATED, "drained by request")]
    assert env.adapter.instances == {}


async def test_unknown_node_commands(env: Env) -> None:
    assert await env.manager.terminate_node("ghost") is False
    assert await env.manager.drain_node("ghost") is False
    assert await env.manager.node_status("ghost") is None


async def test_failed_deprovision_keeps_the_node_and_reconcile_retries(env: Env) -> None:
    await provisioned(env, "n1")
    env.adapter.deprovision_failures = 100
    assert await env.manager.terminate_node("n1")
    await wait_until(lambda: len(env.adapter.deprovision_calls) == RETRY.attempts)
    await wait_until(lambda: not env.manager.nodes["n1"].busy)
    actor = env.manager.nodes["n1"]  # never forget a paid instance
    assert actor.record.state == N.DRAINING
    assert not actor.terminating
    assert "n1" in env.adapter.instances
    assert env.inventory.state("n1") == N.DRAINING

    env.adapter.deprovision_failures = 0
    report = await env.manager.reconcile_provider()
    assert report["retried"] == ["n1"]
    await gone(env, "n1")
    assert env.adapter.instances == {}
    assert env.inventory.state("n1") == N.TERMINATED


async def test_status_logs_and_summary(env: Env) -> None:
    await provisioned(env, "n1")
    st = await env.manager.node_status("n1")
    assert st is not None and st["id"] == "n1" and st["busy"] is False
    assert await env.manager.get_logs("n1", 10) == ["log line of n1"]
    assert env.manager.summary()["nodes"] == {"n1": "provisioning"}


# ------------------------------------------------------------------------------------------- provider truth
async def test_reconcile_steady_state_does_nothing(env: Env) -> None:
    await provisioned(env, "n1")
    report = await env.manager.reconcile_provider()
    assert report == {"adopted": [], "vanished": [], "orphans": [], "retried": []}
    assert env.adapter.status_calls == []


async def test_reconcile_picks_up_a_new_endpoint(env: Env) -> None:
    await provisioned(env, "n1")
    env.adapter.instances["n1"] = replace(env.adapter.instances["n1"], endpoint="http://10.9.9.9:8000")
    report = await env.manager.reconcile_provider()
    assert report["adopted"] == ["n1"]
    assert env.store.nodes["n1"].endpoint == "http://10.9.9.9:8000"
    assert env.inventory.core.nodes["n1"].endpoint == "http://10.9.9.9:8000"


async def test_restart_adopts_what_the_provider_runs(env: Env) -> None:
    await provisioned(env, "n1")
    await provisioned(env, "n2", None)
    ready_beat(env, "n1")
    assert env.store.nodes["n1"].state == N.READY
    await crash(env.manager)

    new = env.restart()
    await new.manager.start()
    assert set(new.manager.nodes) == {"n1", "n2"}
    assert env.adapter.created == 2
    assert env.adapter.provision_calls == ["n1", "n2"]  # nothing provisioned again
    core = new.inventory.core
    assert core.nodes["n1"].state == N.READY
    assert core.nodes["n2"].state == N.PROVISIONING
    assert core.nodes["n1"].endpoint == env.adapter.instances["n1"].endpoint
    assert core.nodes["n1"].model_name == "llama"
    assert core.nodes["n1"].deployment_id == "dep-1"
    assert core.nodes["n2"].deployment_id is None
    # the nodes' heartbeats (by provider identity) are accepted by the new inventory
    hb = Heartbeat(
        token=node_token(KEY, "n1"),
        provider="fake",
        provider_instance_id=env.adapter.instances["n1"].provider_instance_id,
    )
    assert new.inventory.heartbeat(hb).status == HeartbeatStatus.OK
    assert core.routing_table()["models"]["llama"][0]["node_id"] == "n1"


async def test_restart_reports_adoption(env: Env) -> None:
    await provisioned(env, "n1")
    await crash(env.manager)
    new = env.restart()
    await new.manager.start()
    report = await new.manager.reconcile_provider(boot=True)
    assert report["adopted"] == ["n1"]
    assert report["orphans"] == [] and report["vanished"] == []


async def test_restart_adopts_a_node_created_before_the_crash(env: Env) -> None:
    """Provisioned at the provider, but the control plane died before recording the endpoint: provisioned
    again (idempotent by node id), which completes the same instance with the deployment's workload."""
    env.adapter.gate = asyncio.Event()
    await env.manager.create_node("n1", WORKLOAD)
    await wait_until(lambda: env.manager.nodes["n1"].busy)
    env.adapter.make_instance("n1")
    await crash(env.manager)  # the provision call never returns
    env.adapter.gate = None
    assert env.store.nodes["n1"].endpoint is None

    new = env.restart()
    await new.manager.start()
    assert "n1" in new.manager.nodes
    await wait_until(lambda: new.manager.nodes["n1"].idle, what="n1 provisioned again")
    assert env.adapter.provision_calls == ["n1", "n1"]
    assert new.manager.nodes["n1"].workload == WORKLOAD
    assert env.store.nodes["n1"].endpoint == env.adapter.instances["n1"].endpoint
    assert new.inventory.core.nodes["n1"].endpoint == env.adapter.instances["n1"].endpoint
    assert env.adapter.created == 1


async def test_restart_provisions_a_node_the_provider_never_created(env: Env) -> None:
    """A crash before the provider created anything: the create is done again, not forgotten (issue 10 #3)."""
    env.adapter.gate = asyncio.Event()
    await env.manager.create_node("n1", WORKLOAD)
    await wait_until(lambda: env.manager.nodes["n1"].busy)
    await crash(env.manager)  # before the provider created anything
    env.adapter.gate = None

    new = env.restart()
    await new.manager.start()
    await wait_until(lambda: env.store.nodes["n1"].endpoint is not None, what="n1 provisioned")
    assert "n1" in new.manager.nodes
    assert new.inventory.state("n1") == N.PROVISIONING
    assert env.adapter.created == 1
    assert env.adapter.status_calls == []  # not taken for vanished while its provision runs again


async def test_restart_provisions_an_idle_node_again(env: Env) -> None:
    env.adapter.gate = asyncio.Event()
    await env.manager.create_node("idle", None)
    await wait_until(lambda: env.manager.nodes["idle"].busy)
    await crash(env.manager)
    env.adapter.gate = None
    new = env.restart()
    await new.manager.start()
    await wait_until(lambda: env.store.nodes["idle"].endpoint is not None, what="idle provisioned")
    assert new.manager.nodes["idle"].workload is None
    assert env.adapter.provision_calls == ["idle", "idle"]


async def test_restart_ends_a_half_created_node_whose_deployment_is_gone(env: Env) -> None:
    env.adapter.gate = asyncio.Event()
    await env.manager.create_node("n1", replace(WORKLOAD, deployment_id="dep-deleted"))
    await wait_until(lambda: env.manager.nodes["n1"].busy)
    env.adapter.make_instance("n1")
    await crash(env.manager)
    env.adapter.gate = None
    new = env.restart()
    await new.manager.start()
    await wait_until(lambda: "n1" not in new.manager.nodes, what="n1 ended")
    assert env.adapter.instances == {}
    assert env.adapter.provision_calls == ["n1"]
    assert env.store.nodes["n1"].state == N.TERMINATED


async def test_a_retried_create_never_revives_a_node_that_ended(env: Env) -> None:
    """Ray resubmits a create_node that was in flight when the pool actor died; the restarted actor has
    just marked that node vanished, but the batched write of `terminated` may not have reached the row."""
    env.adapter.gate = asyncio.Event()
    await env.manager.create_node("n1", WORKLOAD)
    await wait_until(lambda: env.manager.nodes["n1"].busy)
    await crash(env.manager)
    env.adapter.gate = None
    new = env.restart()
    await new.manager.start()
    await wait_until(lambda: env.store.nodes["n1"].endpoint is not None)
    assert await new.manager.terminate_node("n1", "scaled down")
    await wait_until(lambda: "n1" not in new.manager.nodes)
    env.store.nodes["n1"].state = N.PROVISIONING  # the terminated state is still in the inventory's buffer
    out = await new.manager.create_node("n1", WORKLOAD)  # the resubmitted call
    assert out["state"] == N.TERMINATED
    assert "n1" not in new.manager.nodes
    await settle()
    assert env.adapter.instances == {}


async def test_reconcile_ends_an_alive_row_no_actor_tracks_and_the_provider_lacks(env: Env) -> None:
    """A lost write: the row says alive, no node actor knows the node, the provider does not list it."""
    await provisioned(env, "n1")
    ready_beat(env, "n1")
    await env.manager.terminate_node("n1")
    await wait_until(lambda: "n1" not in env.manager.nodes or env.manager.nodes["n1"].record.state == N.TERMINATED)
    env.manager.nodes.pop("n1", None)
    env.store.nodes["n1"].state = N.READY  # the inventory died before flushing `terminated`...
    env.inventory.core.forget("n1")  # ...and its successor rebuilt from that row
    report = await env.manager.reconcile_provider()
    assert report["vanished"] == ["n1"]
    assert env.store.nodes["n1"].state == N.TERMINATED


async def test_restart_finishes_a_drain(env: Env) -> None:
    await provisioned(env, "n1")
    env.adapter.deprovision_failures = 100
    await env.manager.terminate_node("n1")
    await wait_until(lambda: len(env.adapter.deprovision_calls) == RETRY.attempts)
    await wait_until(lambda: not env.manager.nodes["n1"].busy)
    await crash(env.manager)
    assert env.store.nodes["n1"].state == N.DRAINING
    env.adapter.deprovision_failures = 0

    new = env.restart()
    await new.manager.start()
    await wait_until(lambda: "n1" not in new.manager.nodes)
    assert env.adapter.instances == {}
    assert new.inventory.state("n1") == N.TERMINATED


@pytest.mark.parametrize("status", [ProviderNodeStatus.UNKNOWN, ProviderNodeStatus.PENDING])
async def test_unconfirmed_disappearance_leaves_the_node_alone(env: Env, status: ProviderNodeStatus) -> None:
    await provisioned(env, "n1")
    ready_beat(env, "n1")
    del env.adapter.instances["n1"]  # not listed any more...
    env.adapter.status_override["n1"] = status  # ...but the provider cannot confirm it is gone
    report = await env.manager.reconcile_provider()
    assert report["vanished"] == []
    assert env.adapter.status_calls == ["n1"]
    assert "n1" in env.manager.nodes
    assert env.inventory.state("n1") == N.READY


async def test_status_error_counts_as_unknown(env: Env) -> None:
    await provisioned(env, "n1")
    del env.adapter.instances["n1"]

    async def broken(_: object) -> object:
        raise TemporaryProviderError("status API down")

    env.adapter.get_node_status = broken  # type: ignore[method-assign,assignment]
    report = await env.manager.reconcile_provider()
    assert report["vanished"] == []
    assert "n1" in env.manager.nodes


async def test_confirmed_terminated_node_is_marked_vanished(env: Env) -> None:
    await provisioned(env, "n1")
    ready_beat(env, "n1")
    del env.adapter.instances["n1"]  # gone at the provider; get_node_status says TERMINATED
    report = await env.manager.reconcile_provider()
    assert report["vanished"] == ["n1"]
    assert "n1" not in env.manager.nodes
    assert env.inventory.state("n1") == N.TERMINATED
    assert env.inventory.core.nodes["n1"].reason == "vanished at the provider"
    assert env.store.nodes["n1"].state == N.TERMINATED
    assert env.inventory.core.routing_table()["models"] == {}


async def test_in_flight_provision_is_not_checked(env: Env) -> None:
    env.adapter.gate = asyncio.Event()
    await env.manager.create_node("n1", WORKLOAD)
    await wait_until(lambda: env.manager.nodes["n1"].busy)
    report = await env.manager.reconcile_provider()
    assert report == {"adopted": [], "vanished": [], "orphans": [], "retried": []}
    assert env.adapter.status_calls == []
    env.adapter.gate.set()
    await wait_until(lambda: env.store.nodes["n1"].endpoint is not None)


async def test_orphans_are_deleted_and_reported(env: Env) -> None:
    await provisioned(env, "n1")
    env.adapter.make_instance("stray")
    env.adapter.make_instance("elsewhere", pool_id="pool-2")  # another pool's: not ours to touch
    report = await env.manager.reconcile_provider()
    assert report["orphans"] == ["stray"]
    assert set(env.adapter.instances) == {"n1", "elsewhere"}
    orphan_events = [e for e in env.store.events if e[0] == "node.orphan"]
    assert orphan_events == [("node.orphan", "node", "stray", {"pool_id": POOL, "cleaned": True})]
    assert "n1" in env.manager.nodes


async def test_orphans_are_kept_when_cleanup_is_off(env: Env) -> None:
    env.pool.provider_config = {"cleanup_orphans": False}
    env.adapter.make_instance("stray")
    report = await env.manager.reconcile_provider()
    assert report["orphans"] == ["stray"]
    assert "stray" in env.adapter.instances
    assert ("node.orphan", "node", "stray", {"pool_id": POOL, "cleaned": False}) in env.store.events


async def test_list_failure_changes_nothing(env: Env) -> None:
    await provisioned(env, "n1")
    env.adapter.make_instance("stray")
    env.adapter.list_error = True
    report = await env.manager.reconcile_provider()
    assert report == {"adopted": [], "vanished": [], "orphans": [], "retried": []}
    assert set(env.adapter.instances) == {"n1", "stray"}
    assert "n1" in env.manager.nodes


# ------------------------------------------------------------------------------------------- idle capacity
async def test_scale_idle_creates_up_to_target(env: Env) -> None:
    env.pool.target_nodes = 3
    created = await env.manager.scale_idle()
    assert len(created) == 3
    await wait_until(lambda: env.adapter.created == 3)
    assert all(env.store.nodes[n].deployment_id is None for n in created)
    assert await env.manager.scale_idle() == []  # idempotent
    await settle()
    assert env.adapter.created == 3


async def test_scale_idle_respects_min_nodes_and_quota(env: Env) -> None:
    env.pool.min_nodes = 2
    assert len(await env.manager.scale_idle()) == 2
    env.pool.max_nodes = 3
    env.pool.target_nodes = 10
    assert len(await env.manager.scale_idle()) == 1  # stops at the quota, no exception
    assert len(env.manager.nodes) == 3


async def test_scale_idle_terminates_surplus_idle_nodes_only(env: Env) -> None:
    await provisioned(env, "dep-node")
    await provisioned(env, "idle-a", None)
    await provisioned(env, "idle-b", None)
    await env.manager.set_target(0)
    await wait_until(lambda: set(env.manager.nodes) == {"dep-node"}, what="idle nodes terminated")
    assert set(env.adapter.instances) == {"dep-node"}
    assert env.inventory.state("idle-a") == N.TERMINATED


async def test_scale_idle_down_to_target(env: Env) -> None:
    await env.manager.set_target(3)
    await wait_until(lambda: env.adapter.created == 3)
    await env.manager.set_target(1)
    await wait_until(lambda: len(env.manager.nodes) == 1, what="surplus terminated")
    assert len(env.adapter.instances) == 1
    assert await env.manager.scale_idle() == []


# ------------------------------------------------------------------------------- provider-reported health
async def test_provider_reported_health_becomes_heartbeats(env: Env) -> None:
    """A reports_health adapter (e.g. pods' readiness) drives node health through the normal heartbeat path."""
    from adapters.base import NodeHealth

    await provisioned(env, "n1")
    await env.manager.report_health([NodeHealth("n1", "ready", endpoint="http://svc:8000")])
    assert env.inventory.state("n1") == NodeState.READY
    routes = env.inventory.core.routing_table()["models"]
    assert [r["endpoint"] for r in next(iter(routes.values()))] == ["http://svc:8000"]
    # a node the pool does not know is ignored, and never becomes known
    await env.manager.report_health([NodeHealth("stranger", "ready")])
    assert "stranger" not in env.inventory.core.nodes
    # the last known health is repeated (no change needed) and a failure makes the node unhealthy
    await env.manager._send_health(list(env.manager._health.values()))
    assert env.inventory.state("n1") == NodeState.READY
    await env.manager.report_health([NodeHealth("n1", "failed", reason="pod not ready: CrashLoopBackOff")])
    assert env.inventory.state("n1") == NodeState.UNHEALTHY
    assert env.inventory.core.nodes["n1"].reason == "pod not ready: CrashLoopBackOff"


# ------------------------------------------------------------------------------------------- issue 10
class FlakyInventory(FakeInventory):
    """Its transition call raises for the next `fail` calls (an inventory the pool cannot reach)."""

    def __init__(self, inner: FakeInventory) -> None:
        super().__init__(inner.core, inner.store)
        self.fail = 0

    async def transition(self, node_id: str, state: NodeState, reason: str | None) -> bool:
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("inventory unreachable")
        return await super().transition(node_id, state, reason)


async def test_a_terminate_never_sticks_when_the_inventory_call_fails(env: Env) -> None:
    """Issue 10 #2: any exception, not only ProviderError, resets the in-flight flag; a later TERMINATE is
    not dropped, and the reconcile sends one again."""
    await provisioned(env, "n1")
    flaky = FlakyInventory(env.inventory)
    env.manager.inventory = flaky
    flaky.fail = 1
    assert await env.manager.terminate_node("n1", "scaled down")
    await wait_until(lambda: env.manager.nodes["n1"].idle)
    actor = env.manager.nodes["n1"]
    assert not actor.terminating and actor.end_wanted
    assert "n1" in env.adapter.instances
    # a later command is not lost
    assert await env.manager.terminate_node("n1", "again")
    await gone(env, "n1")
    assert env.adapter.instances == {}
    assert env.store.nodes["n1"].state == N.TERMINATED


async def test_a_terminate_never_sticks_when_the_adapter_raises_something_else(env: Env) -> None:
    await provisioned(env, "n1")
    ready_beat(env, "n1")
    calls = 0
    real = env.adapter.deprovision_node

    async def translate_bug(ref: NodeRef) -> None:  # e.g. a ValueError passed through by a translate()
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad label value")
        await real(ref)

    env.adapter.deprovision_node = translate_bug  # type: ignore[method-assign,assignment]
    assert await env.manager.terminate_node("n1")
    await wait_until(lambda: env.manager.nodes["n1"].idle)
    assert not env.manager.nodes["n1"].terminating
    assert env.inventory.state("n1") == N.DRAINING  # out of the routing table, still known, still billed
    report = await env.manager.reconcile_provider()  # the provider reconcile retries it
    assert report["retried"] == ["n1"]
    await gone(env, "n1")
    assert env.adapter.instances == {}


async def test_a_drain_that_fails_before_draining_is_retried_by_the_reconcile(env: Env) -> None:
    await provisioned(env, "n1")
    flaky = FlakyInventory(env.inventory)
    env.manager.inventory = flaky
    flaky.fail = 1
    assert await env.manager.drain_node("n1", "scaled down")
    await wait_until(lambda: env.manager.nodes["n1"].idle)
    assert env.inventory.state("n1") == N.PROVISIONING  # the draining transition never happened
    report = await env.manager.reconcile_provider()
    assert report["retried"] == ["n1"]
    await gone(env, "n1")
    assert env.adapter.instances == {}
    assert env.manager.alive_count() == 0


async def test_a_deleting_pool_refuses_new_nodes(env: Env) -> None:
    """Issue 10 #5."""
    await provisioned(env, "n1")
    env.manager.pool.state = PoolState.DELETING
    created, error = await env.manager.create_nodes(["n1", "n2"], WORKLOAD)
    assert [n["id"] for n in created] == ["n1"]  # an existing node is still found (idempotent)
    assert error == "pool 'p1' is deleting: no new nodes"
    assert "n2" not in env.store.nodes
    with pytest.raises(PoolNotActive):
        await env.manager.create_node("n3")
    env.manager.pool.target_nodes = 3
    assert await env.manager.scale_idle() == []
    assert set(env.store.nodes) == {"n1"}


async def test_reconcile_never_erases_known_provider_facts(env: Env) -> None:
    """Issue 10 #6: SkyPilot's list after a restart gives None/0 for what provisioning recorded."""
    env.adapter.instances["n1"] = replace(
        env.adapter.make_instance("n1"), gpu_type="A100", gpu_count=2, price_per_hour=3.5
    )
    await provisioned(env, "n1")
    known = env.store.nodes["n1"]
    assert (known.gpu_type, known.gpu_count, known.price_per_hour) == ("A100", 2, 3.5)
    bare = replace(
        env.adapter.instances["n1"],
        endpoint=None,
        ip_address=None,
        gpu_type=None,
        gpu_count=0,
        price_per_hour=0.0,
        vcpu=0,
        ram_mb=0,
        resources={"served_model": None},
    )
    env.adapter.instances["n1"] = bare
    report = await env.manager.reconcile_provider()
    assert report["adopted"] == []  # nothing new: nothing written
    await crash(env.manager)
    new = env.restart()
    await new.manager.start()  # adoption at boot writes the merge
    rec = env.store.nodes["n1"]
    assert (rec.gpu_type, rec.gpu_count, rec.price_per_hour) == ("A100", 2, 3.5)
    assert rec.endpoint == known.endpoint and rec.ip_address == known.ip_address
    assert (rec.vcpu, rec.ram_mb) == (known.vcpu, known.ram_mb)
    assert rec.resources["served_model"] == "served-n1"
    assert new.inventory.core.nodes["n1"].endpoint == known.endpoint
    # a real new value is taken
    env.adapter.instances["n1"] = replace(bare, endpoint="http://10.7.7.7:8000", gpu_count=4)
    report = await new.manager.reconcile_provider()
    assert report["adopted"] == ["n1"]
    assert env.store.nodes["n1"].endpoint == "http://10.7.7.7:8000"
    assert env.store.nodes["n1"].gpu_count == 4
    assert env.store.nodes["n1"].gpu_type == "A100"


def report_load(env: Env, ongoing: dict[str, int]) -> None:
    env.inventory.core.report_load("replica-1", ongoing)


async def test_drain_waits_for_in_flight_requests_then_terminates(env: Env) -> None:
    """Issue 10 #9: out of the routing table at once; terminated once idle."""
    await provisioned(env, "n1")
    ready_beat(env, "n1")
    assert env.inventory.core.routing_table()["models"]["llama"][0]["node_id"] == "n1"
    report_load(env, {"n1": 2})
    env.sleep.clock = None  # time moves only when the test says so
    assert await env.manager.drain_node("n1", "scaled down")
    await wait_until(lambda: env.inventory.state("n1") == N.DRAINING)
    assert env.inventory.core.routing_table()["models"] == {}  # out of the table at once
    for _ in range(6):
        env.clock.advance(0.5)
        report_load(env, {"n1": 1})  # the replica keeps reporting a request in flight
        await settle()
    assert "n1" in env.adapter.instances  # still serving
    report_load(env, {})  # the request finished
    env.clock.advance(0.5)
    await gone(env, "n1")
    assert env.adapter.instances == {}
    assert env.store.nodes["n1"].state == N.TERMINATED
    assert env.inventory.load_calls <= 6  # one load query per poll, not per node and turn


async def test_drain_is_bounded_by_the_drain_timeout(env: Env) -> None:
    await provisioned(env, "n1")
    ready_beat(env, "n1")
    env.sleep.clock = None
    assert await env.manager.drain_node("n1")
    for _ in range(13):  # 7 s (the env's drain timeout) of a stuck request
        report_load(env, {"n1": 1})
        env.clock.advance(0.5)
        await settle()
        assert "n1" in env.adapter.instances
    for _ in range(3):
        report_load(env, {"n1": 1})
        env.clock.advance(0.5)
        await settle()
    await gone(env, "n1")
    assert env.adapter.instances == {}


async def test_a_terminate_hurries_a_drain(env: Env) -> None:
    """A draining node found dead (or deleted by request) is terminated at once."""
    await provisioned(env, "n1")
    ready_beat(env, "n1")
    report_load(env, {"n1": 5})
    env.sleep.clock = None
    assert await env.manager.drain_node("n1")
    await wait_until(lambda: env.inventory.state("n1") == N.DRAINING)
    assert await env.manager.terminate_node("n1", "engine exited")
    env.clock.advance(0.5)
    await gone(env, "n1")
    assert env.adapter.deprovision_calls == ["n1"]


async def test_a_node_that_never_served_is_not_drained(env: Env) -> None:
    env.adapter.permanent_error = "no capacity"
    await env.manager.create_node("n1", WORKLOAD)
    await wait_until(lambda: env.inventory.state("n1") == N.FAILED)
    env.sleep.delays.clear()
    assert await env.manager.drain_node("n1")
    await gone(env, "n1")
    assert env.sleep.delays == []


async def test_an_unknown_load_is_not_idle(env: Env) -> None:
    await provisioned(env, "n1")
    ready_beat(env, "n1")

    async def broken(ids: list[str]) -> dict[str, int]:
        raise ConnectionError("inventory unreachable")

    env.manager.inventory.node_load = broken  # type: ignore[method-assign,assignment]
    assert await env.manager.drain_node("n1")
    await gone(env, "n1")
    assert sum(env.sleep.delays) == pytest.approx(7.0)  # waited the whole drain timeout


async def test_scale_down_of_idle_nodes_drains(env: Env) -> None:
    env.pool.target_nodes = 2
    await env.manager.scale_idle()
    await wait_until(lambda: len(env.adapter.instances) == 2)
    await wait_until(lambda: all(a.idle for a in env.manager.nodes.values()))
    env.pool.target_nodes = 1
    await env.manager.scale_idle()
    await wait_until(lambda: len(env.manager.nodes) == 1)
    ended = [nid for nid, st, _, ok in env.inventory.transitions if st == N.DRAINING and ok]
    assert len(ended) == 1 and env.inventory.core.nodes[ended[0]].reason == "scaled down"


def test_the_ended_set_is_bounded_in_size_and_age() -> None:
    """Issue 10 #12: the pool's ended set does not grow forever."""
    clock = FakeClock()
    ended = EndedSet(max_size=3, max_age_s=60.0, clock=clock)
    for i in range(5):
        ended.add(f"n{i}")
    assert len(ended) == 3 and "n0" not in ended and "n4" in ended
    clock.advance(61.0)
    ended.add("late")
    assert "n4" not in ended and "late" in ended and len(ended) == 1
