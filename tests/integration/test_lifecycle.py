"""Node lifecycle on the real control plane (issue 10): drain before terminate, a deleted pool's actor goes,
no deployment on a pool being deleted, retention of events and terminated rows, paged node listings."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import ray

from actors.placement import POOL_HOST_PREFIX
from actors.runtime import NAMESPACE, get_pool_actor, pool_actor_name
from actors.storage import Store
from controller.boot import ControlPlane
from controller.client import Client, Conflict
from tests.support import controlplane as cpl


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def _deploy(api: Client, replicas: int = 1) -> tuple[str, dict[str, Any], dict[str, Any]]:
    name = f"echo-{_uid()}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(f"pool-{_uid()}")
    dep = api.deploy(name, pool["name"], replicas=replicas)
    api.wait_deployment(dep["id"], timeout=90)
    return name, pool, dep


def test_scale_down_drains_a_request_in_flight(control_plane: ControlPlane, api: Client) -> None:
    """Issue 10 #9: the replica leaves the routing table at once, its request in flight finishes (200), then
    it is terminated; before, scale-down deprovisioned at once and the request was cut."""
    name, _pool, dep = _deploy(api)
    node_id = api.get_deployment(dep["id"])["replicas"][0]["id"]
    result: dict[str, Any] = {}

    def slow_request() -> None:
        r = httpx.post(
            control_plane.api_url + "/v1/chat/completions",
            json={"model": name, "messages": [{"role": "user", "content": "sleep:4"}]},
            headers={"authorization": f"Bearer {dep['inference_key']}"},
            timeout=30,
        )
        result["status"], result["text"], result["done_at"] = r.status_code, r.text, time.monotonic()

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(1.0)  # the request is in flight and the API replica has reported it (every 0.5 s)
    api.scale_deployment(dep["id"], 0)
    cpl.wait_for(lambda: api.get_node(node_id)["state"] == "draining", 10, what="draining")
    assert name not in (api.routing_table() or {"models": {}})["models"]  # out of the table at once
    terminated_at = cpl.wait_for(
        lambda: api.get_node(node_id)["state"] == "terminated" and time.monotonic(), 40, what="terminated"
    )
    t.join(30)
    assert result.get("status") == 200, result
    assert result["text"] and "echo: sleep:4" in result["text"]
    assert terminated_at >= result["done_at"] - 0.5  # not before its request was answered
    print(f"\nFIGURES drain_after_request_s={terminated_at - result['done_at']:.2f}")
    api.delete_deployment(dep["id"])


def test_a_deleted_pools_actor_goes_away(control_plane: ControlPlane, api: Client) -> None:
    """Issue 10 #4: no actor (and no 10 s loop calling list_nodes) is left for a deleted pool; in a pool host,
    the host no longer runs it."""
    pool = api.create_pool(f"pool-{_uid()}")
    name = pool_actor_name(pool["id"], control_plane.settings.pool_hosts)
    assert ray.get_actor(name, namespace=NAMESPACE) is not None
    api.delete_pool(pool["name"])
    cpl.wait_for(lambda: pool["id"] not in {p["id"] for p in api.list_pools()}, 60, what="pool deleted")

    def gone() -> bool:
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return True
        if name.startswith(POOL_HOST_PREFIX):  # a pool host (INFERIA_POOL_HOSTS=auto beyond the first pools)
            return pool["id"] not in ray.get(actor.hosted.remote(), timeout=30)  # it stays for its other pools
        return False

    cpl.wait_for(gone, 30, what="the deleted pool's actor (or its runtime in a pool host) gone")


def test_no_deployment_lands_on_a_pool_being_deleted(control_plane: ControlPlane, api: Client) -> None:
    """Issue 10 #5: DELETE /v1/pools and POST /v1/deployments race; one of them is refused, never neither."""
    model = f"echo-{_uid()}"
    api.register_model(**cpl.fake_model(model))
    base = control_plane.api_url
    headers = {"authorization": f"Bearer {control_plane.api_token}"}

    async def race(pool_name: str) -> tuple[int, int]:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as c:
            deploy = c.post("/v1/deployments", json={"model": model, "pool": pool_name, "replicas": 0})
            delete = c.delete(f"/v1/pools/{pool_name}")
            d, p = await asyncio.gather(deploy, delete)
            return d.status_code, p.status_code

    outcomes = set()
    for _ in range(8):
        pool = api.create_pool(f"race-{_uid()}")
        d, p = asyncio.run(race(pool["name"]))
        outcomes.add((d, p))
        # one is refused: the delete (409 in use), or the deployment (409 deleting, 404 once deleted)
        assert (d, p) in {(202, 409), (409, 202), (404, 202)}, (d, p)
        deps = [x for x in api.list_deployments() if x["pool_id"] == pool["id"]]
        if p == 202:
            assert deps == []
            pid: str = pool["id"]

            def deleted(pid: str = pid) -> bool:
                return pid not in {x["id"] for x in api.list_pools()}

            cpl.wait_for(deleted, 60, what="deleted")
        else:
            api.delete_deployment(deps[0]["id"])
    print(f"\nFIGURES race_outcomes={sorted(outcomes)}")


