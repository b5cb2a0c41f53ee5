"""controller.client against httpx.MockTransport: requests sent, answers decoded, errors mapped."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    DeploymentFailed,
    InferiaError,
    InvalidRequest,
    NotFound,
    ServerError,
    Unauthorized,
    WaitTimeout,
)
from controller.config import load_settings

TOKEN = "it_" + secrets.token_urlsafe(24)  # made per run: no literal secret in the tree
BASE = "http://cp.test:8000"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """Records every request; answers with `handler` (default: 200 {"ok": true})."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler or (lambda req: httpx.Response(200, json={"ok": True}))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def body(self, i: int = -1) -> Any:
        content = self.requests[i].content
        return json.loads(content) if content else None


def make(handler: Handler | None = None, token: str | None = TOKEN) -> tuple[Client, Recorder]:
    rec = Recorder(handler)
    return Client(BASE, token=token, transport=httpx.MockTransport(rec)), rec


# ---------------------------------------------------------------- requests
CASES: list[tuple[str, Callable[[Client], Any], str, str, dict[str, str], Any]] = [
    ("health", lambda c: c.health(), "GET", "/healthz", {}, None),
    (
        "create_pool",
        lambda c: c.create_pool("gpu", provider="local", max_nodes=4, region=None, provider_config={"a": 1}),
        "POST",
        "/v1/pools",
        {},
        {"name": "gpu", "provider": "local", "max_nodes": 4, "provider_config": {"a": 1}},
    ),
    ("list_pools", lambda c: c.list_pools(), "GET", "/v1/pools", {}, None),
    ("get_pool", lambda c: c.get_pool("gpu"), "GET", "/v1/pools/gpu", {}, None),
    ("delete_pool", lambda c: c.delete_pool("gpu"), "DELETE", "/v1/pools/gpu", {}, None),
    ("scale_pool", lambda c: c.scale_pool("gpu", 3), "POST", "/v1/pools/gpu/scale", {}, {"target_nodes": 3}),
    ("pool_nodes", lambda c: c.pool_nodes("gpu"), "GET", "/v1/pools/gpu/nodes", {}, None),
    ("pool_nodes_all", lambda c: c.pool_nodes("gpu", True), "GET", "/v1/pools/gpu/nodes", {"all": "true"}, None),
    (
        "update_pool",
        lambda c: c.update_pool("gpu", max_nodes=8, max_cost_per_hour=None),
        "PATCH",
        "/v1/pools/gpu",
        {},
        {"max_nodes": 8, "max_cost_per_hour": None},  # None is sent: it removes the cost limit
    ),
    ("list_nodes", lambda c: c.list_nodes(), "GET", "/v1/nodes", {"limit": "100", "offset": "0"}, None),
    (
        "list_nodes_filtered",
        lambda c: c.list_nodes(state="ready,unhealthy", pool="gpu", q="10.0", limit=50, offset=100),
        "GET",
        "/v1/nodes",
        {"state": "ready,unhealthy", "pool": "gpu", "q": "10.0", "limit": "50", "offset": "100"},
        None,
    ),
    (
        "events",
        lambda c: c.events(limit=20, before=99, kind="node."),
        "GET",
        "/v1/events",
        {"limit": "20", "before": "99", "kind": "node."},
        None,
    ),
    ("get_node", lambda c: c.get_node("node-1"), "GET", "/v1/nodes/node-1", {}, None),
    ("drain_node", lambda c: c.drain_node("node-1"), "POST", "/v1/nodes/node-1/drain", {}, None),
    ("delete_node", lambda c: c.delete_node("node-1"), "DELETE", "/v1/nodes/node-1", {}, None),
    ("node_logs", lambda c: c.node_logs("node-1", tail=7), "GET", "/v1/nodes/node-1/logs", {"tail": "7"}, None),
    ("providers", lambda c: c.providers(), "GET", "/v1/providers", {}, None),
    (
        "provider_resources",
        lambda c: c.provider_resources("local"),
        "GET",
        "/v1/providers/local/resources",
        {},
        None,
    ),
    (
        "register_model",
        lambda c: c.register_model("tiny", "llamacpp", source="/m/tiny.gguf", args=["-c", "512"], port=None),
        "POST",
        "/v1/model-registry",
        {},
        {"name": "tiny", "engine": "llamacpp", "source": "/m/tiny.gguf", "args": ["-c", "512"]},
    ),
    ("list_models", lambda c: c.list_models(), "GET", "/v1/model-registry", {}, None),
    ("get_model", lambda c: c.get_model("tiny"), "GET", "/v1/model-registry/tiny", {}, None),
    ("delete_model", lambda c: c.delete_model("tiny"), "DELETE", "/v1/model-registry/tiny", {}, None),
    (
        "deploy",
        lambda c: c.deploy("tiny", "gpu", replicas=2),
        "POST",
        "/v1/deployments",
        {},
        {"model": "tiny", "pool": "gpu", "replicas": 2},
    ),
    ("list_deployments", lambda c: c.list_deployments(), "GET", "/v1/deployments", {}, None),
    ("get_deployment", lambda c: c.get_deployment("dep-1"), "GET", "/v1/deployments/dep-1", {}, None),
    (
        "scale_deployment",
        lambda c: c.scale_deployment("dep-1", 3),
        "PATCH",
        "/v1/deployments/dep-1",
        {},
        {"replicas": 3},
    ),
    ("stop_deployment", lambda c: c.stop_deployment("dep-1"), "POST", "/v1/deployments/dep-1/stop", {}, None),
    ("start_deployment", lambda c: c.start_deployment("dep-1"), "POST", "/v1/deployments/dep-1/start", {}, None),
    ("delete_deployment", lambda c: c.delete_deployment("dep-1"), "DELETE", "/v1/deployments/dep-1", {}, None),
    (
        "deployment_logs",
        lambda c: c.deployment_logs("dep-1", 5),
        "GET",
        "/v1/deployments/dep-1/logs",
        {"tail": "5"},
        None,
    ),
]


