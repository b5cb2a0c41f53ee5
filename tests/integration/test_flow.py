"""Actors on a real local Ray with embedded Postgres and Redis, the local provider and a stub engine."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import httpx

from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl


def _ready_count(api: Client, dep_id: str) -> int:
    return int(api.get_deployment(dep_id)["ready_replicas"])


def test_deploy_route_chat_replace_delete(control_plane: ControlPlane, api: Client) -> None:
    data_dir = Path(control_plane.settings.data_dir)
    name = f"echo-{uuid.uuid4().hex[:6]}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(f"pool-{uuid.uuid4().hex[:6]}")
    dep = api.deploy(name, pool["name"], replicas=2)
    assert dep["state"] == "pending"
    key = dep["inference_key"]

    t0 = time.monotonic()
    api.wait_deployment(dep["id"], timeout=90)
    deploy_s = time.monotonic() - t0

    table = cpl.wait_for(
        lambda: (t := api.routing_table()) and len(t["models"].get(name, [])) == 2 and t, 30, what="2 routes"
    )
    version = table["version"]
    assert api.routing_table(version=version) is None  # 304 when unchanged

    # a chat completion through the proxy with the deployment's own key
    r = httpx.post(
        control_plane.api_url + "/v1/chat/completions",
        json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: hi"
    # a wrong key is refused (401, as OpenAI answers an invalid API key)
    r = httpx.post(
        control_plane.api_url + "/v1/chat/completions",
        json={"model": name, "messages": []},
        headers={"authorization": "Bearer nope"},
        timeout=30,
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text

    # kill one engine: the node leaves the routing table within 3 heartbeat intervals, then is replaced
    victim = table["models"][name][0]["node_id"]
    _, engines = cpl.node_pids(data_dir, victim)
    assert engines, "engine process not found"
    t_kill = time.monotonic()
    for pid in engines:
        os.kill(pid, signal.SIGKILL)
    cpl.wait_for(
        lambda: len((api.routing_table() or {}).get("models", {}).get(name, [])) == 1, 3 * 1.0 + 2, what="1 route"
    )
    detect_s = time.monotonic() - t_kill
    cpl.wait_for(
        lambda: (
            (t := api.routing_table())
            and len(t["models"].get(name, [])) == 2
            and victim not in {e["node_id"] for e in t["models"][name]}
        ),
        60,
        what="replacement",
    )
    assert api.get_node(victim)["state"] in ("draining", "terminated")
    cpl.wait_for(lambda: api.get_node(victim)["state"] == "terminated", 30, what="victim terminated")

    # delete: everything goes, no process left
    nodes = [r["id"] for r in api.get_deployment(dep["id"])["replicas"]]
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 60, what="deleted")
    for n in nodes:
        assert api.get_node(n)["state"] == "terminated"
        assert cpl.node_pids(data_dir, n) == (None, [])
    assert name not in (api.routing_table() or {})["models"]
    print(f"\nFIGURES deploy_to_running_s={deploy_s:.2f} kill_to_removal_s={detect_s:.2f}")
