"""Credentials and hostile input, beyond tests/integration/test_api_input.py and test_health.py:

- every admin operation of the OpenAPI description answers 401 without a token and 403 with a wrong one,
  on both ports, and writes nothing;
- a heartbeat for node X signed with node Y's token is refused (403) and changes nothing about X (state,
  reason, routing); a terminated node cannot be revived by any kind of heartbeat;
- an oversized body is refused with 413 in the JSON error shape (both ports, Content-Length or chunked),
  while batches of 1,000 and 10,000 heartbeats still pass.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from actors.pool_core import node_token
from controller.boot import ControlPlane
from controller.client import Client
from serve_app.app import MAX_BODY_BYTES
from tests.support import controlplane as cpl

# the routes that take another credential (or none): everything else under /v1 is admin-only
NOT_ADMIN = {"/v1/chat/completions", "/v1/completions", "/v1/models"}


def _token_key(cp: ControlPlane) -> str:
    assert cp.cfg is not None
    dsn = cp.cfg.dsn

    async def read() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SELECT value FROM cluster_secrets WHERE name = 'node_token_key'"))
        finally:
            await conn.close()

    return asyncio.run(read())


@pytest.fixture()
def raw(control_plane: ControlPlane) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60, trust_env=False) as c:
        yield c


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body, dict) and {"code", "message"} <= set(body), body
    return body


def test_every_admin_operation_needs_the_admin_token(
    control_plane: ControlPlane, api: Client, raw: httpx.Client
) -> None:
    spec = raw.get(control_plane.data_url + "/openapi.json").json()
    ops = [
        (method.upper(), path)
        for path, methods in spec["paths"].items()
        if path.startswith("/v1/") and path not in NOT_ADMIN
        for method in methods
    ]
    assert len(ops) >= 20, ops
    pools_before = len(api.list_pools())
    for base in (control_plane.api_url, control_plane.data_url):
        for method, path in ops:
            url = base + re.sub(r"{\w+}", "x", path)
            kw: dict[str, Any] = {"json": {"name": "evil", "replicas": 1}} if method in ("POST", "PATCH") else {}
            r = raw.request(method, url, **kw)
            assert _error(r, 401)["code"] == "unauthorized", (method, path)
            r = raw.request(method, url, headers={"authorization": "Bearer wrong"}, **kw)
            assert _error(r, 403)["code"] == "forbidden", (method, path)
            if base != control_plane.data_url:
                continue
            for bad in (f"Bearer {control_plane.api_token}x", "Bearer", f"Basic {control_plane.api_token}"):
                r = raw.request(method, url, headers={"authorization": bad}, **kw)
                assert r.status_code in (401, 403), (method, path, bad, r.status_code)
                _error(r, r.status_code)
    assert len(api.list_pools()) == pools_before


def test_forged_heartbeats_change_nothing(control_plane: ControlPlane, api: Client, raw: httpx.Client) -> None:
    """Instant nodes are kept ready by their pool's provider-reported health; a forger holding node b's
    token tries to fail node a, take it out of the routing table and move its endpoint."""
    tag = uuid.uuid4().hex[:6]
    model = f"sec-{tag}"
    api.register_model(**cpl.fake_model(model))
    pool = api.create_pool(model, provider="instant", max_nodes=4)
    dep_id = api.deploy(model, pool["name"], replicas=2)["id"]
    api.wait_deployment(dep_id, timeout=60)
    a, b = sorted(r["id"] for r in api.get_deployment(dep_id)["replicas"])
    key = _token_key(control_plane)
    url = control_plane.data_url + "/inventory/heartbeat"
    before = api.get_node(a)
    table = cpl.wait_for(lambda: (t := api.routing_table()) and len(t["models"].get(model, [])) == 2 and t, 20)

    forged = {"node_id": a, "state": "failed", "reason": "forged", "endpoint": "http://203.0.113.9:1/"}
    r = raw.post(url, json=forged, headers={"authorization": f"Bearer {node_token(key, b)}"})
    assert _error(r, 403)["code"] == "forbidden"
    # the same forgery in a batch, with the token per item, for each state; and with the admin token
    items = [dict(forged, state=s, token=node_token(key, b)) for s in ("failed", "starting", "ready")]
    r = raw.post(url, json={"heartbeats": items})
    assert r.status_code == 200 and [x["status"] for x in r.json()["results"]] == [403, 403, 403], r.text
    r = raw.post(url, json=forged, headers={"authorization": f"Bearer {control_plane.api_token}"})
    _error(r, 403)
    # by provider identity instead of node id
    by_instance = {"provider": "instant", "provider_instance_id": f"i-{a}", "state": "failed"}
    r = raw.post(url, json=by_instance, headers={"authorization": f"Bearer {node_token(key, b)}"})
    _error(r, 403)

    time.sleep(1.0)  # past an inventory flush: nothing about node a moved
    after = api.get_node(a)
    for field in ("state", "state_reason", "endpoint"):
        assert after[field] == before[field], (field, before[field], after[field])
    assert after["state"] == "ready"
    entry = {e["node_id"]: e for e in api.routing_table()["models"][model]}
    assert set(entry) == {a, b} and entry[a]["endpoint"] == before["endpoint"], entry
    assert {n: e["endpoint"] for n, e in entry.items()} == {e["node_id"]: e["endpoint"] for e in table["models"][model]}

    # a terminated node stays terminated whatever it sends, however it names itself
    api.delete_node(a)
    cpl.wait_for(lambda: api.get_node(a)["state"] == "terminated", 30, what="a terminated")
    own = {"authorization": f"Bearer {node_token(key, a)}"}
    for body in ({"node_id": a, "state": "ready"}, {"provider": "instant", "provider_instance_id": f"i-{a}"}):
        _error(raw.post(url, json=body, headers=own), 410)
    r = raw.post(url, json={"heartbeats": [{"node_id": a, "token": node_token(key, a), "state": "ready"}]})
    assert [x["status"] for x in r.json()["results"]] == [410], r.text
    time.sleep(1.0)
    assert api.get_node(a)["state"] == "terminated"
    assert a not in {e["node_id"] for e in api.routing_table()["models"].get(model, [])}
    api.delete_deployment(dep_id)
    cpl.wait_for(lambda: not any(d["id"] == dep_id for d in api.list_deployments()), 60, what="deleted")
    api.delete_pool(pool["id"])


def test_oversized_bodies_refused_but_big_batches_pass(control_plane: ControlPlane, raw: httpx.Client) -> None:
    admin = {"authorization": f"Bearer {control_plane.api_token}", "content-type": "application/json"}
    too_big = b'{"node_id": "n", "reason": "' + b"a" * MAX_BODY_BYTES + b'"}'

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(too_big), 1 << 20):
            yield too_big[i : i + (1 << 20)]

    for base in (control_plane.data_url, control_plane.api_url):
        for path in ("/inventory/heartbeat", "/v1/pools"):
            body = _error(raw.post(base + path, content=too_big, headers=admin), 413)
            assert body["code"] == "payload_too_large" and body["field"] == "body", body
            body = _error(raw.post(base + path, content=chunks(), headers=admin), 413)  # no Content-Length
            assert body["code"] == "payload_too_large", body
        for path in ("/v1/chat/completions", "/v1/completions"):  # the OpenAI routes answer in OpenAI's shape
            for content in (too_big, chunks()):
                r = raw.post(base + path, content=content, headers=admin)
                assert r.status_code == 413, (base, path, r.status_code, r.text[:200])
                err = r.json()["error"]
                assert err["code"] == "payload_too_large" and err["param"] == "body", err

    # batches up to the batch limit are far below the body limit: 1,000 and 10,000 realistic beats
    beat = {
        "node_id": "node-000000000000",
        "token": "nt_" + "0" * 64,
        "state": "ready",
        "health_score": 100,
        "endpoint": "http://10.0.0.1:8000",
        "cpu_percent": 12.5,
        "ram_used_mb": 2048,
    }
    for n in (1_000, 10_000):
        items = [dict(beat, node_id=f"node-{i:012x}") for i in range(n)]
        r = raw.post(control_plane.data_url + "/inventory/heartbeat", json={"heartbeats": items})
        assert r.status_code == 200, (n, r.status_code, r.text[:200])
        assert len(r.json()["results"]) == n and {x["status"] for x in r.json()["results"]} == {404}
        assert len(r.request.content) < MAX_BODY_BYTES
    # the API still answers normally afterwards
    assert raw.get(control_plane.data_url + "/healthz").status_code == 200