def test_a_delete_whose_stop_lost_the_race_still_deletes(control_plane: ControlPlane, api: Client) -> None:
    """DELETE marks the deployment, then moves it to stopping by compare-and-set. Before, that CAS was from the
    state it had read, and lost when the reconciler moved the state in between (degraded -> running: found by
    CI), leaving the mark alone. The mark alone is enough now: the reconciler stops and deletes it itself."""
    assert control_plane.cfg is not None
    _name, _pool, dep = _deploy(api, replicas=1)

    async def mark_only() -> None:  # what a lost compare-and-set leaves: the mark, the state unchanged
        conn = await asyncpg.connect(control_plane.cfg.dsn)  # type: ignore[union-attr]
        try:
            await conn.execute("UPDATE model_deployments SET delete_requested = true WHERE id = $1", dep["id"])
        finally:
            await conn.close()

    asyncio.run(mark_only())
    cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 60, what="deleted")


def test_a_deleting_pool_refuses_nodes_with_409(control_plane: ControlPlane, api: Client) -> None:
    pool = api.create_pool(f"pool-{_uid()}", max_nodes=2)
    api.scale_pool(pool["id"], 1)  # an idle node: the deletion drains it (a second or so)
    cpl.wait_for(lambda: len(api.pool_nodes(pool["id"])) == 1, 60, what="1 node")
    model = f"echo-{_uid()}"
    api.register_model(**cpl.fake_model(model))
    api.delete_pool(pool["name"])
    with pytest.raises(Conflict):
        api.deploy(model, pool["id"], replicas=1)
    with pytest.raises(Conflict):
        api.scale_pool(pool["id"], 2)
    # the pool itself refuses, whatever its actor last saw (the API marked it deleting in Postgres)
    ref = get_pool_actor(pool["id"])
    res = ray.get(ref.create_nodes.remote([f"node-{_uid()}"], None), timeout=60)
    assert res["ok"] is False and res["code"] == "pool_not_active"
    cpl.wait_for(lambda: not any(p["id"] == pool["id"] for p in api.list_pools()), 60, what="deleted")


def test_retention_prunes_old_events_and_terminated_rows(control_plane: ControlPlane, api: Client) -> None:
    """Issue 10 #12: one bounded DELETE per round; a terminated row a replicas row still names is kept."""
    assert control_plane.cfg is not None
    dsn = control_plane.cfg.dsn
    model = f"echo-{_uid()}"
    api.register_model(**cpl.fake_model(model))
    pool = api.create_pool(f"pool-{_uid()}")
    dep = api.deploy(model, pool["name"], replicas=0)
    old, kept = f"old-{_uid()}", f"kept-{_uid()}"

    async def run() -> tuple[int, int, int, bool, bool, bool]:
        store = await Store.connect(dsn, max_size=2)
        try:
            await store.pool.execute(
                "INSERT INTO events (kind, entity_type, entity_id, at)"
                " SELECT 'test.old', 'test', 'old-' || g, now() - interval '8 days' FROM generate_series(1, 5) g"
            )
            for nid in (old, kept):
                await store.pool.execute(
                    "INSERT INTO inventory_nodes (id, pool_id, provider, state, token_hash, updated_at)"
                    " VALUES ($1, $2, 'local', 'terminated', 'x', now() - interval '2 days')",
                    nid,
                    pool["id"],
                )
            await store.pool.execute(
                "INSERT INTO replicas (deployment_id, node_id, state) VALUES ($1, $2, 'terminated')", dep["id"], kept
            )
            first = await store.prune_events(7 * 86400, 3)  # bounded: at most 3 per round
            second = await store.prune_events(7 * 86400, 1000)
            nodes = await store.prune_terminated_nodes(86400, 1000)
            old_left = await store.get_node(old) is not None
            kept_left = await store.get_node(kept) is not None
            await store.delete_replica(dep["id"], kept)
            await store.prune_terminated_nodes(86400, 1000)
            kept_after = await store.get_node(kept) is not None
            return first, second, nodes, old_left, kept_left, kept_after
        finally:
            await store.close()

    first, second, nodes, old_left, kept_left, kept_after = asyncio.run(run())
    assert first == 3 and second >= 2
    assert nodes >= 1 and not old_left
    assert kept_left  # a replicas row still names it: never deleted from under the foreign key
    assert not kept_after
    api.delete_deployment(dep["id"])


def test_node_listing_pages(control_plane: ControlPlane, api: Client) -> None:
    pool = api.create_pool(f"pool-{_uid()}", max_nodes=3)
    api.scale_pool(pool["id"], 3)
    cpl.wait_for(lambda: len(api.pool_nodes(pool["id"])) == 3, 60, what="3 nodes")
    every = [n["id"] for n in api.pool_nodes(pool["id"])]
    headers = {"authorization": f"Bearer {control_plane.api_token}"}
    url = f"{control_plane.api_url}/v1/pools/{pool['id']}/nodes"
    page1 = httpx.get(url, params={"limit": 2}, headers=headers, timeout=30)
    page2 = httpx.get(url, params={"limit": 2, "offset": 2}, headers=headers, timeout=30)
    assert page1.headers["x-total-count"] == "3"
    assert [n["id"] for n in page1.json()] + [n["id"] for n in page2.json()] == every
    bad = httpx.get(url, params={"limit": 0}, headers=headers, timeout=30)
    assert bad.status_code == 422 and "limit" in bad.text
    api.delete_pool(pool["id"])
    cpl.wait_for(lambda: not any(p["id"] == pool["id"] for p in api.list_pools()), 60, what="deleted")
    data_dir = Path(control_plane.settings.data_dir)
    for nid in every:
        assert cpl.node_pids(data_dir, nid) == (None, [])
