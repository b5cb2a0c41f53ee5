"""Faults the control plane must ride out: Redis going away and coming back."""

from __future__ import annotations

import json
import time
import uuid

import redis

from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl


def test_redis_down_routing_still_served_and_publishing_resumes(control_plane: ControlPlane, api: Client) -> None:
    assert control_plane._redis is not None and control_plane.cfg is not None
    r = redis.Redis.from_url(control_plane.cfg.redis_url, socket_timeout=2)
    name = f"rd-{uuid.uuid4().hex[:6]}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(f"rd-{uuid.uuid4().hex[:6]}")

    control_plane._redis.stop()  # Redis is gone
    try:
        dep = api.deploy(name, pool["name"], replicas=1)
        api.wait_deployment(dep["id"], timeout=60)
        # routing is served from memory and the long-poll path, without Redis
        table = cpl.wait_for(lambda: (t := api.routing_table()) and t["models"].get(name) and t, 20, what="route")
        assert api.routing_table(version=table["version"]) is None  # 304
    finally:
        control_plane._redis.start()  # same port: clients reconnect by themselves

    # publishing resumes: the snapshot in Redis catches up with the current version
    def published() -> bool:
        try:
            raw = r.get("routing:latest")
        except redis.RedisError:
            return False
        return raw is not None and name in json.loads(raw)["models"]

    t0 = time.monotonic()
    cpl.wait_for(published, 20, what="routing snapshot republished")
    print(f"\nFIGURES redis_back_to_snapshot_s={time.monotonic() - t0:.2f}")
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 60, what="deleted")
    r.close()