@pytest.mark.parametrize(("name", "call", "method", "path", "params", "body"), CASES, ids=[c[0] for c in CASES])
def test_requests(
    name: str, call: Callable[[Client], Any], method: str, path: str, params: dict[str, str], body: Any
) -> None:
    c, rec = make()
    assert call(c) == {"ok": True}
    req = rec.last
    assert req.method == method
    assert req.url.host == "cp.test" and req.url.port == 8000
    assert req.url.path == path
    assert dict(req.url.params) == params
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert rec.body() == body
    if body is not None:
        assert req.headers["content-type"] == "application/json"


def test_path_segments_are_quoted() -> None:
    c, rec = make()
    c.get_pool("a/b c")
    assert rec.last.url.raw_path == b"/v1/pools/a%2Fb%20c"


def test_no_token_sends_no_authorization() -> None:
    c, rec = make(token=None)
    c.list_pools()
    assert "authorization" not in rec.last.headers


def test_chat_key_overrides_bearer() -> None:
    c, rec = make()
    c.chat("tiny", [{"role": "user", "content": "hi"}], key="ik_key", max_tokens=8)
    assert rec.last.url.path == "/v1/chat/completions"
    assert rec.last.headers["authorization"] == "Bearer ik_key"
    assert rec.body() == {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    c.chat("tiny", [])
    assert rec.last.headers["authorization"] == f"Bearer {TOKEN}"
    with pytest.raises(ValueError):
        c.chat("tiny", [], stream=True)


def test_heartbeat_uses_node_token() -> None:
    c, rec = make()
    c.heartbeat("nt_node", node_id="node-1", state="ready", endpoint=None, health_score=90)
    assert rec.last.method == "POST" and rec.last.url.path == "/inventory/heartbeat"
    assert rec.last.headers["authorization"] == "Bearer nt_node"
    assert rec.body() == {"node_id": "node-1", "state": "ready", "health_score": 90}


# ---------------------------------------------------------------- routing table
TABLE_V3 = {"version": 3, "models": {"tiny": [{"node_id": "node-1", "endpoint": "http://n1:9000"}]}}
TABLE_V4 = {"version": 4, "models": {}}


def test_routing_table_plain_and_etag() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.headers.get("if-none-match") == '"3"':
            return httpx.Response(304, headers={"etag": '"3"'})
        return httpx.Response(200, json=TABLE_V3, headers={"etag": '"3"'})

    c, rec = make(handler)
    assert c.routing_table() == TABLE_V3
    assert "if-none-match" not in rec.last.headers
    assert dict(rec.last.url.params) == {}
    assert c.routing_table(version=3) is None
    assert rec.last.headers["if-none-match"] == '"3"'
    assert c.routing_table(version=2) == TABLE_V3


def test_routing_table_wait_long_polls_with_longer_timeout() -> None:
    c, rec = make(lambda req: httpx.Response(200, json=TABLE_V4))
    assert c.routing_table(version=3, wait=True, timeout=45) == TABLE_V4
    assert dict(rec.last.url.params) == {"wait": "1", "timeout": "45"}
    assert rec.last.headers["if-none-match"] == '"3"'
    timeouts = rec.last.extensions["timeout"]
    assert timeouts["read"] >= 55


def test_watch_routes_yields_each_new_version() -> None:
    answers = [
        httpx.Response(200, json=TABLE_V3),
        httpx.Response(304),
        httpx.Response(200, json=TABLE_V4),
    ]
    c, rec = make(lambda req: answers.pop(0))
    gen = c.watch_routes(timeout=0.01)
    assert next(gen) == TABLE_V3
    assert next(gen) == TABLE_V4
    assert [r.headers.get("if-none-match") for r in rec.requests] == [None, '"3"', '"3"']
    assert [r.url.params.get("wait") for r in rec.requests] == [None, "1", "1"]


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("status", "cls"),
    [(404, NotFound), (409, Conflict), (401, Unauthorized), (403, Unauthorized), (422, InvalidRequest),
     (500, ServerError), (503, ServerError), (410, InferiaError)],
)  # fmt: skip
def test_error_mapping(status: int, cls: type[InferiaError]) -> None:
    c, _ = make(lambda req: httpx.Response(status, json={"code": "some_code", "message": "it went wrong"}))
    with pytest.raises(cls) as info:
        c.list_pools()
    assert type(info.value) is cls
    assert info.value.status == status and info.value.code == "some_code"
    assert info.value.message == "it went wrong" and str(info.value) == "it went wrong"


