"""Faults the control plane must ride out: each of its Ray actors killed (and restarted by Ray) while
nodes are being provisioned, scaled up and down, and deleted.

Every actor is detached and named with max_restarts=-1, and rebuilds from Postgres and provider truth when
Ray restarts it; callers' calls are retried (max_task_retries=-1). After each kill the scenario must
converge (tests/support/invariants.py): nothing alive in the database that is gone at the provider, no
leaked instance, no instance created twice, every deployment back at its desired replicas in the routing
table. Pools are on the instant test provider with a provisioning and deprovisioning latency, so the kill
lands while provider calls are in flight.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.runtime import DEPLOYMENTS, INVENTORY, NAMESPACE, pool_actor_name
from controller.boot import ControlPlane
from controller.client import Client, NotFound
from tests.support import controlplane as cpl
from tests.support import instant
from tests.support.invariants import wait_converged

LATENCY_S = 0.4  # each provision and deprovision takes this long: the kill lands mid-way
KILL_AFTER_S = 0.3
CONVERGE_TIMEOUT_S = 90.0
FIGURES: dict[str, float] = {}


def _pid_of(handle: Any) -> int:
    return int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=120))


def _actor_name(actor: str, pool_id: str) -> str:
    return pool_actor_name(pool_id) if actor == "pool" else actor


class Killer:
    """Kills one named actor (Ray restarts it) and proves the restart: the actor answers from a new process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.kills = 0

    def handle(self) -> Any:
        return ray.get_actor(self.name, namespace=NAMESPACE)

    def pid(self) -> int:
        return _pid_of(self.handle())

    def kill(self) -> None:
        ray.kill(self.handle(), no_restart=False)
        self.kills += 1

    def assert_restarted(self, before_pid: int) -> int:
        """ray.kill is asynchronous: the old process may still answer for a moment."""
        after = cpl.wait_for(
            lambda: (p := _try_pid(self)) is not None and p != before_pid and p,
            120,
            every=0.2,
            what=f"{self.name} answering from a new process (pid was {before_pid})",
        )
        return int(after)


def _try_pid(k: Killer) -> int | None:
    try:
        return k.pid()
    except Exception:
        return None


def _wait_gone(api: Client, data_dir: Path, pool_id: str, dep_id: str, timeout: float = CONVERGE_TIMEOUT_S) -> None:
    try:
        cpl.wait_for(lambda: not any(d["id"] == dep_id for d in _try_list(api)), timeout, every=0.25, what="deleted")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_diagnose(api, data_dir, pool_id, dep_id)}") from None


def _diagnose(api: Client, data_dir: Path, pool_id: str, dep_id: str) -> str:
    try:
        dep = {k: v for k, v in api.get_deployment(dep_id).items() if k != "inference_key"}
    except Exception as exc:
        dep = {"error": repr(exc)}
    nodes = {n["id"]: (n["state"], n.get("state_reason")) for n in api.pool_nodes(pool_id, include_terminated=True)}
    return f"deployment: {dep}\nnodes: {nodes}\nat the provider: {sorted(instant.instances(data_dir, pool_id))}"


def _try_list(api: Client) -> list[dict[str, Any]]:
    try:
        return list(api.list_deployments())
    except Exception:
        return [{"id": "unknown"}]  # API busy: not gone yet as far as we know


def _pool_deleted(api: Client, pool_id: str) -> bool:
    try:
        return bool(api.get_pool(pool_id)["state"] == "deleted")
    except NotFound:  # a deleted pool is no longer listed
        return True
    except Exception:
        return False


def _of_deployment(data_dir: Path, pool_id: str, dep_id: str) -> list[str]:
    return sorted(n for n, rec in instant.instances(data_dir, pool_id).items() if rec.get("deployment_id") == dep_id)


