"""NosanaAdapter over a mocked sidecar (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from adapters.base import (
    NodeRef,
    PermanentProviderError,
    ProviderNodeStatus,
    ProvisionRequest,
    TemporaryProviderError,
    WorkloadSpec,
)
from adapters.nosana.adapter import NosanaAdapter
from adapters.nosana.client import SidecarClient

MARKET = "97G9NnvBDQ2WpKu6fasoMsAKmfj63C9rhysJnkeWodAf"
KEY = "k" * 32
CONFIG = {"sidecar_url": "http://sidecar", "internal_api_key": KEY, "market": MARKET, "timeout_s": 600}


def _job(**kw: Any) -> dict[str, Any]:
    job = {"node_id": "n1", "pool_id": "p1", "job_id": "J1", "state": "queued", "ready": False, "url": None}
    return {**job, **kw}


def adapter(handler: Callable[[httpx.Request], httpx.Response], **config: Any) -> NosanaAdapter:
    a = NosanaAdapter("p1", {**CONFIG, **config})
    a._client = SidecarClient("http://sidecar", KEY, retries=1, backoff_s=0, transport=httpx.MockTransport(handler))
    return a


def req() -> ProvisionRequest:
    w = WorkloadSpec(deployment_id="d1", model_name="tiny", engine="vllm", source="org/m", inference_key="ik")
    return ProvisionRequest("n1", "p1", "http://cp/inventory/heartbeat", "node-token", 1.0, workload=w)


async def test_provision_posts_the_definition_and_heartbeat() -> None:
    seen: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        if r.url.path == "/jobs/launch":
            return httpx.Response(201, json={"job_id": "J1", "ipfs_hash": "Qm1", "state": "queued"})
        return httpx.Response(200, json=_job())

    node = await adapter(handler).provision_node(req())
    assert node.provider_instance_id == "J1" and node.endpoint is None
    assert node.resources["served_model"] == "tiny" and node.deployment_id == "d1"
    launch = json.loads(seen[0].content)
    assert seen[0].headers["x-internal-api-key"] == KEY
    assert launch["node_id"] == "n1" and launch["market"] == MARKET and launch["timeout_s"] == 600
    assert launch["heartbeat"] == {"url": "http://cp/inventory/heartbeat", "token": "node-token", "interval_s": 1.0}
    assert KEY not in json.dumps(launch["job_definition"]) and "node-token" not in json.dumps(launch["job_definition"])


async def test_a_timed_out_launch_is_retried_and_found_by_node_id() -> None:
    calls = {"launch": 0}

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path == "/jobs/launch":
            calls["launch"] += 1
            if calls["launch"] == 1:
                raise httpx.ReadTimeout("slow", request=r)
            return httpx.Response(200, json={"job_id": "J1", "state": "queued"})
        return httpx.Response(200, json=_job())

    node = await adapter(handler).provision_node(req())
    assert node.provider_instance_id == "J1" and calls["launch"] == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, PermanentProviderError),
        (401, PermanentProviderError),
        (402, PermanentProviderError),
        (403, PermanentProviderError),
        (503, TemporaryProviderError),
        (500, TemporaryProviderError),
    ],
)
async def test_errors_are_translated(status: int, error: type[Exception]) -> None:
    a = adapter(lambda r: httpx.Response(status, json={"error": "x", "message": f"said {status}"}))
    with pytest.raises(error, match=str(status) if status >= 500 else "said"):
        await a.provision_node(req())


async def test_unreachable_sidecar_is_temporary_and_status_unknown() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=r)

    a = adapter(handler)
    with pytest.raises(TemporaryProviderError, match="unreachable"):
        await a.provision_node(req())
    assert (await a.get_node_status(NodeRef("n1", "p1"))).status == ProviderNodeStatus.UNKNOWN
    with pytest.raises(TemporaryProviderError):
        await a.list_nodes("p1")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("posting", "pending"),
        ("queued", "pending"),
        ("redeploying", "pending"),
        ("running", "running"),
        ("stopped", "terminated"),
        ("failed", "failed"),
        ("insufficient_funds", "failed"),
    ],
)
async def test_status_mapping(state: str, expected: str) -> None:
    a = adapter(lambda r: httpx.Response(200, json=_job(state=state)))
    assert (await a.get_node_status(NodeRef("n1", "p1", "J0"))).status == expected


async def test_unknown_node_is_terminated_and_deprovision_is_idempotent() -> None:
    a = adapter(lambda r: httpx.Response(404, json={"error": "not_found"}))
    assert (await a.get_node_status(NodeRef("n1", "p1"))).status == ProviderNodeStatus.TERMINATED
    await a.deprovision_node(NodeRef("n1", "p1"))  # already gone is success
    assert await a.get_logs(NodeRef("n1", "p1")) == []


async def test_deprovision_waits_for_a_confirmed_stop() -> None:
    paths: list[str] = []

    def handler(r: httpx.Request) -> httpx.Response:
        paths.append(r.url.path)
        return httpx.Response(202, json=_job(state="stopping"))

    with pytest.raises(TemporaryProviderError, match="stopping"):
        await adapter(handler).deprovision_node(NodeRef("n1", "p1", "J1"))
    assert paths == ["/jobs/n1/stop"]
    ok = adapter(lambda r: httpx.Response(200, json=_job(state="stopped")))
    await ok.deprovision_node(NodeRef("n1", "p1", "J1"))


async def test_list_nodes_logs_and_markets() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path == "/jobs":
            assert r.url.params["pool_id"] == "p1" and r.url.params["active"] == "1"
            running = _job(job_id="J2", state="running", ready=True, url="https://h.example", price=100)
            return httpx.Response(200, json={"jobs": [running, _job(node_id="n2")]})
        if r.url.path == "/jobs/n1/logs":
            return httpx.Response(200, json={"lines": ["a", "b"]})
        market = {
            "address": MARKET,
            "name": "3090",
            "gpu_type": "RTX 3090",
            "price_per_hour": 0.36,
            "available_nodes": 4,
            "queue_type": "nodes",
        }
        return httpx.Response(200, json={"markets": [market, {"address": "x", "error": "rpc down"}]})

    a = adapter(handler)
    nodes = await a.list_nodes("p1")
    assert [(n.node_id, n.provider_instance_id, n.endpoint) for n in nodes] == [
        ("n1", "J2", "https://h.example"),
        ("n2", "J1", None),
    ]
    assert await a.get_logs(NodeRef("n1", "p1"), tail=5) == ["a", "b"]
    [offer] = await a.discover_resources()
    assert offer.provider == "nosana" and offer.gpu_type == "RTX 3090" and offer.available == 4
    assert offer.extra["market"] == MARKET


def test_config_validation_and_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="market"):
        NosanaAdapter.validate_config({})
    with pytest.raises(ValueError, match="sidecar_url"):
        NosanaAdapter.validate_config({"market": MARKET, "sidecar_url": "ftp://x"})
    with pytest.raises(ValueError, match="timeout_s"):
        NosanaAdapter.validate_config({"market": MARKET, "timeout_s": 5})
    monkeypatch.setenv("NOSANA_SIDECAR_URL", "http://side:3000/")
    assert NosanaAdapter.validate_config({"market": MARKET})["sidecar_url"] == "http://side:3000"
    caps = NosanaAdapter.capabilities
    assert caps.ephemeral and caps.needs_sidecar and caps.container_native


async def test_missing_key_is_permanent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOSANA_INTERNAL_API_KEY", raising=False)
    a = NosanaAdapter("p1", {"market": MARKET})
    with pytest.raises(PermanentProviderError, match="NOSANA_INTERNAL_API_KEY"):
        await a.provision_node(req())
    with pytest.raises(PermanentProviderError, match="workload"):
        await adapter(lambda r: httpx.Response(200)).provision_node(ProvisionRequest("n1", "p1", "http://cp", "t", 1.0))
