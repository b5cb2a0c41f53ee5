"""What the web console and Prometheus read and change, on a real control plane: /ui served on both ports,
PATCH /v1/pools checked against what the pool runs, GET /v1/nodes paged and filtered, GET /v1/events paged,
and /metrics from prometheus_client with per deployment, pool, node and control-plane figures."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.boot import ControlPlane
from controller.client import Client, Conflict, InvalidRequest, NotFound
from tests.support import controlplane as cpl

pytestmark = pytest.mark.integration


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _instant_pool(api: Client, **fields: Any) -> dict[str, Any]:
    return api.create_pool(_name("con"), provider="instant", **fields)  # type: ignore[no-any-return]


def _alive(api: Client, pool: dict[str, Any]) -> int:
    return int(api.list_nodes(pool=pool["id"], limit=1)["total"])


def test_ui_is_served_on_both_ports_without_data(control_plane: ControlPlane) -> None:
    for base in (control_plane.api_url, control_plane.data_url):
        r = httpx.get(base + "/ui", follow_redirects=True, timeout=30, trust_env=False)
        assert r.status_code == 200 and "<title>inferia console</title>" in r.text
        js = httpx.get(base + "/ui/app.js", timeout=30, trust_env=False)
        assert js.status_code == 200 and "sessionStorage" in js.text
        assert "javascript" in js.headers["content-type"]
        css = httpx.get(base + "/ui/style.css", timeout=30, trust_env=False)
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        # the page has no data of its own: every API call needs the admin token
        assert httpx.get(base + "/v1/nodes", timeout=30, trust_env=False).status_code == 401
    # no CDN: the page loads only its own files
    page = httpx.get(control_plane.api_url + "/ui/index.html", trust_env=False).text
    assert "http://" not in page and "https://" not in page and "//cdn" not in page


def test_patch_pool_changes_limits_live_and_refuses_what_the_pool_cannot_hold(api: Client) -> None:
    pool = _instant_pool(api, max_nodes=2, target_nodes=2)
    cpl.wait_for(lambda: _alive(api, pool) == 2, 30, what="2 idle nodes")
    # max_nodes below what the pool runs: 409 naming the field, nothing written
    with pytest.raises(Conflict) as err:
        api.update_pool(pool["name"], max_nodes=1, target_nodes=1)
    assert err.value.code == "pool_conflict" and err.value.field == "max_nodes" and "2 nodes" in err.value.message
    assert api.get_pool(pool["id"])["max_nodes"] == 2
    # raising max_nodes and min_nodes takes effect at once: the pool provisions up to min_nodes
    out = api.update_pool(pool["name"], max_nodes=4, min_nodes=3, max_cost_per_hour=12.5)
    assert (out["max_nodes"], out["min_nodes"], out["max_cost_per_hour"]) == (4, 3, 12.5)
    cpl.wait_for(lambda: _alive(api, pool) == 3, 30, what="min_nodes 3 reached")
    got = api.get_pool(pool["id"])
    assert (got["max_nodes"], got["min_nodes"], got["max_cost_per_hour"]) == (4, 3, 12.5)
    assert api.update_pool(pool["id"], max_cost_per_hour=None)["max_cost_per_hour"] is None  # null: no limit
    # bad input: 422 naming the field, nothing half-written
    with pytest.raises(InvalidRequest) as bad:
        api.update_pool(pool["id"], min_nodes=5)
    assert bad.value.field == "min_nodes"
    with pytest.raises(InvalidRequest) as bad:
        api.update_pool(pool["id"], max_nodes=None)
    assert bad.value.field == "max_nodes"
    with pytest.raises(InvalidRequest) as bad:
        api.update_pool(pool["id"], provider_config={"latency_s": 3})
    assert bad.value.field == "provider_config.latency_s"
    with pytest.raises(InvalidRequest) as bad:
        api.update_pool(pool["id"], colour="blue")
    assert bad.value.field == "colour"
    changed = api.update_pool(pool["id"], provider_config={"cleanup_orphans": False})["provider_config"]
    assert changed["cleanup_orphans"] is False and changed["latency_s"] == 0.0  # merged, checked by the adapter
    got = api.get_pool(pool["id"])
    assert got["min_nodes"] == 3 and got["max_nodes"] == 4
    with pytest.raises(NotFound):
        api.update_pool("no-such-pool", max_nodes=3)
    listed = {p["id"]: p for p in api.list_pools()}[pool["id"]]
    assert listed["nodes"] == 3 and "cost_per_hour" in listed
    api.update_pool(pool["id"], min_nodes=0, target_nodes=0)
    api.delete_pool(pool["id"])


def test_raising_max_nodes_lets_a_deployment_at_its_quota_grow(api: Client) -> None:
    pool = _instant_pool(api, max_nodes=1)
    model = api.register_model(**cpl.fake_model(_name("m")))
    dep = api.deploy(model["name"], pool["name"], replicas=2)
    cpl.wait_for(lambda: "max_nodes" in (api.get_deployment(dep["id"]).get("error") or ""), 30, what="quota error")
    api.update_pool(pool["name"], max_nodes=2)
    cpl.wait_for(lambda: api.get_deployment(dep["id"])["ready_replicas"] == 2, 60, what="2 ready replicas")
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: dep["id"] not in {d["id"] for d in api.list_deployments()}, 60, what="deployment deleted")
    api.delete_pool(pool["id"])
    api.delete_model(model["name"])


def test_nodes_listing_pages_and_filters(api: Client) -> None:
    pool = _instant_pool(api, max_nodes=12, target_nodes=12)
    cpl.wait_for(lambda: _alive(api, pool) == 12, 30, what="12 nodes")
    cpl.wait_for(lambda: api.list_nodes(pool=pool["name"], state="ready", limit=1)["total"] == 12, 30, what="12 ready")
    seen: list[str] = []
    for offset in range(0, 12, 5):
        page = api.list_nodes(pool=pool["name"], limit=5, offset=offset)
        assert page["total"] == 12 and page["limit"] == 5 and page["offset"] == offset
        assert all(n["pool_id"] == pool["id"] and "seconds_since_heartbeat" in n for n in page["items"])
        seen += [n["id"] for n in page["items"]]
    assert len(seen) == 12 and len(set(seen)) == 12  # every node once, stable order
    one = seen[7]
    assert [n["id"] for n in api.list_nodes(q=one[-6:])["items"]] == [one]
    assert api.list_nodes(pool=pool["id"], state="provisioning")["total"] == 0
    assert api.list_nodes(pool=pool["id"], state="ready,unhealthy", limit=1)["total"] == 12
    with pytest.raises(InvalidRequest) as bad:
        api.list_nodes(state="sleepy")
    assert bad.value.field == "state"
    with pytest.raises(InvalidRequest) as bad:
        api.list_nodes(limit=5000)
    assert bad.value.field == "limit"
    with pytest.raises(NotFound) as nf:
        api.list_nodes(pool="no-such-pool")
    assert nf.value.field == "pool"
    api.update_pool(pool["id"], target_nodes=0)
    api.delete_pool(pool["id"])
    cpl.wait_for(lambda: api.list_nodes(pool=pool["id"], state="all", limit=1)["total"] == 12, 30, what="all kept")


def test_events_are_paged_newest_first(api: Client) -> None:
    pool = _instant_pool(api, max_nodes=3, target_nodes=3)
    cpl.wait_for(lambda: _alive(api, pool) == 3, 30, what="3 nodes")
    first = api.events(limit=2)
    assert len(first["items"]) == 2 and first["next_before"] == first["items"][-1]["id"]
    ids = [e["id"] for e in first["items"]]
    assert ids == sorted(ids, reverse=True)
    older = api.events(limit=2, before=first["next_before"])
    assert all(e["id"] < first["next_before"] for e in older["items"])
    created = api.events(entity_id=pool["id"], kind="pool.")
    assert [e["kind"] for e in created["items"]] == ["pool.created"] and created["next_before"] is None
    nodes = api.events(entity_type="node", kind="node.created", limit=1000)
    assert all(e["entity_type"] == "node" and e["kind"] == "node.created" for e in nodes["items"])
    assert {e["data"]["pool_id"] for e in nodes["items"]} >= {pool["id"]}
    with pytest.raises(InvalidRequest) as bad:
        api.events(entity_type="planet")
    assert bad.value.field == "entity_type"
    api.update_pool(pool["id"], target_nodes=0)
    api.delete_pool(pool["id"])


def _scrape(cp: ControlPlane) -> dict[str, Any]:
    # /metrics needs a metrics, gateway or admin token (issue 13)
    r = httpx.get(
        cp.api_url + "/metrics", headers={"authorization": f"Bearer {cp.api_token}"}, timeout=30, trust_env=False
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float | None:
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def test_metrics_per_deployment_pool_node_and_control_plane(api: Client, control_plane: ControlPlane) -> None:
    pool = _instant_pool(api, max_nodes=3)
    model = api.register_model(**cpl.fake_model(_name("m")))
    dep = api.deploy(model["name"], pool["name"], replicas=2)
    cpl.wait_for(lambda: api.get_deployment(dep["id"])["state"] == "running", 60, what="running")

    def scraped() -> dict[str, Any] | None:
        fams = _scrape(control_plane)
        ready = _value(
            fams, "inferia_deployment_replicas_ready", "inferia_deployment_replicas_ready", deployment=dep["id"]
        )
        return fams if ready == 2 else None

    fams = cpl.wait_for(scraped, 20, every=0.5, what="2 ready replicas in /metrics")
    d = {"deployment": dep["id"]}
    assert _value(fams, "inferia_deployment_replicas_desired", "inferia_deployment_replicas_desired", **d) == 2
    info = {"deployment": dep["id"], "model": model["name"], "pool": pool["name"], "state": "running"}
    assert _value(fams, "inferia_deployment_info", "inferia_deployment_info", **info) == 1
    assert _value(fams, "inferia_pool_nodes", "inferia_pool_nodes", pool=pool["name"], state="ready") == 2
    assert _value(fams, "inferia_pool_max_nodes", "inferia_pool_max_nodes", pool=pool["name"]) == 3
    assert _value(fams, "inferia_pool_cost_per_hour", "inferia_pool_cost_per_hour", pool=pool["name"]) is not None
    node_ids = [r["id"] for r in api.get_deployment(dep["id"])["replicas"]]
    for nid in node_ids:
        assert _value(fams, "inferia_node_up", "inferia_node_up", node=nid, pool=pool["name"]) == 1
        age = _value(fams, "inferia_node_heartbeat_age_seconds", "inferia_node_heartbeat_age_seconds", node=nid)
        assert age is not None and age < 15
    calls = _value(
        fams, "inferia_provider_calls", "inferia_provider_calls_total", provider="instant", call="provision_node"
    )
    assert calls is not None and calls >= 2
    for family in (
        "inferia_inventory_sweep_seconds",
        "inferia_inventory_sweep_seconds_max",
        "inferia_routing_rebuild_seconds",
        "inferia_routing_rebuild_seconds_max",
        "inferia_routing_version",
        "inferia_reconcile_ms",
        "inferia_health_sweep_ms",
        "inferia_redis_up",
    ):
        assert fams[family].type == "gauge", family
    assert _value(fams, "inferia_heartbeats", "inferia_heartbeats_total") is not None
    assert _value(fams, "inferia_heartbeat_results", "inferia_heartbeat_results_total", result="accepted") is not None
    assert fams["inferia_request_duration_seconds"].type == "histogram"
    assert fams["inferia_time_to_first_token_seconds"].type == "histogram"
    assert fams["inferia_deployment_requests_ongoing"].type == "gauge"
    # no label carries a request: every label value is a known id, name, state, status or provider call
    for fam in fams.values():
        for s in fam.samples:
            assert set(s.labels) <= {"deployment", "pool", "node", "state", "status", "result", "provider", "call",
                                     "model", "le"}, (fam.name, s.labels)  # fmt: skip
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: dep["id"] not in {d["id"] for d in api.list_deployments()}, 60, what="deployment deleted")
    fams = cpl.wait_for(
        lambda: (
            (f := _scrape(control_plane))
            and _value(f, "inferia_deployment_replicas_desired", "inferia_deployment_replicas_desired", **d) is None
            and f
        ),
        10,
        every=0.5,
        what="deleted deployment gone from /metrics",
    )
    api.delete_pool(pool["id"])
    api.delete_model(model["name"])
