"""The provider contract (adapters/base.py), run against every adapter through the same tests.

What each test proves holds for local processes, Kubernetes (a real kube-apiserver), SkyPilot (fixture
catalogs, fake only at the cloud boundary), Nosana (the real sidecar, simulated market) and the instant
test provider alike."""

from __future__ import annotations

import pytest

from adapters.base import NodeRef, ProviderError, ProviderNodeStatus
from tests.conformance import providers as pv

pytestmark = pytest.mark.integration


async def test_provision_twice_is_one_instance(provider: pv.Harness) -> None:
    pool, node_id = pv.new_pool_id(), pv.new_node_id()
    a = provider.adapter(pool)
    first = await a.provision_node(provider.request(pool, node_id))
    again = await a.provision_node(provider.request(pool, node_id))
    assert (first.node_id, first.pool_id) == (node_id, pool)
    assert again.provider_instance_id == first.provider_instance_id
    await provider.settle(pool, node_id)
    assert await provider.instances(pool) == {node_id}
    assert [n.node_id for n in await a.list_nodes(pool)] == [node_id]


async def test_provision_after_a_crash_halfway_completes_the_same_instance(provider: pv.Harness) -> None:
    pool, node_id = pv.new_pool_id(), pv.new_node_id()
    req = provider.request(pool, node_id)
    await provider.crash_halfway(provider.adapter(pool), req)
    restarted = provider.adapter(pool)  # a new adapter: the pool actor restarted, nothing in memory
    node = await restarted.provision_node(req)
    assert node.node_id == node_id
    await provider.settle(pool, node_id)
    assert await provider.instances(pool) == {node_id}
    if provider.runs_processes:
        assert len(pv._agents(node_id)) == 1, "exactly one agent for the node"
    listed = await restarted.list_nodes(pool)
    assert [n.node_id for n in listed] == [node_id]


async def test_deprovision_of_what_is_gone_succeeds(provider: pv.Harness) -> None:
    pool, node_id = pv.new_pool_id(), pv.new_node_id()
    a = provider.adapter(pool)
    await a.deprovision_node(NodeRef(pv.new_node_id(), pool))  # never existed
    node = await a.provision_node(provider.request(pool, node_id))
    ref = NodeRef(node_id, pool, node.provider_instance_id)
    await a.deprovision_node(ref)
    await a.deprovision_node(ref)  # twice
    assert await _eventually_empty(provider, pool)
    assert (await a.get_node_status(ref)).status == ProviderNodeStatus.TERMINATED


async def _eventually_empty(provider: pv.Harness, pool: str) -> bool:
    async def empty() -> bool:
        return not await provider.instances(pool)

    return bool(await pv.wait_until(empty, 30, "the node gone at the provider"))


async def test_two_pools_never_see_or_touch_each_others_nodes(provider: pv.Harness) -> None:
    pool_a, pool_b = pv.new_pool_id(), pv.new_pool_id()
    a, b = provider.adapter(pool_a), provider.adapter(pool_b)
    na, nb = pv.new_node_id(), pv.new_node_id()
    await a.provision_node(provider.request(pool_a, na))
    await b.provision_node(provider.request(pool_b, nb))
    assert [n.node_id for n in await a.list_nodes(pool_a)] == [na]
    assert [n.node_id for n in await b.list_nodes(pool_b)] == [nb]
    # pool A's reconcile with an empty database: everything A lists is an orphan and is cleaned
    for orphan in await a.list_nodes(pool_a):
        await a.deprovision_node(NodeRef(orphan.node_id, pool_a, orphan.provider_instance_id))
    assert await _eventually_empty(provider, pool_a)
    assert await provider.instances(pool_b) == {nb}, "pool B's node survives pool A's orphan cleanup"
    assert [n.node_id for n in await b.list_nodes(pool_b)] == [nb]


async def test_a_transient_error_is_unknown_and_nothing_is_lost(provider: pv.Harness) -> None:
    pool, node_id = pv.new_pool_id(), pv.new_node_id()
    a = provider.adapter(pool)
    node = await a.provision_node(provider.request(pool, node_id))
    ref = NodeRef(node_id, pool, node.provider_instance_id)
    async with provider.transient(a):
        status = await a.get_node_status(ref)
        assert status.status == ProviderNodeStatus.UNKNOWN, status
        try:
            listed = await a.list_nodes(pool)
        except ProviderError:
            pass  # could not list: the pool keeps what it knows
        else:
            assert [n.node_id for n in listed] == [node_id], "a list that answers still lists the node"
    assert await provider.instances(pool) == {node_id}
    assert (await a.get_node_status(ref)).status != ProviderNodeStatus.TERMINATED


async def test_every_object_carries_the_pool_and_the_node(provider: pv.Harness) -> None:
    pool = pv.new_pool_id()
    a = provider.adapter(pool)
    nodes = [pv.new_node_id(), pv.new_node_id()]
    for n in nodes:
        await a.provision_node(provider.request(pool, n))
    for n in nodes:
        await provider.settle(pool, n)
    objects = await provider.objects(pool)
    assert objects
    unlabelled = [o for o in objects if o[1] != pool or o[2] not in nodes]
    assert unlabelled == []
    assert {o[2] for o in objects} == set(nodes)


async def test_engines_get_none_of_the_control_planes_secrets(
    provider: pv.Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    pv.export_secrets(monkeypatch)  # exported before the adapter starts anything, as before `up`
    pool, node_id = pv.new_pool_id(), pv.new_node_id()
    a = provider.adapter(pool)
    req = provider.request(pool, node_id)
    await a.provision_node(req)
    await provider.settle(pool, node_id)
    envs = await provider.engine_envs(pool, node_id)
    assert envs["engine"], "the harness must show the engine's environment"
    for env in envs["engine"]:
        assert pv.holds_secret(env) == []
        assert req.node_token not in env.values()  # the node's heartbeat token stays with the agent
    for env in envs["agent"]:
        assert pv.holds_secret(env) == []
        assert env.get("INFERIA_NODE_TOKEN") == req.node_token  # the one secret an agent holds
    if provider.runs_processes:
        engine = envs["engine"][0]
        assert "PATH" in engine and engine.get("INFERIA_INFERENCE_KEY") == req.workload.inference_key  # type: ignore[union-attr]