def test_not_found_carries_code_and_field() -> None:
    body = {"code": "model_not_found", "message": "model 'x' is not in the registry", "field": "model"}
    c, _ = make(lambda req: httpx.Response(404, json=body))
    with pytest.raises(NotFound) as info:
        c.deploy("x", "gpu")
    err = info.value
    assert (err.status, err.code, err.message, err.field) == (404, "model_not_found", body["message"], "model")
    assert isinstance(err, InferiaError)


def test_openai_shaped_error_of_the_inference_routes() -> None:
    body = {"error": {"message": "the model 'x' does not exist", "type": "invalid_request_error", "param": "model",
                      "code": "model_not_found"}}  # fmt: skip
    c, _ = make(lambda req: httpx.Response(404, json=body))
    with pytest.raises(NotFound) as info:
        c.chat("x", [], key="ik_key")
    err = info.value
    assert (err.status, err.code, err.message, err.field) == (404, "model_not_found", body["error"]["message"], "model")


def test_non_json_error() -> None:
    c, _ = make(lambda req: httpx.Response(502, text="Bad gateway"))
    with pytest.raises(ServerError) as info:
        c.list_pools()
    assert info.value.code == "http_502" and info.value.message == "Bad gateway"


def test_connection_failed_on_transport_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    c, _ = make(handler)
    with pytest.raises(ConnectionFailed) as info:
        c.health()
    msg = str(info.value)
    assert BASE in msg and "not reachable" in msg and "inferia-orch up" in msg
    assert info.value.status is None and TOKEN not in msg


