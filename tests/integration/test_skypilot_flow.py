"""The SkyPilot provider in the real control plane, on the fake client (tests/support/skypilot_fake.py).

Everything but the client module is real: the registry, the adapter, SkyPilot's catalog (fixture catalogs)
and optimizer, Task/Resources and their YAML round trip, the node agent on the fake "VM" heartbeating with
its node token, the deployment actor replacing a preempted spot node, and the cost-ceiling refusal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from adapters.skypilot.task import cluster_name
from controller.boot import ControlPlane
from controller.client import Client, DeploymentFailed
from controller.services import free_port
from tests.support import controlplane as cpl
from tests.support.skypilot_fake import fake_root, preempt

PORTS = [21000, 29000]


def _routes(api: Client, model: str) -> list[dict[str, Any]]:
    return list((api.routing_table() or {}).get("models", {}).get(model, []))


def test_spot_pool_deploy_preempt_replace(control_plane: ControlPlane, api: Client) -> None:
    root = fake_root(control_plane.settings.data_dir)
    name = f"sky-{uuid.uuid4().hex[:6]}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(
        f"sky-{uuid.uuid4().hex[:6]}",
        provider="skypilot",
        provider_config={"infra": ["runpod"], "accelerators": ["A100"], "use_spot": True, "port_range": PORTS},
    )
    dep = api.deploy(name, pool["name"], replicas=1)
    t0 = time.monotonic()
    api.wait_deployment(dep["id"], timeout=60)
    deploy_s = time.monotonic() - t0

    [route] = cpl.wait_for(lambda: _routes(api, name), 20, what="route")
    first = route["node_id"]
    node = api.get_node(first)
    # the optimizer's choice is recorded on the node: cheapest spot A100 on the fixture catalog
    res = node["resources"]
    assert (res["cloud"], res["region"], res["instance_type"], res["use_spot"]) == (
        "runpod",
        "US",
        "1x_A100_SECURE",
        True,
    )
    assert node["price_per_hour"] == 0.89 and node["gpu_type"] == "A100"
    assert node["provider_instance_id"] == cluster_name("inferia-", pool["id"], first)
    assert (root / node["provider_instance_id"] / "cluster.json").exists()
    # the engine answers through the proxy with the deployment's key (heartbeats came from the real agent)
    reply = api.chat(name, [{"role": "user", "content": "hi"}], key=dep["inference_key"])
    assert reply["choices"][0]["message"]["content"] == "echo: hi"

    # the cloud reclaims the spot VM: its processes die and the cluster shows STOPPED
    t_preempt = time.monotonic()
    preempt(root, node["provider_instance_id"])
    cpl.wait_for(lambda: not any(r["node_id"] == first for r in _routes(api, name)), 10, what="route removed")
    [again] = cpl.wait_for(
        lambda: [r for r in _routes(api, name) if r["node_id"] != first], 60, what="replacement routed"
    )
    replace_s = time.monotonic() - t_preempt
    cpl.wait_for(lambda: api.get_node(first)["state"] == "terminated", 30, what="preempted node terminated")
    assert not (root / node["provider_instance_id"]).exists()  # the leftover cluster was torn down
    assert api.get_node(again["node_id"])["resources"]["use_spot"] is True

    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 60, what="deleted")
    assert api.get_node(again["node_id"])["state"] == "terminated"
    assert not list(root.glob(f"{cluster_name('inferia-', pool['id'], again['node_id'])}/cluster.json"))
    assert _vm_processes(control_plane, root) == []  # the fake's VMs left nothing running
    print(f"\nFIGURES skypilot deploy_to_running_s={deploy_s:.2f} preempt_to_replacement_routed_s={replace_s:.2f}")


def _vm_processes(control_plane: ControlPlane, root: Path) -> list[int]:
    """Live processes of the fake's VMs (other tests' local nodes also run under the data dir)."""
    return [p for p in cpl.processes_under(Path(control_plane.settings.data_dir)) if _cwd_in(p, root)]


def test_cost_ceiling_refusal_reaches_the_user(control_plane: ControlPlane, api: Client) -> None:
    name = f"sky-{uuid.uuid4().hex[:6]}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(
        f"sky-{uuid.uuid4().hex[:6]}",
        provider="skypilot",
        provider_config={
            "infra": ["runpod"],
            "accelerators": ["A100"],
            "use_spot": True,
            "max_cost_per_hour": 0.5,
            "port_range": PORTS,
        },
    )
    dep = api.deploy(name, pool["name"], replicas=1)
    # while it retries, the replica shows why it failed
    seen = cpl.wait_for(
        lambda: (
            [r for r in api.get_deployment(dep["id"])["replicas"] if r["state"] == "failed"]
            or api.get_deployment(dep["id"])["state"] == "failed"
        ),
        30,
        what="a failed replica or deployment",
    )
    if isinstance(seen, list):
        assert "cost ceiling" in seen[0]["reason"], seen
    with pytest.raises(DeploymentFailed) as failed:
        api.wait_deployment(dep["id"], timeout=40)
    error = failed.value.deployment["error"]
    assert "cost ceiling: the cheapest spot 1x A100 costs $0.89/h" in error, error
    assert "max_cost_per_hour $0.50/h" in error, error
    assert _routes(api, name) == []
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 60, what="deleted")


@pytest.fixture()
def sky_api_server(control_plane: ControlPlane) -> Iterator[str]:
    """A real SkyPilot API server, offline, with no cloud credentials: its own HOME, SKY_RUNTIME_DIR and port.

    It lives under the data dir's nodes/ so the session cleanup would also catch a leftover."""
    base = Path(control_plane.settings.data_dir) / "nodes" / "skypilot-api"
    (base / "home").mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("INFERIA_", "SKYPILOT_API_SERVER"))},
        "HOME": str(base / "home"),
        "SKY_RUNTIME_DIR": str(base / "runtime"),
        "SKYPILOT_API_SERVER_LOCAL_PORT": str(port),
        "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
    }
    sky_cli = str(Path(sys.executable).parent / "sky")
    subprocess.run([sky_cli, "api", "start"], env=env, cwd=base, check=True, timeout=90, capture_output=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([sky_cli, "api", "stop"], env=env, cwd=base, timeout=60, capture_output=True)
        cpl.kill_all([p for p in cpl.processes_under(Path(control_plane.settings.data_dir)) if _cwd_in(p, base)])


def _cwd_in(pid: int, root: Path) -> bool:
    try:
        return psutil.Process(pid).cwd().startswith(str(root))
    except psutil.Error:
        return False


def test_real_api_server_no_cloud_reaches_the_user(
    control_plane: ControlPlane, api: Client, sky_api_server: str
) -> None:
    """SkyPilot's real request path (SDK -> API server -> request id -> async get) for calls that need no
    cloud, and the user reads why and what to do: `enabled_clouds` answers [] (infra "any"), and the
    optimizer refuses a named cloud with "Cloud access is not set up"."""
    name = f"sky-{uuid.uuid4().hex[:6]}"
    api.register_model(**cpl.fake_model(name))
    deps = []
    for infra in ("any", ["runpod"]):
        pool = api.create_pool(
            f"sky-{uuid.uuid4().hex[:6]}",
            provider="skypilot",
            provider_config={"infra": infra, "accelerators": ["A100"], "api_server": sky_api_server},
        )
        deps.append(api.deploy(name, pool["name"], replicas=1)["id"])
    errors = []
    for dep_id in deps:
        with pytest.raises(DeploymentFailed) as failed:
            api.wait_deployment(dep_id, timeout=40)
        errors.append(failed.value.deployment["error"])
    assert "no cloud is enabled in SkyPilot" in errors[0] and "run `sky check`" in errors[0], errors
    assert "placing the node: Cloud access is not set up" in errors[1] and "\x1b" not in errors[1], errors
    assert "run `sky check`" in errors[1], errors
    for dep_id in deps:
        api.delete_deployment(dep_id)
    cpl.wait_for(lambda: not {d["id"] for d in api.list_deployments()} & set(deps), 60, what="deleted")