@pytest.mark.parametrize("actor", ["inventory", "deployments", "pool"])
def test_actor_killed_mid_provision_scale_and_delete(control_plane: ControlPlane, api: Client, actor: str) -> None:
    data_dir = control_plane.settings.data_dir
    tag = uuid.uuid4().hex[:6]
    model = f"fa-{actor[:3]}-{tag}"
    api.register_model(**cpl.fake_model(model))
    pool = api.create_pool(
        f"fa-{actor[:3]}-{tag}",
        provider="instant",
        max_nodes=20,
        provider_config={"latency_s": LATENCY_S, "deprovision_latency_s": LATENCY_S},
    )
    pool_id = pool["id"]
    killer = Killer(_actor_name(actor, pool_id))
    assert killer.name in {INVENTORY, DEPLOYMENTS, pool_actor_name(pool_id)}

    def kill_mid_way(phase: str, start: Any, in_flight: Any) -> float:
        """Start an operation, kill the actor KILL_AFTER_S later, prove it restarted; seconds to converge."""
        before = killer.pid()
        start()
        time.sleep(KILL_AFTER_S)
        flying = in_flight()
        killer.kill()
        t_kill = time.monotonic()
        killer.assert_restarted(before)
        assert flying, f"{phase}: nothing was in flight when {killer.name} was killed"
        return t_kill

    # ---- provisioning: 5 replicas, the actor dies while they are being created
    dep: dict[str, Any] = {}

    def deploy() -> None:
        dep.update(api.deploy(model, pool["name"], replicas=5))

    t = kill_mid_way("provision", deploy, lambda: len(_of_deployment(data_dir, pool_id, dep["id"])) < 5)
    dep_id = dep["id"]
    wait_converged(api, data_dir, [pool_id], [dep_id], CONVERGE_TIMEOUT_S)
    FIGURES[f"{actor}.provision_s"] = time.monotonic() - t
    assert len(_of_deployment(data_dir, pool_id, dep_id)) == 5

    # ---- scale up 5 -> 8, killed while the new nodes are provisioning
    t = kill_mid_way(
        "scale up",
        lambda: api.scale_deployment(dep_id, 8),
        lambda: len(_of_deployment(data_dir, pool_id, dep_id)) < 8,
    )
    wait_converged(api, data_dir, [pool_id], [dep_id], CONVERGE_TIMEOUT_S)
    FIGURES[f"{actor}.scale_up_s"] = time.monotonic() - t
    assert len(_of_deployment(data_dir, pool_id, dep_id)) == 8

    # ---- scale down 8 -> 2, killed while the surplus is being deprovisioned
    t = kill_mid_way(
        "scale down",
        lambda: api.scale_deployment(dep_id, 2),
        lambda: len(_of_deployment(data_dir, pool_id, dep_id)) > 2,
    )
    wait_converged(api, data_dir, [pool_id], [dep_id], CONVERGE_TIMEOUT_S)
    FIGURES[f"{actor}.scale_down_s"] = time.monotonic() - t
    assert len(_of_deployment(data_dir, pool_id, dep_id)) == 2

    # ---- delete (stop, then delete), killed while the replicas are being deprovisioned
    t = kill_mid_way(
        "delete",
        lambda: api.delete_deployment(dep_id),
        lambda: len(_of_deployment(data_dir, pool_id, dep_id)) > 0,
    )
    _wait_gone(api, data_dir, pool_id, dep_id)
    wait_converged(api, data_dir, [pool_id], [], CONVERGE_TIMEOUT_S)
    FIGURES[f"{actor}.delete_s"] = time.monotonic() - t
    assert _of_deployment(data_dir, pool_id, dep_id) == []
    assert not [n for n in api.pool_nodes(pool_id) if n.get("deployment_id") == dep_id and n["state"] != "terminated"]

    if actor == "pool":
        # delete the pool's own (idle) nodes: the pool actor dies while deleting the pool
        api.scale_pool(pool_id, 3)
        wait_converged(api, data_dir, [pool_id], [], CONVERGE_TIMEOUT_S)
        assert len(instant.instances(data_dir, pool_id)) == 3
        t = kill_mid_way(
            "pool delete",
            lambda: api.delete_pool(pool_id),
            lambda: len(instant.instances(data_dir, pool_id)) > 0,
        )
        cpl.wait_for(lambda: _pool_deleted(api, pool_id), CONVERGE_TIMEOUT_S, every=0.25, what="pool deleted")
        FIGURES["pool.pool_delete_s"] = time.monotonic() - t
        assert instant.instances(data_dir, pool_id) == {}
        creates = [n for op, n in instant.journal(data_dir, pool_id) if op == "create"]
        assert len(creates) == len(set(creates)), "a node was created twice at the provider"
    else:
        api.delete_pool(pool_id)

    assert killer.kills >= 4
    print("\nFIGURES " + " ".join(f"{k}={v:.2f}" for k, v in FIGURES.items() if k.startswith(actor)))
