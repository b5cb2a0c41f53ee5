"""The default placement (INFERIA_POOL_HOSTS unset = auto): the first pools get an actor each, later ones a
pool host named in their id; a crash and restart of `up` and pools created after it move no pool, and every
pool keeps exactly its nodes (none orphaned, none adopted twice).

Runs `inferia-orch up` as its own process group (tests/support/crash.py) and looks at its actors through a
short-lived driver process (test_pool_hosts.py's probe).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from actors.placement import AUTO, AUTO_OWN_ACTORS, host_of
from actors.runtime import POOL_HOST_PREFIX, pool_actor_name
from controller.client import Client
from tests.integration.test_pool_hosts import _probe
from tests.support import controlplane as cpl
from tests.support import instant
from tests.support.crash import ControlPlaneProcess
from tests.support.invariants import wait_converged

POOLS = AUTO_OWN_ACTORS + 2
CONVERGE_TIMEOUT_S = 90.0


@pytest.fixture()
def cp_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("placement"))
    cp.env.pop("INFERIA_POOL_HOSTS", None)  # the default
    try:
        yield cp
    finally:
        cp.kill_everything()


def _create(api: Client, name: str) -> str:
    return str(api.create_pool(name, provider="instant", max_nodes=3, provider_config={"latency_s": 0.1})["id"])


def _placement(cp: ControlPlaneProcess, pool_ids: list[str]) -> dict[str, str]:
    """pool id -> the actor running it, from the live actors (a host lists what it runs)."""
    probe = _probe(cp)
    where: dict[str, str] = {}
    for name in probe["names"]:
        if name.startswith("pool:") and name.removeprefix("pool:") in pool_ids:
            where[name.removeprefix("pool:")] = name
    for name, host in probe["hosts"].items():
        for pool_id in host["hosted"]:
            assert pool_id not in where, f"{pool_id} runs in {where[pool_id]} and in {name}"
            where[pool_id] = name
    return {p: where.get(p, "nowhere") for p in pool_ids}


def _nodes(api: Client, pool_ids: list[str]) -> dict[str, list[str]]:
    return {p: sorted(n["id"] for n in api.pool_nodes(p) if n["state"] != "terminated") for p in pool_ids}


def test_auto_placement_survives_a_restart_and_more_pools(cp_proc: ControlPlaneProcess) -> None:
    data_dir = cp_proc.data_dir
    cp_proc.start()
    tag = uuid.uuid4().hex[:6]
    model = f"pl-{tag}"
    with cp_proc.client() as api:
        api.register_model(**cpl.fake_model(model))
        pool_ids = [_create(api, f"pl-{tag}-{i}") for i in range(POOLS)]
        assert [host_of(p) for p in pool_ids[:AUTO_OWN_ACTORS]] == [None] * AUTO_OWN_ACTORS
        assert all(host_of(p) is not None for p in pool_ids[AUTO_OWN_ACTORS:]), pool_ids
        dep_ids = [api.deploy(model, p, replicas=1)["id"] for p in pool_ids]
        wait_converged(api, data_dir, pool_ids, dep_ids, CONVERGE_TIMEOUT_S)
        before = _placement(cp_proc, pool_ids)
        assert before == {p: pool_actor_name(p, AUTO) for p in pool_ids}
        assert sum(name.startswith(POOL_HOST_PREFIX) for name in before.values()) == POOLS - AUTO_OWN_ACTORS
        nodes = _nodes(api, pool_ids)
        assert all(len(ids) == 1 for ids in nodes.values()), nodes

    cp_proc.crash()
    cp_proc.start()
    with cp_proc.client() as api:
        wait_converged(api, data_dir, pool_ids, dep_ids, CONVERGE_TIMEOUT_S)
        assert _placement(cp_proc, pool_ids) == before
        assert _nodes(api, pool_ids) == nodes  # each pool adopted its own node again, once
        for p in pool_ids:
            assert len(instant.instances(data_dir, p)) == 1, p  # no orphan, no second instance

        later = [_create(api, f"pl-{tag}-later-{i}") for i in range(2)]
        assert all(host_of(p) is not None for p in later)
        both = pool_ids + later
        after = _placement(cp_proc, both)
        assert {p: after[p] for p in pool_ids} == before
        assert after == {p: pool_actor_name(p, AUTO) for p in both}
        wait_converged(api, data_dir, pool_ids, dep_ids, CONVERGE_TIMEOUT_S)
        assert _nodes(api, pool_ids) == nodes
    hosts = sorted({n for n in after.values() if n.startswith(POOL_HOST_PREFIX)})
    print(f"\nFIGURES placement pools={len(both)} own_actors={AUTO_OWN_ACTORS} hosts={hosts}")
