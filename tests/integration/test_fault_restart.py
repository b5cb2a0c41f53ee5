"""A fault the control plane must ride out: the whole machine crashes while deployments converge.

`inferia-orch up` runs in its own process group with its own data dir and ports (one Ray per process: the
session fixture's control plane cannot be used). While a deployment scales from 4 to 8 replicas on the
instant test provider (4 ready, 4 being provisioned), every process of that control plane is SIGKILLed at
once: `up`, all of its Ray session, the embedded PostgreSQL and Redis. `up` on the same data dir must then
converge (tests/support/invariants.py) without duplicate pool actors or nodes, and a clean `down` must leave
nothing behind.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import controlplane as cpl
from tests.support import instant
from tests.support.crash import ControlPlaneProcess, actor_processes, describe
from tests.support.invariants import wait_converged

REPLICAS = 8
LATENCY_S = 0.5


@pytest.fixture()
def cp_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("crash"))
    try:
        yield cp
    finally:
        cp.kill_everything()


def test_whole_control_plane_crash_then_restart_converges(cp_proc: ControlPlaneProcess) -> None:
    data_dir: Path = cp_proc.data_dir
    figures: dict[str, float] = {"first_up_s": cp_proc.start()}
    tag = uuid.uuid4().hex[:6]
    with cp_proc.client() as api:
        api.register_model(**cpl.fake_model(f"crash-{tag}"))
        pool = api.create_pool(
            f"crash-{tag}",
            provider="instant",
            max_nodes=REPLICAS + 4,
            provider_config={"latency_s": LATENCY_S, "deprovision_latency_s": LATENCY_S},
        )
        pool_id = pool["id"]
        dep_id = api.deploy(f"crash-{tag}", pool["name"], replicas=REPLICAS // 2)["id"]
        wait_converged(api, data_dir, [pool_id], [dep_id], timeout=60)
        # crash while the other half is being provisioned: ready nodes to adopt, provider calls in flight
        api.scale_deployment(dep_id, REPLICAS)
        cpl.wait_for(lambda: len(api.pool_nodes(pool_id)) > REPLICAS // 2, 30, every=0.05, what="new node rows")
        time.sleep(LATENCY_S * 0.5)
        at_crash = len(instant.instances(data_dir, pool_id))

    assert cp_proc.sessions, "the Ray session of `up` was not found"
    pg_up = any("postgres" in line for line in describe(cp_proc.remember()))
    assert pg_up, "the embedded PostgreSQL was not found among the control plane's processes"
    t0 = time.monotonic()
    killed = cp_proc.crash()
    figures["crash_s"] = time.monotonic() - t0
    assert at_crash < REPLICAS, f"all {REPLICAS} replicas were up before the crash: nothing was in flight"

    figures["restart_up_s"] = cp_proc.start()
    with cp_proc.client() as api:
        figures["converge_after_up_s"] = wait_converged(api, data_dir, [pool_id], [dep_id], timeout=120)
        figures["crash_to_converged_s"] = time.monotonic() - t0
        assert [p["id"] for p in api.list_pools()] == [pool_id]
        live = cp_proc.remember()
        assert len(actor_processes(live, "PoolActor")) == 1, describe(live)
        assert len(actor_processes(live, "InventoryActor")) == 1, describe(live)
        assert len(actor_processes(live, "DeploymentActor")) == 1, describe(live)
        nodes = [n for n in api.pool_nodes(pool_id) if n["state"] != "terminated"]
        assert len(nodes) == REPLICAS, nodes
        assert len(instant.instances(data_dir, pool_id)) == REPLICAS
        time.sleep(2.0)  # a few reconcile rounds later nothing was added or created twice
        wait_converged(api, data_dir, [pool_id], [dep_id], timeout=30)
        assert len(instant.instances(data_dir, pool_id)) == REPLICAS

    figures["down_s"] = cp_proc.stop()
    left = cp_proc.leftovers()
    assert not left, f"processes left after `down`: {describe(left)}"
    assert instant.instances(data_dir, pool_id) == {}, "`up` without --keep-nodes terminates the nodes on stop"
    print(
        f"\nFIGURES killed_processes={killed} replicas_up_at_crash={at_crash} "
        + " ".join(f"{k}={v:.2f}" for k, v in figures.items())
    )
