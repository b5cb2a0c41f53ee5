"""`deploy --min/--max/--target-ongoing ...` and `deployments autoscale` over a fake API (issue 11)."""

from __future__ import annotations

import json

import httpx
import pytest
import typer

from tests.unit.test_cli_commands import app, dep, fake, fast_poll, invoke

__all__ = ["app", "fast_poll"]  # fixtures

POLICY = {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2.0, "upscale_delay_s": 3.0,
          "downscale_delay_s": 120.0, "scale_to_zero_after_s": 300.0, "panic_factor": 2.0}  # fmt: skip


def test_deploy_with_a_policy_sends_it_and_starts_at_min(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    made = dep("pending", desired_replicas=0, autoscaling=POLICY) | {"inference_key": "ik_k"}
    api = fake(monkeypatch, lambda req: httpx.Response(202, json=made))
    result = invoke(app, "deploy", "tiny", "--pool", "gpu-pool", "--min", "0", "--max", "4", "--target-ongoing",
                    "2", "--no-wait")  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(api.requests[0].content)
    # no --replicas: the server starts at min_replicas; --min 0 alone gets the default idle delay (300 s)
    assert body == {"model": "tiny", "pool": "gpu-pool", "autoscaling": {"min_replicas": 0, "max_replicas": 4,
                    "target_ongoing_requests": 2.0, "scale_to_zero_after_s": 300.0}}  # fmt: skip
    assert "0 replicas, autoscaling 0-4 @2" in result.output


def test_deployments_autoscale_changes_given_fields_or_removes(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = {"reason": "load 3 above capacity 2 for 1.0 s of 3", "desired": 1}
    answer = dep("running", 1, autoscaling=POLICY, autoscaler=last)
    api = fake(monkeypatch, lambda req: httpx.Response(202, json=answer))
    result = invoke(app, "deployments", "autoscale", "dep-ccc333", "--max", "8", "--downscale-delay", "30")
    assert result.exit_code == 0, result.output
    assert json.loads(api.requests[0].content) == {"autoscaling": {"max_replicas": 8, "downscale_delay_s": 30.0}}
    assert "load 3 above capacity 2" in result.output
    result = invoke(app, "deployments", "autoscale", "dep-ccc333", "--off")
    assert result.exit_code == 0, result.output
    assert json.loads(api.requests[1].content) == {"autoscaling": None}
    result = invoke(app, "deployments", "autoscale", "dep-ccc333")
    assert result.exit_code == 1 and "--off or at least one" in result.output


def test_deployments_list_shows_the_policy_and_last_reason(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    last = {"reason": "idle at zero replicas"}
    rows = [dep("running", 0, desired_replicas=0, autoscaling=POLICY, autoscaler=last), dep("running", 1)]
    fake(monkeypatch, lambda req: httpx.Response(200, json=rows))
    result = invoke(app, "deployments", "list")
    assert result.exit_code == 0, result.output
    assert "0-4 @2: idle at zero replicas" in result.output
