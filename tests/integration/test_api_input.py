"""Bad input and wrong credentials get the documented 4xx, never a 500, and nothing is written."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from controller.boot import ControlPlane


@pytest.fixture()
def http(control_plane: ControlPlane) -> httpx.Client:
    return httpx.Client(
        base_url=control_plane.api_url,
        headers={"authorization": f"Bearer {control_plane.api_token}"},
        timeout=30,
        trust_env=False,
    )


def _err(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) >= {"code", "message"}, body
    if field is not None:
        assert body.get("field") == field, body
    return body


def test_admin_auth(control_plane: ControlPlane) -> None:
    url = control_plane.api_url + "/v1/pools"
    _err(httpx.get(url, trust_env=False), 401)
    _err(httpx.get(url, headers={"authorization": "Bearer wrong"}, trust_env=False), 403)
    _err(httpx.post(url, json={"name": "x"}, headers={"authorization": "Basic abc"}, trust_env=False), 401)


def test_pool_validation_writes_nothing(http: httpx.Client) -> None:
    before = len(http.get("/v1/pools").json())
    _err(http.post("/v1/pools", content=b"{not json", headers={"content-type": "application/json"}), 422, "body")
    _err(http.post("/v1/pools", json={"name": "Bad Name"}), 422, "name")
    _err(http.post("/v1/pools", json={}), 422, "name")
    _err(http.post("/v1/pools", json={"name": "p", "min_nodes": 5, "max_nodes": 1}), 422)
    _err(http.post("/v1/pools", json={"name": "p", "max_nodes": -1}), 422, "max_nodes")
    _err(http.post("/v1/pools", json={"name": "p", "provider": "nope"}), 422, "provider")
    _err(http.post("/v1/pools", json={"name": "p", "provider_config": {"port_range": "x"}}), 422, "provider_config")
    _err(http.post("/v1/pools", json={"name": "p", "unknown_field": 1}), 422, "unknown_field")
    assert len(http.get("/v1/pools").json()) == before

    name = f"dup-{uuid.uuid4().hex[:6]}"
    assert http.post("/v1/pools", json={"name": name}).status_code == 201
    _err(http.post("/v1/pools", json={"name": name}), 409, "name")
    assert len(http.get("/v1/pools").json()) == before + 1
    _err(http.get("/v1/pools/does-not-exist"), 404)
    _err(http.post("/v1/pools/does-not-exist/scale", json={"target_nodes": 1}), 404)
    _err(http.post(f"/v1/pools/{name}/scale", json={"target_nodes": 10_000}), 422, "target_nodes")
    _err(http.post(f"/v1/pools/{name}/scale", json={}), 422, "target_nodes")


def test_model_and_deployment_validation(http: httpx.Client) -> None:
    _err(http.post("/v1/model-registry", json={"name": "m", "engine": "tgi", "source": "x"}), 422, "engine")
    _err(http.post("/v1/model-registry", json={"name": "m", "engine": "llamacpp"}), 422)
    _err(
        http.post("/v1/model-registry", json={"name": "m", "engine": "vllm", "source": "a", "port": 70000}), 422, "port"
    )
    _err(http.post("/v1/model-registry", json={"name": "m", "engine": "custom", "args": "notalist"}), 422, "args")
    name = f"m-{uuid.uuid4().hex[:6]}"
    assert http.post("/v1/model-registry", json={"name": name, "engine": "vllm", "source": "a/b"}).status_code == 201
    _err(http.post("/v1/model-registry", json={"name": name, "engine": "vllm", "source": "a/b"}), 409, "name")
    _err(http.get("/v1/model-registry/nope"), 404)
    _err(http.delete("/v1/model-registry/nope"), 404)

    deps_before = len(http.get("/v1/deployments").json())
    _err(http.post("/v1/deployments", json={"model": "nope", "pool": "nope"}), 404, "model")
    _err(http.post("/v1/deployments", json={"model": name, "pool": "nope"}), 404, "pool")
    _err(http.post("/v1/deployments", json={"model": name, "pool": "x", "replicas": -1}), 422, "replicas")
    _err(http.post("/v1/deployments", json={"model": name}), 422, "pool")
    assert len(http.get("/v1/deployments").json()) == deps_before
    _err(http.get("/v1/deployments/dep-nope"), 404)
    _err(http.patch("/v1/deployments/dep-nope", json={"replicas": 1}), 404)
    _err(http.post("/v1/deployments/dep-nope/stop"), 404)
    _err(http.delete("/v1/deployments/dep-nope"), 404)
    _err(http.get("/v1/nodes/node-nope"), 404)
    _err(http.post("/v1/nodes/node-nope/drain"), 404)
    _err(http.get("/v1/providers/nope/resources"), 404)


def test_heartbeat_and_proxy_input(http: httpx.Client) -> None:
    _err(http.post("/inventory/heartbeat", content=b"[1,", headers={"content-type": "application/json"}), 422, "body")
    _err(http.post("/inventory/heartbeat", json={"state": "ready"}), 422)
    _err(http.post("/inventory/heartbeat", json={"node_id": "n", "health_score": 101}), 422, "health_score")
    _err(http.post("/inventory/heartbeat", json={"heartbeats": "x"}), 422, "heartbeats")
    _err(
        http.post("/inventory/heartbeat", json={"heartbeats": [{"node_id": "n", "state": "bad"}]}),
        422,
        "heartbeats.0.state",
    )
    noauth = httpx.post(str(http.base_url).rstrip("/") + "/inventory/heartbeat", json={"node_id": "n"}, trust_env=False)
    _err(noauth, 401)
    _err(http.post("/inventory/heartbeat", json={"node_id": "node-unknown"}), 404)
    # the OpenAI routes answer in OpenAI's shape (serve_app/openai_errors.py)
    _openai_err(http.post("/v1/chat/completions", json={"messages": []}), 400, "invalid_request", "model")
    r = http.post("/v1/chat/completions", json={"model": "not-deployed", "messages": []})
    _openai_err(r, 404, "model_not_found", "model")
    r = http.post("/v1/chat/completions", content=b"nope", headers={"content-type": "application/json"})
    _openai_err(r, 400, "invalid_request", "body")


def _openai_err(r: httpx.Response, status: int, code: str, param: str | None) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and (err["code"], err["param"]) == (code, param), err


def test_no_500_on_garbage(http: httpx.Client) -> None:
    bodies: list[Any] = [None, [], "x", 1, {"name": None}, {"name": 5}, {"replicas": "x"}, {"a": {"b": []}}]
    paths = ["/v1/pools", "/v1/model-registry", "/v1/deployments", "/inventory/heartbeat", "/v1/chat/completions"]
    for p in paths:
        for b in bodies:
            r = http.post(p, json=b)
            assert 400 <= r.status_code < 500, (p, b, r.status_code, r.text)


def test_absurd_numbers_name_the_field(http: httpx.Client) -> None:
    """Numbers no column or JSON answer can hold (1e400 decodes to inf, 2**40 overflows an INTEGER column)
    are 422 naming the field, never a 500 or a dropped connection, and nothing is written."""
    pools = len(http.get("/v1/pools").json())
    models = len(http.get("/v1/model-registry").json())

    def raw(path: str, text: str) -> httpx.Response:
        return http.post(path, content=text.encode(), headers={"content-type": "application/json"})

    tag = uuid.uuid4().hex[:6]
    _err(raw("/v1/pools", f'{{"name": "inf-{tag}", "max_cost_per_hour": 1e400}}'), 422, "max_cost_per_hour")
    _err(raw("/v1/pools", f'{{"name": "nan-{tag}", "max_cost_per_hour": NaN}}'), 422, "max_cost_per_hour")
    _err(raw("/v1/pools", f'{{"name": "cfg-{tag}", "provider_config": {{"x": 1e400}}}}'), 422, "provider_config")
    _err(raw("/v1/pools", f'{{"name": "cfg-{tag}", "provider_config": {{"a": [-Infinity]}}}}'), 422, "provider_config")
    _err(raw("/v1/pools", f'{{"name": "big-{tag}", "max_nodes": 1e400}}'), 422, "max_nodes")
    _err(http.post("/v1/pools", json={"name": f"big-{tag}", "max_nodes": 10**30}), 422, "max_nodes")
    model = {"name": f"m-{tag}", "engine": "custom", "args": ["x"]}
    _err(http.post("/v1/model-registry", json=model | {"gpu_memory_mb": 2**40}), 422, "gpu_memory_mb")
    _err(http.post("/v1/model-registry", json=model | {"gpus": 10**20}), 422, "gpus")
    _err(http.post("/v1/model-registry", json=model | {"port": -1}), 422, "port")
    _err(http.post("/v1/deployments", json={"model": "m", "pool": "p", "replicas": 10**30}), 422, "replicas")
    _err(raw("/v1/pools/x/scale", '{"target_nodes": 1e400}'), 422, "target_nodes")
    _err(http.get("/v1/nodes/x/logs", params={"tail": 10**12}), 422, "tail")
    _err(http.get("/v1/routing-table", params={"version": 1, "wait": 1, "timeout": 1e300}), 422, "timeout")
    for field in ("cpu_percent", "ram_used_mb", "gpu_util", "gpu_mem_used_mb", "health_score"):
        _err(raw("/inventory/heartbeat", f'{{"node_id": "n", "{field}": 1e400}}'), 422, field)
    _err(
        raw("/inventory/heartbeat", '{"heartbeats": [{"node_id": "n"}, {"node_id": "n", "cpu_percent": 1e999}]}'),
        422,
        "heartbeats.1.cpu_percent",
    )
    assert len(http.get("/v1/pools").json()) == pools
    assert len(http.get("/v1/model-registry").json()) == models


def test_heartbeat_answers_alike_on_both_ports(control_plane: ControlPlane) -> None:
    """The data port answers heartbeats at the ASGI level (serve_app/heartbeat_fast.py), Serve's port through
    the FastAPI route: the same statuses and bodies for accepted, refused and malformed beats, against the
    real inventory."""
    import ray

    from actors.records import hash_secret
    from actors.runtime import INVENTORY, get_actor

    tag = uuid.uuid4().hex[:6]
    node, gone = f"node-hb-{tag}", f"node-hbgone-{tag}"
    infos = [
        {"id": n, "pool_id": f"pool-hb-{tag}", "provider": "bench", "state": "ready", "token_hash": hash_secret(n)}
        for n in (node, gone)
    ]
    inv = get_actor(INVENTORY)
    ray.get(inv.register_many.remote(infos))
    ray.get(inv.transition.remote(gone, "terminated", "test"))
    own = {"authorization": f"Bearer {node}", "content-type": "application/json"}
    cases: list[tuple[bytes, dict[str, str]]] = [
        (b'{"node_id": "%s", "state": "ready", "cpu_percent": 5, "seq": 1, "start_id": "s1"}' % node.encode(), own),
        (b'{"node_id": "%s", "health_score": 50.0}' % node.encode(), own),  # coerced by pydantic on both
        (b'{"node_id": "%s"}' % node.encode(), {"authorization": f"Bearer {gone}"}),  # 403
        (b'{"node_id": "%s"}' % gone.encode(), {"authorization": f"Bearer {gone}"}),  # 410
        (b'{"node_id": "node-nope"}', own),  # 404
        (b'{"node_id": "%s"}' % node.encode(), {}),  # 401
        (b'{"node_id": "n", "health_score": 101}', own),
        (b'{"node_id": "n", "cpu_percent": 1e400}', own),
        (b'{"node_id": "n", "endpoint": "ftp://x"}', own),
        (b'{"state": "ready"}', own),
        (b"[1,", own),
        (b'{"heartbeats": [{"node_id": "%s", "token": "%s"}, {"node_id": "x"}]}' % (node.encode(), node.encode()), {}),
        (b'{"heartbeats": [{"node_id": "n"}, {"node_id": "n", "seq": -1}]}', {}),
    ]
    for body, headers in cases:
        answers = []
        for base in (control_plane.api_url, control_plane.data_url):
            r = httpx.post(base + "/inventory/heartbeat", content=body, headers=headers, trust_env=False, timeout=30)
            answers.append((r.status_code, r.json()))
        assert answers[0] == answers[1], (body, answers)
    statuses = [
        httpx.post(control_plane.data_url + "/inventory/heartbeat", content=b, headers=h, trust_env=False).status_code
        for b, h in cases[:7]
    ]
    assert statuses == [200, 200, 403, 410, 404, 401, 422]
    ray.get(inv.transition.remote(node, "terminated", "test done"))  # no stray node for the session's other tests
