"""Faults the control plane must ride out: Redis going away and coming back."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
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


def test_postgres_restart_api_answers_503_then_recovers(control_plane: ControlPlane, api: Client) -> None:
    """While PostgreSQL is down the API answers 503 (retryable, JSON), never a bare 500; afterwards
    everything works again and nothing was half-written."""
    assert control_plane._pg is not None
    before = len(api.list_pools())
    control_plane._pg.stop()
    try:
        r = httpx.get(
            control_plane.api_url + "/v1/pools",
            headers={"authorization": f"Bearer {control_plane.api_token}"},
            timeout=30,
            trust_env=False,
        )
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "unavailable"
        r = httpx.post(
            control_plane.api_url + "/v1/pools",
            json={"name": f"pg-{uuid.uuid4().hex[:6]}"},
            headers={"authorization": f"Bearer {control_plane.api_token}"},
            timeout=30,
            trust_env=False,
        )
        assert r.status_code == 503, r.text
    finally:
        control_plane._pg.start()
    _ok, pools = cpl.wait_for(lambda: _try(api.list_pools), 30, what="API back")
    assert len(pools) == before  # the refused create left nothing behind


def _try(fn: Any) -> tuple[bool, Any] | None:
    try:
        return True, fn()
    except Exception:
        return None
