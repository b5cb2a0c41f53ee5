"""A roll-out's failure count and progress time are in PostgreSQL (issue 12, migration 007): the rolling-update
runner of a restarted deployments actor (a new RolloutRunner and planner on the same database) resumes with the
same count, so the second failure of the new generation rolls back (the limit is 2), not a third; a new
roll-out starts from zero; a write for a roll-out that is no longer the deployment's lands nowhere.

The runner runs here without Ray on a database of its own on the session's PostgreSQL (no deployments actor
reads it), with the nodes the inventory would report written by hand and a fake clock; then the same through the
whole control plane: the deployments actor killed (Ray restarts it) between the first and the second failure of
a failing update."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import ray

from actors import generations as gen
from actors import rollout_progress
from actors.deployment_core import CreateReplicas
from actors.records import (
    DeploymentRecord,
    ModelRecord,
    NodeRecord,
    PoolRecord,
    ReplicaRecord,
    hash_secret,
    new_id,
)
from actors.rollout import RolloutPlanner
from actors.rollout_runner import RolloutRunner
from actors.runtime import DEPLOYMENTS, NAMESPACE
from actors.states import DeploymentState, NodeState, PoolState
from actors.storage import Store
from controller.boot import ControlPlane
from controller.client import Client, UpdateRolledBack
from tests.support import controlplane as cpl


class Clock:
    def __init__(self) -> None:
        self.t = time.time()  # the roll-out's started_at is the database's now()

    def __call__(self) -> float:
        return self.t


def _runner(clock: Clock) -> RolloutRunner:
    return RolloutRunner(RolloutPlanner(clock=clock, backoff_base_s=0, deadline_s=600))


def _node(dep_id: str, node_id: str, state: str = "ready", ready: bool = True, reason: str | None = None) -> Any:
    return {"id": node_id, "deployment_id": dep_id, "state": state, "engine_ready": ready, "reason": reason}


async def _own_database(dsn: str) -> str:
    name = f"rollprog_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    u = urlsplit(dsn)
    return urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


async def _scenario(dsn: str) -> dict[str, Any]:
    own = await _own_database(dsn)
    try:
        return await _run(own)
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {urlsplit(own).path.lstrip('/')}")
        finally:
            await conn.close()


async def _run(dsn: str) -> dict[str, Any]:
    store = await Store.connect(dsn, max_size=2, migrate=True)
    try:
        model = await store.insert_model(ModelRecord(new_id("mdl"), "m", "custom", args=["serve", "--tag", "A"]))
        pool = await store.insert_pool(PoolRecord(new_id("pool"), "p", "instant", state=PoolState.ACTIVE))
        dep = await store.insert_deployment(
            DeploymentRecord(new_id("dep"), model.id, pool.id, 3, DeploymentState.RUNNING, "k", hash_secret("k"))
        )
        old = [f"old-{i}" for i in range(3)]

        async def replica(node_id: str, generation: int) -> None:  # its node row, then its replicas row
            await store.insert_node(NodeRecord(node_id, pool.id, "instant", NodeState.READY, "x", deployment_id=dep.id))
            await store.insert_replicas([ReplicaRecord(dep.id, node_id, "ready", generation)])

        for n in old:
            await replica(n, 1)
        dep, made = await gen.start_generation(store, dep.id, {"args": ["serve", "--tag", "B", "--bad"]})
        assert made and dep.state == DeploymentState.UPDATING and dep.generation == 2

        async def round_(runner: RolloutRunner, nodes: list[dict[str, Any]]) -> list[Any]:
            d = await store.get_deployment(dep.id)
            assert d is not None
            return await runner.run(store, {d.id: d}, [dict(n) for n in nodes])

        clock = Clock()
        olds = [_node(dep.id, n) for n in old]
        first = _runner(clock)
        assert await round_(first, olds) == [CreateReplicas(dep.id, 1)]
        await replica("new-1", 2)
        clock.t += 5
        await round_(first, [*olds, _node(dep.id, "new-1", "failed", False, "engine exited: --bad")])
        after_one = await gen.get_rollout(store, dep.id)
        saved = (await rollout_progress.load(store, [dep.id]))[dep.id]

        # the actor restarts: a new runner and planner; the failed node is gone, a second new one fails
        clock.t += 5
        second = _runner(clock)
        acts = await round_(second, olds)
        await replica("new-2", 2)
        clock.t += 5
        third = _runner(clock)  # and again, before the second failure is seen
        await round_(third, [*olds, _node(dep.id, "new-2", "failed", False, "engine exited: --bad")])
        rolled = await gen.get_rollout(store, dep.id)
        stale = await rollout_progress.save(store, dep.id, saved)  # the roll-out it was for is rolling back now

        # a new roll-out starts from zero
        d_now = await store.get_deployment(dep.id)
        assert d_now is not None
        await store.pool.execute(
            "UPDATE deployment_rollouts SET phase = 'done', current_generation = 1, target_generation = 1"
            " WHERE deployment_id = $1",
            dep.id,
        )
        await store.pool.execute("UPDATE model_deployments SET state = 'running' WHERE id = $1", dep.id)
        _d, made = await gen.start_generation(store, dep.id, {"args": ["serve", "--tag", "C"]})
        fresh = await gen.get_rollout(store, dep.id)
        fresh_tracks = await rollout_progress.load(store, [dep.id])
        return {
            "after_one": after_one,
            "saved": saved,
            "create_after_restart": acts,
            "rolled": rolled,
            "stale": stale,
            "made": made,
            "fresh": fresh,
            "fresh_tracks": fresh_tracks,
            "started_at": clock.t,
        }
    finally:
        await store.close()


def test_a_restarted_runner_resumes_the_failure_count(control_plane: ControlPlane) -> None:
    assert control_plane.cfg is not None
    out = asyncio.run(_scenario(control_plane.cfg.dsn))
    one = out["after_one"]
    assert one is not None and one.failures == 1 and one.phase == "rolling"
    saved = out["saved"]
    assert saved.generation == 2 and saved.failures == 1 and saved.counted == {"new-1"}
    assert saved.errors == {"engine exited: --bad": 1}
    assert any(isinstance(a, CreateReplicas) for a in out["create_after_restart"])  # one failure: it retries
    rolled = out["rolled"]
    assert rolled is not None and rolled.phase == "rolling_back" and rolled.target_generation == 1
    assert rolled.failures == 2  # the count that rolled it back, kept for GET
    assert "2 new replicas failed" in (rolled.last_failure or "")
    assert out["stale"] is False
    fresh = out["fresh"]
    assert out["made"] and fresh.target_generation == 3 and fresh.failures == 0
    assert out["fresh_tracks"] == {}


def _pid(name: str) -> int | None:
    try:
        h = ray.get_actor(name, namespace=NAMESPACE)
        pid: Any = ray.get(h.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)
        return int(pid)
    except Exception:
        return None


def test_the_deployments_actor_killed_mid_failing_update_counts_on(control_plane: ControlPlane, api: Client) -> None:
    """A failing update (the engine rejects its arguments): once one new replica failed (GET rollout.failures 1),
    the deployments actor is killed; the restarted one rolls back at the second failure, so exactly 2 new
    replicas were ever made (a count starting again would have made a third)."""
    name = f"rk-{uuid.uuid4().hex[:6]}"
    base = cpl.fake_model(name)
    api.register_model(**base)
    pool = api.create_pool(f"pool-{uuid.uuid4().hex[:6]}")
    dep = api.deploy(name, pool["name"], replicas=2)
    api.wait_deployment(dep["id"], timeout=120)
    old = {n["id"] for n in api.list_nodes(deployment=dep["id"], state="all", limit=100)["items"]}
    upd = api.update_deployment(dep["id"], args=[*base["args"], "--no-such-flag"])
    cpl.wait_for(
        lambda: (api.get_deployment(dep["id"])["rollout"] or {}).get("failures") == 1, 60, every=0.05, what="1 failure"
    )
    before = _pid(DEPLOYMENTS)
    assert before is not None
    ray.kill(ray.get_actor(DEPLOYMENTS, namespace=NAMESPACE), no_restart=False)
    seen = api.get_deployment(dep["id"])["rollout"]
    cpl.wait_for(lambda: (p := _pid(DEPLOYMENTS)) is not None and p != before, 120, every=0.2, what="actor restarted")
    with pytest.raises(UpdateRolledBack) as info:
        api.wait_update(dep["id"], upd["generation"], timeout=120, poll=0.2)
    d = info.value.deployment
    assert seen["phase"] == "rolling" and seen["failures"] == 1, seen  # the kill landed between the failures
    assert d["state"] == "running" and d["current_generation"] == 1
    assert d["rollout"]["failures"] == 2 and "2 new replicas failed" in d["rollout"]["last_failure"]
    made = {n["id"] for n in api.list_nodes(deployment=dep["id"], state="all", limit=100)["items"]} - old
    assert len(made) == 2, made
    assert {r["id"] for r in d["replicas"] if r["state"] == "ready"} == old  # the old replicas untouched
    api.delete_deployment(dep["id"])
