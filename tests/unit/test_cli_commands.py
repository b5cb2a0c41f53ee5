"""The admin commands over a fake API (httpx.MockTransport), run with typer's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from controller import cli_commands
from controller.client import Client

TOKEN = "it_cli-test-token"
Handler = Callable[[httpx.Request], httpx.Response]

POOL = {
    "id": "pool-aaa111",
    "name": "gpu-pool",
    "provider": "local",
    "region": "local",
    "state": "active",
    "min_nodes": 0,
    "target_nodes": 1,
    "max_nodes": 4,
}
NODE = {
    "id": "node-bbb222",
    "pool_id": "pool-aaa111",
    "state": "ready",
    "health_score": 100,
    "endpoint": "http://127.0.0.1:9001",
    "deployment_id": "dep-ccc333",
    "seconds_since_heartbeat": 1.2,
}


def dep(state: str, ready: int = 0, **extra: Any) -> dict[str, Any]:
    d = {
        "id": "dep-ccc333",
        "model": "tiny",
        "pool": "gpu-pool",
        "state": state,
        "desired_replicas": 1,
        "ready_replicas": ready,
        "error": None,
        "replicas": [],
    }
    return d | extra


class FakeApi:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer()

    @a.command()
    def up() -> None:  # the real CLI defines up/down/agent itself
        """Start."""

    cli_commands.register(a)
    return a


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_commands, "POLL_INTERVAL", 0.0)


def fake(monkeypatch: pytest.MonkeyPatch, handler: Handler) -> FakeApi:
    api = FakeApi(handler)

    def from_settings(cls: type[Client], settings: object, **kwargs: Any) -> Client:
        return Client("http://cp.test:8000", token=TOKEN, transport=httpx.MockTransport(api))

    monkeypatch.setattr(Client, "from_settings", classmethod(from_settings))
    return api


def invoke(app: typer.Typer, *args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result


def test_pools_list_renders_table(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    api = fake(monkeypatch, lambda req: httpx.Response(200, json=[POOL]))
    result = invoke(app, "pools", "list")
    assert result.exit_code == 0, result.output
    assert api.calls() == ["GET /v1/pools"]
    assert api.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    out = result.output
    assert "Pools" in out and "gpu-pool" in out and "pool-aaa111" in out and "0/1/4" in out
    assert "┃" in out or "│" in out  # a rich table, not plain lines


def test_pools_create_sends_fields(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    api = fake(monkeypatch, lambda req: httpx.Response(201, json=POOL))
    result = invoke(
        app, "pools", "create", "gpu-pool", "--max-nodes", "4", "--target-nodes", "1",
        "--config", "gpus=2", "--config", "label=a=b",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "created pool gpu-pool" in result.output
    body = json.loads(api.requests[0].content)
    assert body == {
        "name": "gpu-pool",
        "provider": "local",
        "max_nodes": 4,
        "target_nodes": 1,
        "provider_config": {"gpus": 2, "label": "a=b"},
    }


def test_pools_update_sends_only_given_fields(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = POOL | {"max_nodes": 10, "min_nodes": 1, "max_cost_per_hour": None}
    api = fake(monkeypatch, lambda req: httpx.Response(200, json=answer))
    result = invoke(
        app, "pools", "update", "gpu-pool", "--max-nodes", "10", "--min-nodes", "1", "--no-cost-limit",
        "--gpu-type", "A100", "--gpu-type", "H100", "--config", "cleanup_orphans=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert api.calls() == ["PATCH /v1/pools/gpu-pool"]
    assert json.loads(api.requests[0].content) == {
        "max_nodes": 10,
        "min_nodes": 1,
        "max_cost_per_hour": None,
        "allowed_gpu_types": ["A100", "H100"],
        "provider_config": {"cleanup_orphans": False},
    }
    assert "max_nodes=10" in result.output and "max_cost_per_hour=none" in result.output


def test_pools_update_conflict_names_the_field(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"code": "pool_conflict", "message": "max_nodes: the pool runs 3 nodes now", "field": "max_nodes"}
    fake(monkeypatch, lambda req: httpx.Response(409, json=body))
    result = invoke(app, "pools", "update", "gpu-pool", "--max-nodes", "1")
    assert result.exit_code != 0
    assert "max_nodes" in result.output and "3 nodes" in result.output


def test_pools_update_without_options_is_refused(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    api = fake(monkeypatch, lambda req: httpx.Response(200, json=POOL))
    result = invoke(app, "pools", "update", "gpu-pool")
    assert result.exit_code != 0 and "nothing to change" in result.output
    assert api.calls() == []


def test_models_register_args_and_env(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    model = {"id": "model-1", "name": "tiny", "engine": "llamacpp"}
    api = fake(monkeypatch, lambda req: httpx.Response(201, json=model))
    result = invoke(
        app, "models", "register", "tiny", "--engine", "llamacpp", "--source", "/m/tiny.gguf",
        "--arg", "--ctx-size", "--arg", "512", "--env", "A=1", "--gpus", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(api.requests[0].content)
    assert body == {
        "name": "tiny",
        "engine": "llamacpp",
        "source": "/m/tiny.gguf",
        "args": ["--ctx-size", "512"],
        "env": {"A": "1"},
        "gpus": 0,
    }


def test_bad_pair_is_an_error_line(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    api = fake(monkeypatch, lambda req: httpx.Response(201, json={}))
    result = invoke(app, "models", "register", "tiny", "--engine", "custom", "--arg", "x", "--env", "NOEQ")
    assert result.exit_code == 1
    assert "error: env expects KEY=VALUE" in result.output
    assert api.requests == []


def test_deploy_waits_until_running(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    polls = [dep("deploying"), dep("deploying"), dep("running", 1)]

    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "POST" and req.url.path == "/v1/deployments":
            return httpx.Response(202, json=dep("pending") | {"inference_key": "ik_the-key"})
        if req.method == "GET" and req.url.path == "/v1/deployments/dep-ccc333":
            return httpx.Response(200, json=polls.pop(0))
        return httpx.Response(404, json={"code": "not_found", "message": "no"})

    api = fake(monkeypatch, handler)
    result = invoke(app, "deploy", "tiny", "--pool", "gpu-pool", "--replicas", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(api.requests[0].content) == {"model": "tiny", "pool": "gpu-pool", "replicas": 1}
    assert api.calls().count("GET /v1/deployments/dep-ccc333") == 3
    out = result.output
    assert "dep-ccc333" in out
    assert out.count("ik_the-key") == 1 and "keep it" in out
    assert "deploying (0/1 replicas ready)" in out
    assert out.count("deploying (0/1") == 1  # one progress line per change
    assert "running" in out and "1/1 replicas ready" in out


def test_deploy_failure_prints_reason(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = dep("failed", error="engine exited with code 1", replicas=[{"id": "node-x", "state": "failed",
                                                                         "reason": "out of memory"}])  # fmt: skip

    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "POST":
            return httpx.Response(202, json=dep("pending") | {"inference_key": "ik_k"})
        return httpx.Response(200, json=failed)

    fake(monkeypatch, handler)
    result = invoke(app, "deploy", "tiny", "--pool", "gpu-pool")
    assert result.exit_code == 1
    assert "error: deployment dep-ccc333 failed: engine exited with code 1" in result.output
    assert "out of memory" in result.output
    assert "Traceback" not in result.output


def test_deploy_no_wait(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    api = fake(monkeypatch, lambda req: httpx.Response(202, json=dep("pending") | {"inference_key": "ik_k"}))
    result = invoke(app, "deploy", "tiny", "--pool", "gpu-pool", "--no-wait")
    assert result.exit_code == 0, result.output
    assert api.calls() == ["POST /v1/deployments"]


def test_not_found_prints_error_and_exits_1(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"code": "pool_not_found", "message": "pool 'nope' not found"}
    fake(monkeypatch, lambda req: httpx.Response(404, json=body))
    result = invoke(app, "pools", "scale", "nope", "2")
    assert result.exit_code == 1
    assert "error: pool 'nope' not found" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # typer.Exit(1), not the NotFound itself


def test_field_is_printed(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"code": "model_not_found", "message": "no such model", "field": "model"}
    fake(monkeypatch, lambda req: httpx.Response(404, json=body))
    result = invoke(app, "deploy", "nope", "--pool", "gpu-pool")
    assert result.exit_code == 1
    assert "error: no such model (field: model)" in result.output


def test_connection_failure_is_one_line(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    fake(monkeypatch, handler)
    result = invoke(app, "status")
    assert result.exit_code == 1
    assert "error: the control plane is not reachable at http://cp.test:8000" in result.output
    assert "inferia-orch up" in result.output and "Traceback" not in result.output


def test_routes_prints_endpoints(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    table = {
        "version": 7,
        "models": {
            "tiny": [
                {"node_id": "node-bbb222", "endpoint": "http://127.0.0.1:9001", "deployment_id": "dep-ccc333",
                 "health_score": 95},
                {"node_id": "node-ddd444", "endpoint": "http://127.0.0.1:9002", "deployment_id": "dep-ccc333",
                 "health_score": 100},
            ]
        },
    }  # fmt: skip
    api = fake(monkeypatch, lambda req: httpx.Response(200, json=table, headers={"etag": '"7"'}))
    result = invoke(app, "routes")
    assert result.exit_code == 0, result.output
    assert api.calls() == ["GET /v1/routing-table"]
    out = result.output
    assert "v7" in out and "tiny" in out
    for s in ("node-bbb222", "http://127.0.0.1:9001", "node-ddd444", "http://127.0.0.1:9002", "95"):
        assert s in out


def test_routes_watch_prints_each_version(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[httpx.Response] = [
        httpx.Response(200, json={"version": 1, "models": {}}),
        httpx.Response(304),
        httpx.Response(200, json={"version": 2, "models": {"tiny": [{"node_id": "node-1", "endpoint": "http://e"}]}}),
    ]

    def handler(req: httpx.Request) -> httpx.Response:
        if answers:
            return answers.pop(0)
        raise KeyboardInterrupt  # what Ctrl-C does to a waiting long-poll

    api = fake(monkeypatch, handler)
    result = invoke(app, "routes", "--watch", "--timeout", "1")
    assert result.exit_code == 0, result.output
    assert "v1" in result.output and "v2" in result.output and "node-1" in result.output
    assert [r.url.params.get("wait") for r in api.requests] == [None, "1", "1", "1"]


def test_status_shows_pools_nodes_deployments(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        answers: dict[str, Any] = {
            "/healthz": {"status": "ok", "routing_version": 3},
            "/v1/pools": [POOL],
            "/v1/pools/pool-aaa111/nodes": [NODE],
            "/v1/deployments": [dep("running", 1)],
        }
        return httpx.Response(200, json=answers[req.url.path])

    fake(monkeypatch, handler)
    result = invoke(app, "status")
    assert result.exit_code == 0, result.output
    for s in ("Pools", "Nodes", "Deployments", "gpu-pool", "node-bbb222", "dep-ccc333", "1/1", "ok"):
        assert s in result.output


def test_deployments_commands(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    gets = [dep("stopping"), None]

    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "DELETE":
            return httpx.Response(202, json={"id": "dep-ccc333", "state": "stopping", "delete_requested": True})
        if req.method == "GET" and req.url.path == "/v1/deployments/dep-ccc333":
            d = gets.pop(0)
            if d is None:
                return httpx.Response(404, json={"code": "deployment_not_found", "message": "gone"})
            return httpx.Response(200, json=d)
        if req.method == "GET":
            return httpx.Response(200, json=[dep("running", 1)])
        return httpx.Response(202, json=dep("stopping"))

    api = fake(monkeypatch, handler)
    assert invoke(app, "deployments", "list").exit_code == 0
    r = invoke(app, "deployments", "scale", "dep-ccc333", "3")
    assert r.exit_code == 0 and json.loads(api.requests[-1].content) == {"replicas": 3}
    assert api.requests[-1].method == "PATCH"
    assert invoke(app, "deployments", "stop", "dep-ccc333").exit_code == 0
    assert invoke(app, "deployments", "start", "dep-ccc333").exit_code == 0
    r = invoke(app, "deployments", "delete", "dep-ccc333", "--wait")
    assert r.exit_code == 0, r.output
    assert "deleted" in r.output
    assert api.calls()[-4:] == [
        "POST /v1/deployments/dep-ccc333/start",
        "DELETE /v1/deployments/dep-ccc333",
        "GET /v1/deployments/dep-ccc333",
        "GET /v1/deployments/dep-ccc333",
    ]


def test_logs(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    api = fake(monkeypatch, lambda req: httpx.Response(200, json={"node_id": "n", "lines": ["a [b]", "c"]}))
    result = invoke(app, "logs", "node-bbb222", "--tail", "2")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["a [b]", "c"]
    assert dict(api.requests[0].url.params) == {"tail": "2"}
