"""The instant test provider used by bench/ and the fault suite, and the INFERIA_ADAPTERS registry hook."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters import registry
from adapters.base import (
    NodeHealth,
    NodeRef,
    PermanentProviderError,
    ProviderNodeStatus,
    ProvisionRequest,
    TemporaryProviderError,
    WorkloadSpec,
)
from tests.support import instant


def _req(node_id: str) -> ProvisionRequest:
    wl = WorkloadSpec(deployment_id="d1", model_name="m", engine="custom")
    return ProvisionRequest(node_id, "p1", "http://x/hb", "tok", 1.0, workload=wl)


def test_registry_reads_adapters_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.ENV_ADAPTERS, instant.ENV_ADAPTERS + ",broken-entry")
    assert "instant" in registry.available()
    assert registry.get_adapter_class("instant") is instant.InstantAdapter
    monkeypatch.delenv(registry.ENV_ADAPTERS)
    assert "instant" not in registry.available()


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="latency_s"):
        instant.InstantAdapter.validate_config({"latency_s": -1})
    with pytest.raises(ValueError, match=r"faults\.create"):
        instant.InstantAdapter.validate_config({"faults": {"create": ["429"]}})
    with pytest.raises(ValueError, match=r"faults\.provision"):
        instant.InstantAdapter.validate_config({"faults": {"provision": ["418"]}})


async def test_create_is_idempotent_and_delete_of_gone_is_success(tmp_path: Path) -> None:
    a = instant.InstantAdapter("p1", {}, str(tmp_path))
    n1 = await a.provision_node(_req("n1"))
    n2 = await a.provision_node(_req("n1"))
    assert n1 == n2 and n1.endpoint and n1.endpoint.endswith("/n/n1")
    assert [n.node_id for n in await a.list_nodes("p1")] == ["n1"]
    assert (await a.get_node_status(NodeRef("n1", "p1"))).status == ProviderNodeStatus.RUNNING
    await a.deprovision_node(NodeRef("n1", "p1"))
    await a.deprovision_node(NodeRef("n1", "p1"))
    assert (await a.get_node_status(NodeRef("n1", "p1"))).status == ProviderNodeStatus.TERMINATED
    assert instant.journal(tmp_path, "p1") == [("create", "n1"), ("delete", "n1")]


async def test_faults_follow_the_plan_and_survive_a_new_instance(tmp_path: Path) -> None:
    cfg = {"faults": {"provision": ["429", "lost_reply"], "deprovision": ["500*"]}, "timeout_s": 0}
    a = instant.InstantAdapter("p1", cfg, str(tmp_path))
    with pytest.raises(TemporaryProviderError, match="429"):
        await a.provision_node(_req("n1"))
    assert instant.instances(tmp_path) == {}
    b = instant.InstantAdapter("p1", cfg, str(tmp_path))  # a restarted actor goes on with the plan
    with pytest.raises(TemporaryProviderError, match="reply"):
        await b.provision_node(_req("n1"))
    assert set(instant.instances(tmp_path)) == {"n1"}  # created, reply lost
    await b.provision_node(_req("n1"))  # the retry finds it
    assert instant.journal(tmp_path, "p1") == [("create", "n1")]
    for _ in range(3):
        with pytest.raises(TemporaryProviderError, match="500"):
            await b.deprovision_node(NodeRef("n1", "p1"))
    c = instant.InstantAdapter("p1", {"faults": {"provision": ["permanent"]}}, str(tmp_path))
    with pytest.raises(PermanentProviderError):
        await c.provision_node(_req("n2"))


async def test_watch_health_reports_creates_failures_and_kills(tmp_path: Path) -> None:
    a = instant.InstantAdapter("p1", {}, str(tmp_path))
    await a.provision_node(_req("n1"))
    seen: list[NodeHealth] = []

    async def report(items: list[NodeHealth]) -> None:
        seen.extend(items)

    task = asyncio.create_task(a.watch_health(report))
    try:
        await asyncio.sleep(0.05)
        assert [(h.node_id, h.state) for h in seen] == [("n1", "ready")]
        await a.provision_node(_req("n2"))
        await asyncio.sleep(0.05)
        assert ("n2", "ready") in [(h.node_id, h.state) for h in seen]  # at once, not after the rescan
        instant.set_health(tmp_path, "p1", "n1", "failed")
        instant.kill(tmp_path, "p1", "n2")
        await asyncio.sleep(1.3)
        assert ("n1", "failed") in [(h.node_id, h.state) for h in seen]
        assert ("n2", "failed") in [(h.node_id, h.state) for h in seen]
    finally:
        task.cancel()
