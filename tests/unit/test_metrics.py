"""/metrics from prometheus_client: the state collector's families, the request-path hooks, bounded labels,
the snapshot cache (one read per max_age), and the text format parsed back by prometheus_client's parser."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from serve_app import metrics
from serve_app.metrics import NODE_SERIES_LIMIT, ReplicaMetrics, Snapshot, families
from tests.unit.fakes import FakeClock


def _node(i: int, state: str = "ready", dep: str | None = "dep-a", pool: str = "pool-1", **kw: Any) -> dict[str, Any]:
    return {
        "id": f"node-{i:05d}",
        "pool_id": pool,
        "state": state,
        "deployment_id": dep,
        "engine_ready": state == "ready",
        "health_score": 90,
        "seconds_since_heartbeat": 1.5,
        **kw,
    }


def _snapshot(nodes: list[dict[str, Any]]) -> Snapshot:
    return Snapshot(
        inventory={
            "nodes_by_state": {"ready": 2, "unhealthy": 1},
            "heartbeats_total": 42,
            "routing_version": 7,
            "sweep_last_s": 0.001,
            "rebuild_last_s": 0.002,
            "sweeps": 10,
            "rebuilds": 3,
            "redis_healthy": True,
            "sweep_ms": 1.0,
        },
        deployments_actor={"reconciles": 5, "last_reconcile_ms": 2.5},
        nodes=nodes,
        deployments=[
            {"id": "dep-a", "model": "tiny", "pool": "gpu", "state": "running", "desired": 3},
            {"id": "dep-b", "model": "big", "pool": "gpu", "state": "stopped", "desired": 0},
        ],
        pools=[
            {
                "id": "pool-1",
                "name": "gpu",
                "provider": "local",
                "state": "active",
                "min_nodes": 1,
                "target_nodes": 2,
                "max_nodes": 8,
                "max_cost_per_hour": 10.0,
            }
        ],
        usage=[
            {"pool_id": "pool-1", "state": "ready", "nodes": 2, "cost": 3.0},
            {"pool_id": "pool-1", "state": "unhealthy", "nodes": 1, "cost": 1.5},
        ],
        provider_calls=[
            {"provider": "local", "call": "provision_node", "calls": 4, "errors": 1},
            {"provider": "local", "call": "provision_node", "calls": 2, "errors": 0},  # a second pool host
        ],
        ongoing={"node-00000": 2, "node-00001": 1},
        replica={"heartbeat_requests": 11, "heartbeat_batches": 4, "proxy_requests": 9},
    )


def _samples(snap: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families(snap) for s in f.samples}


def test_state_families_per_deployment_pool_node_and_control_plane() -> None:
    nodes = [_node(0), _node(1), _node(2, "unhealthy"), _node(3, "ready", dep=None)]
    s = _samples(_snapshot(nodes))
    assert s[("inferia_deployment_replicas_desired", (("deployment", "dep-a"),))] == 3
    assert s[("inferia_deployment_replicas_ready", (("deployment", "dep-a"),))] == 2
    assert s[("inferia_deployment_replicas_ready", (("deployment", "dep-b"),))] == 0
    assert s[("inferia_deployment_requests_ongoing", (("deployment", "dep-a"),))] == 3
    key = (("deployment", "dep-a"), ("model", "tiny"), ("pool", "gpu"), ("state", "running"))
    assert s[("inferia_deployment_info", key)] == 1
    assert s[("inferia_deployments", (("state", "running"),))] == 1
    assert s[("inferia_pool_nodes", (("pool", "gpu"), ("state", "ready")))] == 3
    assert s[("inferia_pool_nodes", (("pool", "gpu"), ("state", "unhealthy")))] == 1
    assert s[("inferia_pool_cost_per_hour", (("pool", "gpu"),))] == 4.5
    assert s[("inferia_pool_max_nodes", (("pool", "gpu"),))] == 8
    assert s[("inferia_pool_max_cost_per_hour", (("pool", "gpu"),))] == 10.0
    assert s[("inferia_node_heartbeat_age_seconds", (("node", "node-00002"), ("pool", "gpu")))] == 1.5
    assert s[("inferia_node_up", (("node", "node-00002"), ("pool", "gpu")))] == 0
    assert s[("inferia_node_up", (("node", "node-00001"), ("pool", "gpu")))] == 1
    assert s[("inferia_node_health_score", (("node", "node-00001"), ("pool", "gpu")))] == 90
    assert s[("inferia_nodes", (("state", "unhealthy"),))] == 1
    assert s[("inferia_heartbeats_total", ())] == 42
    assert s[("inferia_routing_version", ())] == 7
    assert s[("inferia_routing_rebuilds_total", ())] == 3
    assert s[("inferia_reconciles_total", ())] == 5
    assert s[("inferia_reconcile_ms", ())] == 2.5
    assert s[("inferia_provider_calls_total", (("call", "provision_node"), ("provider", "local")))] == 6
    assert s[("inferia_provider_errors_total", (("call", "provision_node"), ("provider", "local")))] == 1
    assert s[("inferia_heartbeat_batches_total", ())] == 4
    assert s[("inferia_proxy_requests_total", ())] == 9
    assert s[("inferia_redis_up", ())] == 1
    assert s[("inferia_node_series_omitted", ())] == 0


def test_node_series_are_capped() -> None:
    nodes = [_node(i) for i in range(NODE_SERIES_LIMIT + 25)] + [_node(99_999, "terminated")]
    s = _samples(_snapshot(nodes))
    per_node = [k for k in s if k[0] == "inferia_node_up"]
    assert len(per_node) == NODE_SERIES_LIMIT
    assert s[("inferia_node_series_omitted", ())] == 25
    assert s[("inferia_pool_nodes", (("pool", "gpu"), ("state", "ready")))] == NODE_SERIES_LIMIT + 25


async def test_registry_renders_parseable_text_and_caches_the_snapshot() -> None:
    clock = FakeClock()
    reads: list[float] = []

    async def read() -> Snapshot:
        reads.append(clock())
        return _snapshot([_node(0), _node(1)])

    rm = ReplicaMetrics(read, max_age_s=1.0, clock=clock)
    metrics.observe_request("dep-a", 200, 0.12, ttft=0.03)
    metrics.observe_request("dep-a", 503, 0.01)
    metrics.observe_request(None, 503, 0.001)
    metrics.request_waiting("dep-a", +1)
    metrics.observe_heartbeats([200, 200, 403, 410, 404, 500])
    text = (await rm.render()).decode()
    await rm.render()
    assert len(reads) == 1  # concurrent or quick scrapes share one read
    clock.advance(1.5)
    await rm.render()
    assert len(reads) == 2
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    req = {
        (s.labels["deployment"], s.labels["status"]): s.value
        for s in parsed["inferia_requests"].samples
        if s.name.endswith("_total")
    }
    assert req[("dep-a", "200")] >= 1 and req[("dep-a", "503")] >= 1 and req[("none", "503")] >= 1
    hist = {
        s.name: s
        for s in parsed["inferia_time_to_first_token_seconds"].samples
        if s.labels.get("deployment") == "dep-a"
    }
    assert hist["inferia_time_to_first_token_seconds_count"].value >= 1
    hb = {s.labels["result"]: s.value for s in parsed["inferia_heartbeat_results"].samples if s.name.endswith("_total")}
    assert hb["accepted"] >= 2 and hb["forbidden"] >= 1 and hb["gone"] >= 1 and hb["unknown_node"] >= 1
    assert hb["other"] >= 1
    assert parsed["inferia_deployment_requests_queued"].type == "gauge"
    assert parsed["inferia_pool_cost_per_hour"].type == "gauge"
    metrics.request_waiting("dep-a", -1)


async def test_series_of_deleted_deployments_are_dropped() -> None:
    metrics.observe_request("dep-gone", 200, 0.1)
    metrics.request_waiting("dep-gone", +1)

    async def read() -> Snapshot:
        return _snapshot([])  # dep-a and dep-b exist; dep-gone does not

    rm = ReplicaMetrics(read, max_age_s=0.0)
    text = (await rm.render()).decode()
    assert "dep-gone" not in text
    assert 'deployment="dep-a"' in text
