"""`deployments update / rollback` and the clients' update methods over a fake API (issue 12), and the PATCH
body's validation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import typer
from pydantic import ValidationError

from controller import cli_commands
from controller.client import AsyncClient, Client, UpdateRolledBack
from serve_app.schemas import DeploymentPatch
from tests.unit.test_cli_commands import dep, fake, invoke


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    monkeypatch.setattr(cli_commands, "POLL_INTERVAL", 0.0)
    a = typer.Typer()

    @a.command()
    def up() -> None:  # the real CLI defines up/down/agent itself
        """Start."""

    cli_commands.register(a)
    return a


def rolling(phase: str, current: int, target: int, state: str = "updating", **counts: Any) -> dict[str, Any]:
    roll = {"phase": phase, "updated": 0, "ready": 0, "old": 3, "last_failure": None} | counts
    return dep(state, 3, generation=target, current_generation=current, rollout=roll, desired_replicas=3)


def test_update_shows_progress_and_waits(cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [
        rolling("rolling", 1, 2, updated=1, ready=0, old=3),
        rolling("rolling", 1, 2, updated=2, ready=1, old=2),
        rolling("done", 2, 2, "running", updated=3, ready=3, old=0),
    ]

    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "PATCH":
            return httpx.Response(202, json=rolling("rolling", 1, 2))
        return httpx.Response(200, json=answers.pop(0) if len(answers) > 1 else answers[0])

    api = fake(monkeypatch, handler)
    result = invoke(
        cli, "deployments", "update", "dep-ccc333", "--arg=--ctx-size", "--arg", "4096", "--env", "A=1",
        "--max-surge", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(api.requests[0].content)
    assert body == {"args": ["--ctx-size", "4096"], "env": {"A": "1"}, "strategy": {"max_surge": 2}}
    assert "2 updated, 1 ready, 2 old" in result.output
    assert "updated" in result.output and "generation 2" in result.output


def test_update_no_wait_returns_at_once(cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    api = fake(monkeypatch, lambda req: httpx.Response(202, json=rolling("rolling", 1, 2)))
    result = invoke(cli, "deployments", "update", "dep-ccc333", "--model", "tiny-v2", "--no-wait")
    assert result.exit_code == 0, result.output
    assert api.calls() == ["PATCH /v1/deployments/dep-ccc333"]
    assert json.loads(api.requests[0].content) == {"model": "tiny-v2"}


def test_update_that_rolls_back_exits_1(cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    back = rolling("done", 1, 1, "running", last_failure="2 new replicas failed")

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(
            202 if req.method == "PATCH" else 200, json=rolling("rolling", 1, 2) if req.method == "PATCH" else back
        )

    fake(monkeypatch, handler)
    result = invoke(cli, "deployments", "update", "dep-ccc333", "--image", "img:2")
    assert result.exit_code == 1
    assert "rolled back" in result.output and "2 new replicas failed" in result.output


def test_update_needs_a_change(cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    api = fake(monkeypatch, lambda req: httpx.Response(500))
    result = invoke(cli, "deployments", "update", "dep-ccc333", "--max-surge", "2")
    assert result.exit_code != 0 and api.calls() == []


def test_rollback_command(cli: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    api = fake(monkeypatch, lambda req: httpx.Response(202, json=rolling("rolling", 2, 3)))
    result = invoke(cli, "deployments", "rollback", "dep-ccc333", "--no-wait")
    assert result.exit_code == 0, result.output
    assert api.calls() == ["POST /v1/deployments/dep-ccc333/rollback"]
    assert "generation 2 -> 3" in result.output


def test_async_client_update_and_wait() -> None:
    seen: list[httpx.Request] = []
    state = {"polls": 0}

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.method != "GET":
            return httpx.Response(202, json=rolling("rolling", 1, 2))
        state["polls"] += 1
        done = state["polls"] >= 2
        return httpx.Response(200, json=rolling("done", 2, 2, "running") if done else rolling("rolling", 1, 2))

    async def go() -> dict[str, Any]:
        async with AsyncClient("http://cp.test", token="t", transport=httpx.MockTransport(handler)) as c:
            d = await c.update_deployment("dep-ccc333", args=["x"], max_unavailable=1, max_surge=0)
            await c.rollback_deployment("dep-ccc333", max_surge=2)
            return await c.wait_update("dep-ccc333", d["generation"], poll=0)

    out = asyncio.run(go())
    assert out["current_generation"] == 2
    assert json.loads(seen[0].content) == {"args": ["x"], "strategy": {"max_surge": 0, "max_unavailable": 1}}
    assert json.loads(seen[1].content) == {"strategy": {"max_surge": 2}}


def test_sync_wait_update_raises_when_rolled_back() -> None:
    back = rolling("done", 1, 1, "running", last_failure="no new replica became ready for 600s")
    c = Client("http://cp.test", token="t", transport=httpx.MockTransport(lambda r: httpx.Response(200, json=back)))
    with pytest.raises(UpdateRolledBack) as info:
        c.wait_update("dep-ccc333", 2, poll=0)
    assert "600s" in str(info.value) and info.value.deployment["generation"] == 1


def test_patch_body_rules() -> None:
    assert DeploymentPatch.model_validate({"args": ["a"], "strategy": {"max_surge": 0, "max_unavailable": 1}})
    for body, where in [
        ({"args": ["a"], "strategy": {"max_surge": 0, "max_unavailable": 0}}, "strategy"),
        ({"args": ["a"], "strategy": {"max_surge": -1}}, "max_surge"),
        ({"replicas": 2, "strategy": {"max_surge": 2}}, "strategy"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"model": None}, "model"),
        ({"image": ""}, "image"),
    ]:
        with pytest.raises(ValidationError) as info:
            DeploymentPatch.model_validate(body)
        assert where in str(info.value), (body, str(info.value))
