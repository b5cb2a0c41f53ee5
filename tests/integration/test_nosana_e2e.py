"""A Nosana pool end to end: the real sidecar process (real SDK for IPFS, simulated market), the
adapter and the control plane. Deploy -> the job runs -> ready by the sidecar's heartbeat -> routed ->
the job dies -> redeploy keeps the node -> delete -> the job is stopped, nothing left on the market."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import registry
from adapters.nosana.adapter import NosanaAdapter
from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl
from tests.support.nosana_sim import MARKET, NosanaSim, expose_adapter_to_workers

# before the session's control plane starts: Ray workers must resolve the `nosana` provider too
expose_adapter_to_workers()
registry.register(NosanaAdapter)

pytestmark = pytest.mark.integration


@pytest.fixture()
def sim(tmp_path: Path) -> Iterator[tuple[NosanaSim, str]]:
    model = f"nos-{uuid.uuid4().hex[:6]}"
    s = NosanaSim(tmp_path, model)
    try:
        yield s, model
    finally:
        s.close()


def _routes(api: Client, model: str) -> list[dict[str, Any]]:
    return list((api.routing_table() or {}).get("models", {}).get(model, []))


def test_nosana_deploy_redeploy_delete(control_plane: ControlPlane, api: Client, sim: tuple[NosanaSim, str]) -> None:
    s, model = sim
    t0 = time.monotonic()
    api.register_model(
        name=model,
        engine="custom",
        image="ghcr.io/example/fake-engine:1",
        args=["python", "fake_engine.py", "--port", "{port}", "--model", "{model}"],
        port=8000,
    )
    pool = api.create_pool(
        f"nosana-{uuid.uuid4().hex[:6]}",
        provider="nosana",
        provider_config={"sidecar_url": s.url, "internal_api_key": s.key, "market": MARKET, "timeout_s": 3600},
    )
    assert pool["provider_config"]["internal_api_key"] == "***"
    dep = api.deploy(model, pool["name"], replicas=1)
    api.wait_deployment(dep["id"], timeout=40)

    route = cpl.wait_for(lambda: (r := _routes(api, model)) and r[0], 20, what="a route")
    node_id = route["node_id"]
    assert route["endpoint"] == s.engine_urls[0]
    job = s.get(f"/jobs/{node_id}")
    first_job = job["job_id"]
    assert job["state"] == "running" and job["pool_id"] == pool["id"]
    # the definition on (fake) IPFS is the adapter's: the engine container, no sidecar secret in it
    assert job["ipfs_hash"].startswith("Qm")
    r = httpx.post(
        control_plane.api_url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {dep['inference_key']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    deployed_s = time.monotonic() - t0

    # the job dies on its host: the sidecar redeploys it, the node keeps its identity
    t1 = time.monotonic()
    s.post(f"/sim/jobs/{first_job}/state", {"state": "error"})
    moved = cpl.wait_for(
        lambda: (r := _routes(api, model)) and r[0]["endpoint"] == s.engine_urls[1] and r[0],
        20,
        what="the route to the redeployed job",
    )
    assert moved["node_id"] == node_id
    job = s.get(f"/jobs/{node_id}")
    assert job["job_id"] != first_job and job["previous_job_id"] == first_job
    cpl.wait_for(
        lambda: api.get_node(node_id).get("provider_instance_id") == job["job_id"], 15, what="the new job id recorded"
    )
    assert api.get_node(node_id)["state"] == "ready"
    redeploy_s = time.monotonic() - t1

    # delete: the job is stopped, nothing is left on the market, no redeploy follows
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 30, what="deleted")
    cpl.wait_for(lambda: api.get_node(node_id)["state"] == "terminated", 20, what="node terminated")
    assert s.get(f"/jobs/{node_id}")["state"] == "stopped"
    time.sleep(1.0)
    market = s.get("/sim/state")["jobs"]
    assert [j["state"] for j in market if j["state"] in ("QUEUED", "RUNNING")] == []
    assert len(market) == 2
    assert model not in (api.routing_table() or {})["models"]
    print(f"\nFIGURES nosana deploy_s={deployed_s:.2f} redeploy_s={redeploy_s:.2f}")
