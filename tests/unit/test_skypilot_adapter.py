"""The SkyPilot provider on fixture catalogs: real catalog, optimizer, Task/Resources; only the client is fake."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support import skypilot_catalog

skypilot_catalog.install()  # before sky is imported: its catalog paths are fixed at import

import sky  # noqa: E402
from sky import exceptions as sx  # noqa: E402

from adapters.base import (  # noqa: E402
    NodeRef,
    PermanentProviderError,
    ProviderNodeStatus,
    ProvisionRequest,
    TemporaryProviderError,
    WorkloadSpec,
)
from adapters.skypilot.adapter import SkyPilotAdapter  # noqa: E402
from adapters.skypilot.errors import CapacityError, translate  # noqa: E402
from adapters.skypilot.placement import CostCeilingExceeded  # noqa: E402
from adapters.skypilot.task import build_engine, build_task, cluster_name  # noqa: E402
from tests.support.skypilot_fake import FakeSkyClient, _plain, fail_capacity, fake_root, preempt, stop_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAKE_ENGINE = str(ROOT / "tests" / "support" / "fake_engine.py")


@pytest.fixture(autouse=True)
def _fixture_catalogs() -> None:
    """Other tests in the same process (the SkyPilot API-server test) may point sky elsewhere: re-point."""
    skypilot_catalog.install()


@pytest.fixture(autouse=True)
def _no_vm_left(tmp_path: Path) -> Iterator[None]:
    yield
    stop_all(fake_root(str(tmp_path)))


def _vm_pids(root: Path) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "cwd", "status"]):
        if (p.info.get("cwd") or "").startswith(str(root)) and p.info.get("status") != psutil.STATUS_ZOMBIE:
            out.append(p.pid)
    return out


def _adapter(tmp_path: Path, **config: Any) -> tuple[SkyPilotAdapter, FakeSkyClient]:
    client = FakeSkyClient(data_dir=str(tmp_path))
    cfg = {"accelerators": ["A100"], "port_range": [21000, 29000], **config}
    return SkyPilotAdapter("pool-1", cfg, str(tmp_path), client=client), client


def _req(node_id: str, workload: WorkloadSpec | None = None) -> ProvisionRequest:
    return ProvisionRequest(
        node_id=node_id,
        pool_id="pool-1",
        heartbeat_url="http://127.0.0.1:9/inventory/heartbeat",
        node_token="nt_secret",
        heartbeat_interval_s=1.0,
        workload=workload,
    )


def test_validate_config_names_the_key() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"use_spot": "yes"}, "use_spot"),
        ({"accelerator_count": 0}, "accelerator_count"),
        ({"max_cost_per_hour": -1}, "max_cost_per_hour"),
        ({"infra": ["aws//x"]}, "infra"),
        ({"api_server": "localhost:46580"}, "api_server"),
        ({"disk_size_gb": 1}, "disk_size_gb"),
        ({"port_range": [1, 2]}, "port_range"),
        ({"accelerators": ["A100:2"]}, "accelerators"),
    ]
    for bad, key in cases:
        with pytest.raises(ValueError, match=key):
            SkyPilotAdapter.validate_config(bad)
    ok = SkyPilotAdapter.validate_config({"infra": "any", "accelerators": "H100", "use_spot": True})
    assert ok["infra"] == [] and ok["accelerators"] == ["H100"] and ok["accelerator_count"] == 1


async def test_discover_resources_prices_filtered_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter, _ = _adapter(tmp_path, infra=["runpod", "lambda"], max_cost_per_hour=1.5)
    offers = await adapter.discover_resources()
    seen = {(o.region, o.extra["instance_type"], o.spot, o.price_per_hour) for o in offers}
    assert ("runpod/US", "1x_A100_SECURE", True, 0.89) in seen
    assert ("lambda/us-east-1", "gpu_1x_a100", False, 1.29) in seen
    assert all(o.gpu_type == "A100" and o.price_per_hour <= 1.5 for o in offers)
    assert not any(o.region.startswith("runpod") and not o.spot for o in offers)  # 1.64 > ceiling
    # cached for discover_cache_s: the catalog is read once
    calls: list[int] = []
    import adapters.skypilot.adapter as mod

    real = mod.list_offers

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(mod, "list_offers", counted)
    assert len(await adapter.discover_resources()) == len(offers) and calls == []


async def test_placement_cheapest_spot_and_ceiling(tmp_path: Path) -> None:
    adapter, _ = _adapter(tmp_path, infra=["runpod"], use_spot=True)
    p = await adapter.place(8000)
    assert (p.cloud, p.region, p.instance_type, p.use_spot, p.price_per_hour) == (
        "runpod",
        "US",
        "1x_A100_SECURE",
        True,
        0.89,
    )
    adapter, _ = _adapter(tmp_path, infra=["runpod"], max_cost_per_hour=0.5, use_spot=True)
    with pytest.raises(CostCeilingExceeded, match=r"cheapest spot 1x A100 costs \$0.89/h.*max_cost_per_hour \$0.50"):
        await adapter.place(8000)


def test_task_yaml_round_trip_keeps_resources_and_hides_secrets() -> None:
    wl = WorkloadSpec("dep-1", "m", "vllm", source="org/model", gpus=1, inference_key="sk-key")
    engine = build_engine(wl, 8000)
    res = sky.Resources(infra="runpod/US", accelerators={"A100": 1}, use_spot=True, ports=["8000"], disk_size=100)
    task = build_task(_req("node-abc", wl), res, "http://1.2.3.4:8000", engine, run=True)
    from sky.task import redact_task_yaml_dict

    config = task.to_yaml_config()
    assert "sk-key" not in str(task.run) + str(task.envs) and "nt_secret" not in str(task.run)
    redact_task_yaml_dict(config)
    assert "sk-key" not in str(config) and "nt_secret" not in str(config)
    again = sky.Task.from_yaml_config(task.to_yaml_config())
    r = next(iter(again.resources))
    assert (str(r.cloud), r.region, r.use_spot, r.accelerators, r.ports) == (
        "RunPod",
        "US",
        True,
        {"A100": 1},
        ["8000"],
    )
    assert _plain(again.secrets["INFERIA_NODE_TOKEN"]) == "nt_secret"
    assert "python3 inferia_agent.py" in str(again.run) and "VLLM_API_KEY" in str(again.run)
    assert list(again.file_mounts or {}) == ["~/.inferia-agent/inferia_agent.py"]  # the agent alone
    assert '--engine-log "$HOME/.inferia-agent/engine.log"' in str(again.run)  # expanded by the shell
    assert "--gpus" in engine.argv and "sk-key" not in " ".join(engine.argv)
    assert cluster_name("inferia-", "pool-1", "node-abc").startswith("inferia-")
    assert cluster_name("inferia-", "pool-1", "node-abc").endswith("-node-abc")
    assert cluster_name("inferia-", "pool-1", "node-abc") != cluster_name("inferia-", "pool-2", "node-abc")
    assert len(cluster_name("inferia-", "pool-1", "Node_X" * 10)) <= 35


def test_errors_translated() -> None:
    e = translate(sx.NoCloudAccessError("Cloud access is not set up. Run: \x1b[1msky check\x1b[0m"), "launch")
    assert isinstance(e, PermanentProviderError) and "sky check" in str(e) and "\x1b" not in str(e)
    assert isinstance(translate(sx.ResourcesUnavailableError("no capacity"), "launch"), CapacityError)
    assert isinstance(translate(sx.ApiServerConnectionError("http://x"), "launch"), TemporaryProviderError)
    assert isinstance(translate(ValueError("bad accelerator"), "launch"), PermanentProviderError)


def _custom(port_key: str = "") -> WorkloadSpec:
    return WorkloadSpec(
        "dep-1", "tiny", "custom", args=(sys.executable, FAKE_ENGINE, "--port", "{port}", "--model", "{model}")
    )


async def test_provision_idempotent_status_preemption_down_logs(tmp_path: Path) -> None:
    adapter, client = _adapter(tmp_path, infra=["runpod"], use_spot=True)
    node = await adapter.provision_node(_req("node-a1", _custom()))
    assert node.provider_instance_id == cluster_name("inferia-", "pool-1", "node-a1")
    assert node.resources["cloud"] == "runpod" and node.resources["use_spot"] is True
    assert node.price_per_hour == 0.89 and node.gpu_type == "A100" and node.endpoint
    again = await adapter.provision_node(_req("node-a1", _custom()))  # retry reuses the cluster
    assert again.provider_instance_id == node.provider_instance_id
    assert [c for c in client.calls if c[0] == "launch"] == [("launch", node.provider_instance_id)] * 2
    ref = NodeRef("node-a1", "pool-1", node.provider_instance_id)
    assert (await adapter.get_node_status(ref)).status == ProviderNodeStatus.RUNNING
    assert [n.node_id for n in await adapter.list_nodes("pool-1")] == ["node-a1"]
    for _ in range(100):  # the agent starts its engine once its Python is up (slow on a loaded machine)
        if len(_vm_pids(client.root)) >= 2:
            break
        await asyncio.sleep(0.1)
    assert any("agent" in line for line in await adapter.get_logs(ref, 50))
    assert len(_vm_pids(client.root)) >= 2  # agent and engine
    preempt(client.root, node.provider_instance_id)
    await asyncio.sleep(0.2)
    assert _vm_pids(client.root) == []  # the first agent too, not only the retried exec's job
    st = await adapter.get_node_status(ref)
    assert st.status == ProviderNodeStatus.TERMINATED and "preempted" in (st.reason or "")
    # still listed (a STOPPED cluster is still ours to clean), without an endpoint
    assert [(n.node_id, n.resources["status"], n.endpoint) for n in await adapter.list_nodes("pool-1")] == [
        ("node-a1", "STOPPED", None)
    ]
    await adapter.deprovision_node(ref)
    await adapter.deprovision_node(ref)  # already gone is success
    assert (await adapter.get_node_status(ref)).status == ProviderNodeStatus.TERMINATED


async def test_capacity_error_fails_over_then_on_demand_fallback(tmp_path: Path) -> None:
    adapter, client = _adapter(tmp_path, infra=["runpod"], use_spot=True, spot_fallback_on_demand=True)
    fail_capacity(client.root, "runpod/US")
    node = await adapter.provision_node(_req("node-b1"))
    assert (node.resources["region"], node.resources["use_spot"], node.price_per_hour) == ("CA", True, 0.95)
    name = cluster_name("inferia-", "pool-1", "node-b1")
    assert [c for c in client.calls if c[0] == "launch"] == [("launch", name)] * 2
    fail_capacity(client.root, "runpod/CA")
    with pytest.raises(TemporaryProviderError, match="no capacity"):  # every candidate, spot and on-demand
        await adapter.provision_node(_req("node-b2"))
    await adapter.deprovision_node(NodeRef("node-b1", "pool-1"))


async def test_slow_launch_does_not_block_the_loop(tmp_path: Path) -> None:
    adapter, client = _adapter(tmp_path, infra=["runpod"])
    client.delay_s = 0.5
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    node = await adapter.provision_node(_req("node-c1"))
    t.cancel()
    assert ticks > 50 and node.resources["cloud"] == "runpod" and node.price_per_hour == 1.64
    await adapter.deprovision_node(NodeRef("node-c1", "pool-1"))


def test_client_points_the_sdk_at_the_pool_api_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import sky` already caches the server URL for the process; the pool's api_server must still win."""
    from sky.server import common as server_common

    from adapters.skypilot.client import SERVER_ENV, SkyClient

    monkeypatch.delenv(SERVER_ENV, raising=False)
    server_common.get_server_url.cache_clear()
    assert server_common.get_server_url().endswith(":46580")  # cached, as after `import sky`
    try:
        SkyClient("http://10.0.0.7:46580")
        assert server_common.get_server_url() == "http://10.0.0.7:46580"
    finally:
        monkeypatch.delenv(SERVER_ENV, raising=False)
        server_common.get_server_url.cache_clear()


