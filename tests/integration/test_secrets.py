"""Secrets (admin token, node tokens, inference keys) never appear in responses, logs or events."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import ray
import redis

from actors.pool_core import node_token
from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl


def _read_db(cp: ControlPlane) -> tuple[str, str]:
    assert cp.cfg is not None

    async def read() -> tuple[str, str]:
        conn = await asyncpg.connect(cp.cfg.dsn)  # type: ignore[union-attr]
        try:
            key = await conn.fetchval("SELECT value FROM cluster_secrets WHERE name = 'node_token_key'")
            events = await conn.fetch("SELECT kind, entity_id, data::text AS data FROM events")
            return str(key), json.dumps([dict(e) for e in events])
        finally:
            await conn.close()

    return asyncio.run(read())


def test_secrets_stay_secret(control_plane: ControlPlane, api: Client) -> None:
    name = "secret-check"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool("secret-pool")
    dep = api.deploy(name, pool["name"], replicas=1)
    inference_key = dep.pop("inference_key")
    api.wait_deployment(dep["id"], timeout=60)
    node_id = api.get_deployment(dep["id"])["replicas"][0]["id"]
    token_key, events = _read_db(control_plane)
    secrets = {
        "admin token": control_plane.api_token,
        "inference key": inference_key,
        "node token": node_token(token_key, node_id),
        "node token key": token_key,
    }

    # every admin / data response a user can read
    h = {"authorization": f"Bearer {control_plane.api_token}"}
    bodies = []
    for path in (
        "/v1/pools",
        f"/v1/pools/{pool['id']}",
        f"/v1/pools/{pool['id']}/nodes",
        f"/v1/nodes/{node_id}",
        f"/v1/nodes/{node_id}/logs?tail=500",
        "/v1/model-registry",
        "/v1/deployments",
        f"/v1/deployments/{dep['id']}",
        f"/v1/deployments/{dep['id']}/logs?tail=500",
        "/v1/providers",
        "/v1/routing-table",
        "/metrics",
        "/healthz",
        "/openapi.json",
    ):
        r = httpx.get(control_plane.api_url + path, headers=h, timeout=30, trust_env=False)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        bodies.append((path, r.text))
    # error answers that involve the secrets
    bad = httpx.post(
        control_plane.api_url + "/inventory/heartbeat",
        json={"node_id": node_id},
        headers={"authorization": f"Bearer {control_plane.api_token}"},
        trust_env=False,
    )
    bodies.append(("403 heartbeat", bad.text))

    # the events table, the Redis events stream and routing snapshots
    assert control_plane.cfg is not None
    rds = redis.Redis.from_url(control_plane.cfg.redis_url, decode_responses=True)
    entries: Any = rds.xrange("events", count=10_000)
    stream = json.dumps([[k, dict(v)] for k, v in entries])
    snapshot = str(rds.get("routing:latest") or "")
    rds.close()

    # node logs and every log file of this Ray session
    data_dir = Path(control_plane.settings.data_dir)
    logs = [(str(p), p.read_text(errors="replace")) for p in data_dir.glob("nodes/*/*/*.log")]
    node: Any = ray._private.worker._global_node
    session = Path(node.get_session_dir_path())  # this test process is the driver
    logs += [(str(p), p.read_text(errors="replace")) for p in (session / "logs").glob("*") if p.is_file()]
    logs += [(str(p), p.read_text(errors="replace")) for p in data_dir.glob("*.log")]
    node_json = [(str(p), p.read_text()) for p in data_dir.glob("nodes/*/*/node.json")]

    places = [
        *bodies,
        ("events table", events),
        ("events stream", stream),
        ("routing snapshot", snapshot),
        *logs,
        *node_json,
    ]
    assert len(logs) > 5
    for what, secret in secrets.items():
        leaks = [where for where, text in places if secret in text]
        assert not leaks, f"the {what} leaks into {leaks}"
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 60, what="deleted")


def test_provider_config_secrets_are_masked(control_plane: ControlPlane, api: Client) -> None:
    """Secrets a user puts into a pool's provider config (a Nosana sidecar key, a wallet's secret key, a
    cloud token) are masked in every answer and never reach the events or the logs. The instant provider
    keeps unknown config keys, as the Nosana one does."""
    tag = uuid.uuid4().hex[:8]
    secrets = {
        "internal_api_key": f"nsk-{tag}-internal-api-key",
        "wallet": f"5Kb8kLf9zgWQnogidDA76MzPL6TsZZY36hWXMssSzNyd{tag}",
        "wallet_file_contents": f"[12,34,56,{tag}]",
        "api_token": f"tok-{tag}",
    }
    h = {"authorization": f"Bearer {control_plane.api_token}"}
    url = control_plane.api_url + "/v1/pools"
    created = httpx.post(
        url,
        json={"name": f"sec-{tag}", "provider": "instant", "provider_config": secrets},
        headers=h,
        timeout=60,
        trust_env=False,
    )
    assert created.status_code == 201, created.text
    pool_id = created.json()["id"]
    assert all(created.json()["provider_config"][k] == "***" for k in secrets), created.json()
    bodies = [("create", created.text)]
    for path in ("", f"/{pool_id}", f"/{pool_id}/nodes"):
        r = httpx.get(url + path, headers=h, timeout=30, trust_env=False)
        assert r.status_code == 200
        bodies.append((path, r.text))
    dup = httpx.post(
        url, json={"name": f"sec-{tag}", "provider_config": secrets}, headers=h, timeout=30, trust_env=False
    )
    assert dup.status_code in (409, 422)
    bodies.append(("duplicate", dup.text))
    _key, events = _read_db(control_plane)
    assert control_plane.cfg is not None
    rds = redis.Redis.from_url(control_plane.cfg.redis_url)
    stream = str(rds.xrange("events", count=100_000))
    rds.close()
    node: Any = ray._private.worker._global_node
    session = Path(node.get_session_dir_path())
    logs = [(str(p), p.read_text(errors="replace")) for p in (session / "logs").glob("*") if p.is_file()]
    places = [*bodies, ("events table", events), ("events stream", stream), *logs]
    for what, secret in secrets.items():
        leaks = [where for where, text in places if secret in text]
        assert not leaks, f"the pool's {what} leaks into {leaks}"
    api.delete_pool(pool_id)
