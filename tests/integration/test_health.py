"""Heartbeats, detection of dead nodes, routing-table watchers (long-poll and Redis)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import redis

from actors.pool_core import node_token
from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl


def _token_key(cp: ControlPlane) -> str:
    assert cp.cfg is not None

    async def read() -> str:
        conn = await asyncpg.connect(cp.cfg.dsn)  # type: ignore[union-attr]
        try:
            return str(await conn.fetchval("SELECT value FROM cluster_secrets WHERE name = 'node_token_key'"))
        finally:
            await conn.close()

    return asyncio.run(read())


def test_node_tokens_are_per_node(control_plane: ControlPlane, api: Client) -> None:
    pool = api.create_pool(f"idle-{uuid.uuid4().hex[:6]}", target_nodes=0, max_nodes=4)
    api.scale_pool(pool["name"], 2)
    nodes = cpl.wait_for(
        lambda: (ns := api.pool_nodes(pool["name"])) and len(ns) == 2 and all(n["state"] == "ready" for n in ns) and ns,
        30,
        what="2 idle nodes ready",
    )
    a, b = nodes[0]["id"], nodes[1]["id"]
    key = _token_key(control_plane)
    url = control_plane.api_url + "/inventory/heartbeat"
    ok = httpx.post(url, json={"node_id": a}, headers={"authorization": f"Bearer {node_token(key, a)}"})
    assert ok.status_code == 200, ok.text
    # node a's heartbeat signed with node b's token is refused
    bad = httpx.post(url, json={"node_id": a}, headers={"authorization": f"Bearer {node_token(key, b)}"})
    assert bad.status_code == 403
    # the admin token is not a node token either
    adm = httpx.post(url, json={"node_id": a}, headers={"authorization": f"Bearer {control_plane.api_token}"})
    assert adm.status_code == 403
    # batched: per-item tokens, per-item results
    batch = httpx.post(
        url,
        json={
            "heartbeats": [
                {"node_id": a, "token": node_token(key, a)},
                {"node_id": b, "token": node_token(key, a)},
                {"node_id": "node-nope", "token": "x"},
            ]
        },
    )
    assert [r["status"] for r in batch.json()["results"]] == [200, 403, 404]

    # a terminated node's heartbeat is refused with 410 and never brings it back
    api.delete_node(a)
    cpl.wait_for(lambda: api.get_node(a)["state"] == "terminated", 30, what="terminated")
    gone = httpx.post(url, json={"node_id": a}, headers={"authorization": f"Bearer {node_token(key, a)}"})
    assert gone.status_code == 410
    assert api.get_node(a)["state"] == "terminated"
    api.scale_pool(pool["name"], 0)
    cpl.wait_for(lambda: not api.pool_nodes(pool["name"]), 30, what="pool empty")


def test_missed_heartbeats_remove_route_and_notify_watchers(control_plane: ControlPlane, api: Client) -> None:
    data_dir = Path(control_plane.settings.data_dir)
    interval = control_plane.settings.heartbeat_interval_s
    name = f"hb-{uuid.uuid4().hex[:6]}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(f"hb-{uuid.uuid4().hex[:6]}")
    dep = api.deploy(name, pool["name"], replicas=1)
    api.wait_deployment(dep["id"], timeout=60)
    table = cpl.wait_for(lambda: (t := api.routing_table()) and t["models"].get(name) and t, 20, what="route")
    node = table["models"][name][0]["node_id"]

    # watchers: a long-poll HTTP client and a Redis subscriber
    assert control_plane.cfg is not None
    r = redis.Redis.from_url(control_plane.cfg.redis_url)
    sub = r.pubsub()
    sub.subscribe("routing")
    sub.get_message(timeout=1)  # subscribe confirmation
    seen: dict[str, float] = {}

    def long_poll() -> None:
        v = table["version"]
        while "poll" not in seen:
            t = api.routing_table(version=v, wait=True, timeout=20)
            if t is None:
                continue
            if name not in t["models"]:
                seen["poll"] = time.monotonic()
            v = t["version"]

    def redis_watch() -> None:
        deadline = time.monotonic() + 30
        while "redis" not in seen and time.monotonic() < deadline:
            msg = sub.get_message(timeout=1)
            if msg and msg["type"] == "message" and name not in json.loads(msg["data"])["models"]:
                seen["redis"] = time.monotonic()

    threads = [threading.Thread(target=long_poll, daemon=True), threading.Thread(target=redis_watch, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(0.5)

    # SIGKILL the whole node (agent and engine): only missing heartbeats can tell
    agent, _ = cpl.node_pids(data_dir, node)
    assert agent is not None
    t_kill = time.monotonic()
    os.killpg(agent, signal.SIGKILL)
    for t in threads:
        t.join(30)
    assert "poll" in seen and "redis" in seen, seen
    detect = seen["poll"] - t_kill
    # the last heartbeat came at most one interval before the kill
    assert detect <= 3 * interval + 1.0, detect
    assert abs(seen["redis"] - seen["poll"]) <= 0.1 + 0.1, seen
    print(
        f"\nFIGURES kill_to_route_removal_s={detect:.2f} (interval {interval}s) "
        f"poll_vs_redis_ms={(seen['redis'] - seen['poll']) * 1000:.1f}"
    )
    # the replica is replaced
    cpl.wait_for(
        lambda: (t := api.routing_table()) and t["models"].get(name) and t["models"][name][0]["node_id"] != node,
        60,
        what="replacement",
    )
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 60, what="deleted")
    sub.close()
    r.close()