async def test_pools_see_only_their_own_clusters_in_every_state(tmp_path: Path) -> None:
    """Issue 10 item 1: two pools on one SkyPilot API server (one cluster prefix) never list each other's
    clusters, and a pool lists its INIT and STOPPED clusters too (so such orphans get cleaned)."""
    a, client = _adapter(tmp_path, infra=["runpod"])
    b = SkyPilotAdapter("pool-2", {"accelerators": ["A100"], "infra": ["runpod"]}, str(tmp_path), client=client)
    await a.provision_node(_req("node-a1"))
    await a.provision_node(_req("node-a2"))
    await b.provision_node(ProvisionRequest("node-b1", "pool-2", "http://127.0.0.1:9/hb", "nt_b", 1.0))
    names_a = {n.provider_instance_id for n in await a.list_nodes("pool-1")}
    assert {n.node_id for n in await a.list_nodes("pool-1")} == {"node-a1", "node-a2"}
    assert {n.node_id for n in await b.list_nodes("pool-2")} == {"node-b1"}
    assert not names_a & {n.provider_instance_id for n in await b.list_nodes("pool-2")}
    name_a2 = next(n.provider_instance_id for n in await a.list_nodes("pool-1") if n.node_id == "node-a2")
    preempt(client.root, name_a2)  # STOPPED
    state = json.loads((client.root / name_a2 / "cluster.json").read_text())
    assert state["status"] == "STOPPED"
    assert {n.node_id for n in await a.list_nodes("pool-1")} == {"node-a1", "node-a2"}
    state["status"] = "INIT"
    (client.root / name_a2 / "cluster.json").write_text(json.dumps(state))
    assert {n.node_id for n in await a.list_nodes("pool-1")} == {"node-a1", "node-a2"}
    for node_id, adapter in (("node-a1", a), ("node-a2", a), ("node-b1", b)):
        await adapter.deprovision_node(NodeRef(node_id, adapter.pool_id))
    assert await a.list_nodes("pool-1") == [] and await b.list_nodes("pool-2") == []


async def test_list_after_restart_gives_the_known_facts(tmp_path: Path) -> None:
    """Issue 10 item 6: a restarted adapter (nothing in memory) lists GPU type and count, price and the
    endpoint of a running cluster, from SkyPilot's record and the catalog, not None/0."""
    adapter, _ = _adapter(tmp_path, infra=["runpod"], use_spot=True)
    node = await adapter.provision_node(_req("node-r1", _custom()))
    fresh = SkyPilotAdapter("pool-1", adapter.config, str(tmp_path), client=FakeSkyClient(data_dir=str(tmp_path)))
    (listed,) = await fresh.list_nodes("pool-1")
    assert (listed.gpu_type, listed.gpu_count, listed.price_per_hour) == ("A100", 1, 0.89)
    assert listed.endpoint == node.endpoint and listed.endpoint
    assert listed.provider_instance_id == node.provider_instance_id
    assert listed.vcpu > 0 and listed.ram_mb > 0
    await fresh.deprovision_node(NodeRef("node-r1", "pool-1"))