def test_read_timeout_is_connection_failed() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=req)

    c, _ = make(handler)
    with pytest.raises(ConnectionFailed, match="did not answer"):
        c.list_pools()


def test_token_never_in_repr_or_messages() -> None:
    def echo(req: httpx.Request) -> httpx.Response:  # a server that echoes the bearer back
        return httpx.Response(403, json={"code": "forbidden", "message": f"bad {req.headers['authorization']}"})

    c, _ = make(echo)
    assert TOKEN not in repr(c) and TOKEN not in str(c)
    assert "***" in repr(c) and BASE in repr(c)
    with pytest.raises(Unauthorized) as info:
        c.list_pools()
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    assert info.value.message == "bad Bearer ***"
    with pytest.raises(Unauthorized) as info2:
        c.chat("m", [], key="ik_other_key")
    assert "ik_other_key" not in repr(info2.value)
    assert repr(Client(BASE)).endswith("token=None)")


# ---------------------------------------------------------------- wait_deployment
def _dep(state: str, ready: int = 0, error: str | None = None) -> dict[str, Any]:
    return {"id": "dep-1", "state": state, "ready_replicas": ready, "desired_replicas": 1, "error": error}


def test_wait_deployment_until_running() -> None:
    states = [_dep("pending"), _dep("deploying"), _dep("running", 1)]
    c, rec = make(lambda req: httpx.Response(200, json=states.pop(0)))
    seen: list[str] = []
    dep = c.wait_deployment("dep-1", poll=0, on_update=lambda d: seen.append(d["state"]))
    assert dep["state"] == "running"
    assert seen == ["pending", "deploying", "running"]
    assert all(r.url.path == "/v1/deployments/dep-1" for r in rec.requests)


def test_wait_deployment_raises_on_failed() -> None:
    c, _ = make(lambda req: httpx.Response(200, json=_dep("failed", error="engine crashed")))
    with pytest.raises(DeploymentFailed, match="engine crashed") as info:
        c.wait_deployment("dep-1", poll=0)
    assert info.value.deployment["state"] == "failed"
    assert c.wait_deployment("dep-1", states=("failed",), poll=0)["state"] == "failed"


def test_wait_deployment_timeout() -> None:
    c, _ = make(lambda req: httpx.Response(200, json=_dep("deploying")))
    with pytest.raises(WaitTimeout, match="deploying"):
        c.wait_deployment("dep-1", timeout=0.05, poll=0.01)


# ---------------------------------------------------------------- settings
def test_from_settings_token_env(tmp_path: Path) -> None:
    s = load_settings(INFERIA_API_HOST="0.0.0.0", INFERIA_API_PORT=9001, INFERIA_API_TOKEN="envtok", data_dir=tmp_path)
    c = Client.from_settings(s)
    assert c.base_url == "http://127.0.0.1:9001"
    assert c._token == "envtok"


def test_from_settings_token_file(tmp_path: Path) -> None:
    s = load_settings(INFERIA_API_HOST="10.0.0.5", INFERIA_API_PORT=8000, INFERIA_API_TOKEN=None, data_dir=tmp_path)
    assert Client.from_settings(s)._token is None
    (tmp_path / "api_token").write_text("filetok\n")
    c = Client.from_settings(s)
    assert c.base_url == "http://10.0.0.5:8000" and c._token == "filetok"


# ---------------------------------------------------------------- async
async def test_async_client() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/routing-table":
            return httpx.Response(304) if req.headers.get("if-none-match") else httpx.Response(200, json=TABLE_V3)
        if req.url.path == "/v1/deployments/dep-1":
            return httpx.Response(200, json=_dep("running", 1))
        return httpx.Response(404, json={"code": "pool_not_found", "message": "pool 'x' not found"})

    async with AsyncClient(BASE, token=TOKEN, transport=httpx.MockTransport(handler)) as c:
        assert await c.routing_table() == TABLE_V3
        assert await c.routing_table(version=3) is None
        assert (await c.wait_deployment("dep-1", poll=0))["state"] == "running"
        with pytest.raises(NotFound):
            await c.get_pool("x")
        assert TOKEN not in repr(c)
