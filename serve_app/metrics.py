"""Prometheus metrics of one API replica, exposed with prometheus_client (GET /metrics).

Two kinds of figures:
- events counted here as they happen (the proxy path, heartbeat answers): prometheus_client counters and
  histograms, updated through the hook functions below (`observe_request`, `request_waiting`,
  `observe_heartbeats`); cheap enough for the hot path (a dict lookup and an add);
- the current state of the control plane (nodes, pools, deployments, actor timings, provider calls), read
  by `ReplicaMetrics.refresh()` from the actors and PostgreSQL at most once per `max_age_s` and turned into
  metric families by a custom collector when the registry is rendered.

Label sets are bounded: deployments (ids), pools (names), nodes (ids, at most NODE_SERIES_LIMIT of them),
providers and provider calls, states, HTTP status codes. Nothing is labelled per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# per-node series (heartbeat age, health, up) are exported for at most this many nodes (ordered by id);
# above it `inferia_node_series_omitted` says how many were left out, and the per-pool figures still count all
NODE_SERIES_LIMIT = 2000

NO_DEPLOYMENT = "none"  # label of requests that never reached a replica (no endpoint, bad input)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# ---------------------------------------------------------------- counted on the request path (process-wide:
# one API replica is one process; each replica's registry below registers these same objects)
REQUESTS = Counter(
    "inferia_requests",
    "Inference requests answered by this API replica, by deployment and HTTP status.",
    ["deployment", "status"],
    registry=None,
)
LATENCY = Histogram(
    "inferia_request_duration_seconds",
    "Inference request duration through the proxy (to the last byte of the answer or stream).",
    ["deployment"],
    buckets=_LATENCY_BUCKETS,
    registry=None,
)
TTFT = Histogram(
    "inferia_time_to_first_token_seconds",
    "Streaming requests: time from arrival to the first chunk of the engine's event stream.",
    ["deployment"],
    buckets=_TTFT_BUCKETS,
    registry=None,
)
WAITING = Gauge(
    "inferia_deployment_requests_queued",
    "Requests sent to one of the deployment's engines that have no answer header yet (for a stream: "
    "the engine has not started it).",
    ["deployment"],
    registry=None,
)
HEARTBEAT_RESULTS = Counter(
    "inferia_heartbeat_results",
    "Heartbeats answered by this API replica, by result (accepted, forbidden, unknown_node, gone, other).",
    ["result"],
    registry=None,
)
_HB_RESULT = {200: "accepted", 403: "forbidden", 404: "unknown_node", 410: "gone"}
for _r in (*_HB_RESULT.values(), "other"):
    HEARTBEAT_RESULTS.labels(_r)  # every result is exported from the start (0 until one happens)

_seen_deployments: set[str] = set()
# the labelled children, looked up once per label set: `labels()` costs a lock and a tuple build per call,
# which the proxy's hot path paid three times per request
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def observe_request(deployment_id: str | None, status: int, seconds: float, ttft: float | None = None) -> None:
    """One proxied inference request ended: its deployment (None: it reached no replica), HTTP status,
    duration in seconds and, for a stream, the time to its first chunk."""
    dep = deployment_id or NO_DEPLOYMENT
    _seen_deployments.add(dep)
    _child(REQUESTS, dep, str(status)).inc()
    _child(LATENCY, dep).observe(seconds)
    if ttft is not None:
        _child(TTFT, dep).observe(ttft)


def request_waiting(deployment_id: str | None, delta: int) -> None:
    """+1 when a request is sent to an engine, -1 when its answer header arrived (or the send failed)."""
    if deployment_id:
        _seen_deployments.add(deployment_id)
        _child(WAITING, deployment_id).inc(delta)


def observe_heartbeats(statuses: Iterable[int]) -> None:
    """The answers of one heartbeat request (one status per heartbeat)."""
    counts: dict[str, int] = {}
    for st in statuses:
        r = _HB_RESULT.get(st, "other")
        counts[r] = counts.get(r, 0) + 1
    for r, n in counts.items():
        _child(HEARTBEAT_RESULTS, r).inc(n)


def forget_deployments(keep: set[str]) -> None:
    """Drop the request series of deployments that no longer exist (bounded by the live deployments)."""
    for dep in list(_seen_deployments - keep - {NO_DEPLOYMENT}):
        _seen_deployments.discard(dep)
        for key in [k for k in _children if k[1] == dep]:
            del _children[key]
        for metric in (REQUESTS, LATENCY, TTFT, WAITING):
            for labels in [s for s in _label_sets(metric) if s[0] == dep]:
                try:
                    metric.remove(*labels)
                except KeyError:
                    pass


def _label_sets(metric: Any) -> list[tuple[str, ...]]:
    with metric._lock:  # prometheus_client has no public listing of a metric's children
        return list(metric._metrics)


# ---------------------------------------------------------------- the control plane's current state
@dataclass
class Snapshot:
    """What one refresh read; the collector turns it into metric families."""

    at: float = 0.0
    inventory: dict[str, Any] = field(default_factory=dict)
    deployments_actor: dict[str, Any] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)  # id, model, pool, state, desired
    pools: list[dict[str, Any]] = field(default_factory=list)  # id, name, provider, min/target/max, max cost
    usage: list[dict[str, Any]] = field(default_factory=list)  # pool_id, state, nodes, cost
    provider_calls: list[dict[str, Any]] = field(default_factory=list)
    ongoing: dict[str, int] = field(default_factory=dict)  # node id -> requests in flight from this replica
    replica: dict[str, float] = field(default_factory=dict)  # per-replica counters kept elsewhere


Reader = Callable[[], Awaitable[Snapshot]]


def _g(name: str, doc: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _c(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def families(s: Snapshot) -> Iterator[Metric]:
    """Metric families of one snapshot (pure: unit-tested without Ray)."""
    inv, dep_actor = s.inventory, s.deployments_actor
    pool_name = {p["id"]: p["name"] for p in s.pools}

    # -- nodes, as the inventory sees them
    by_state = GaugeMetricFamily("inferia_nodes", "Nodes in the inventory by state.", labels=["state"])
    for st, n in sorted((inv.get("nodes_by_state") or {}).items()):
        by_state.add_metric([st], n)
    yield by_state

    # -- per pool
    pool_nodes = GaugeMetricFamily("inferia_pool_nodes", "Nodes of the pool by state.", labels=["pool", "state"])
    counts: dict[tuple[str, str], int] = {}
    for n in s.nodes:
        ps = (pool_name.get(n.get("pool_id", ""), n.get("pool_id", "")), str(n.get("state")))
        counts[ps] = counts.get(ps, 0) + 1
    for (pool, st), n in sorted(counts.items()):
        pool_nodes.add_metric([pool, st], n)
    yield pool_nodes
    cost = GaugeMetricFamily(
        "inferia_pool_cost_per_hour", "Summed price per hour of the pool's alive nodes.", labels=["pool"]
    )
    spend: dict[str, float] = {p["id"]: 0.0 for p in s.pools}
    for u in s.usage:
        spend[u["pool_id"]] = spend.get(u["pool_id"], 0.0) + float(u["cost"] or 0.0)
    for pid, v in sorted(spend.items()):
        cost.add_metric([pool_name.get(pid, pid)], round(v, 6))
    yield cost
    limits = {
        "min_nodes": GaugeMetricFamily("inferia_pool_min_nodes", "The pool's min_nodes.", labels=["pool"]),
        "target_nodes": GaugeMetricFamily("inferia_pool_target_nodes", "The pool's target_nodes.", labels=["pool"]),
        "max_nodes": GaugeMetricFamily("inferia_pool_max_nodes", "The pool's max_nodes.", labels=["pool"]),
    }
    max_cost = GaugeMetricFamily(
        "inferia_pool_max_cost_per_hour", "The pool's max_cost_per_hour (absent: no limit).", labels=["pool"]
    )
    info = GaugeMetricFamily(
        "inferia_pool_info", "1 per pool, with its provider and state.", labels=["pool", "provider", "state"]
    )
    for p in s.pools:
        for limit, fam in limits.items():
            fam.add_metric([p["name"]], p[limit])
        if p.get("max_cost_per_hour") is not None:
            max_cost.add_metric([p["name"]], p["max_cost_per_hour"])
        info.add_metric([p["name"], p["provider"], p["state"]], 1)
    yield from limits.values()
    yield max_cost
    yield info

    # -- per node (bounded)
    age = GaugeMetricFamily(
        "inferia_node_heartbeat_age_seconds", "Seconds since the node's last heartbeat.", labels=["node", "pool"]
    )
    health = GaugeMetricFamily(
        "inferia_node_health_score", "The node's last reported health score (0-100).", labels=["node", "pool"]
    )
    up = GaugeMetricFamily(
        "inferia_node_up", "1 when the node is ready with a ready engine (routable).", labels=["node", "pool"]
    )
    alive = sorted((n for n in s.nodes if n.get("state") != "terminated"), key=lambda n: str(n["id"]))
    for n in alive[:NODE_SERIES_LIMIT]:
        labels = [str(n["id"]), pool_name.get(n.get("pool_id", ""), str(n.get("pool_id", "")))]
        if n.get("seconds_since_heartbeat") is not None:
            age.add_metric(labels, float(n["seconds_since_heartbeat"]))
        if n.get("health_score") is not None:
            health.add_metric(labels, float(n["health_score"]))
        up.add_metric(labels, 1.0 if n.get("state") == "ready" and n.get("engine_ready") else 0.0)
    yield age
    yield health
    yield up
    yield _g(
        "inferia_node_series_omitted",
        f"Alive nodes without per-node series (above the limit of {NODE_SERIES_LIMIT}).",
        max(0, len(alive) - NODE_SERIES_LIMIT),
    )

    # -- per deployment
    desired = GaugeMetricFamily(
        "inferia_deployment_replicas_desired", "Replicas the deployment asks for.", labels=["deployment"]
    )
    ready = GaugeMetricFamily(
        "inferia_deployment_replicas_ready", "Replicas ready with a ready engine.", labels=["deployment"]
    )
    ongoing = GaugeMetricFamily(
        "inferia_deployment_requests_ongoing",
        "Requests this API replica has in flight to the deployment's engines.",
        labels=["deployment"],
    )
    dinfo = GaugeMetricFamily(
        "inferia_deployment_info",
        "1 per deployment, with its model, pool and state (join on `deployment`).",
        labels=["deployment", "model", "pool", "state"],
    )
    ready_n: dict[str, int] = {}
    flight: dict[str, int] = {}
    for n in s.nodes:
        dep = n.get("deployment_id")
        if not dep:
            continue
        if n.get("state") == "ready" and n.get("engine_ready"):
            ready_n[dep] = ready_n.get(dep, 0) + 1
        flight[dep] = flight.get(dep, 0) + s.ongoing.get(n["id"], 0)
    dep_states: dict[str, int] = {}
    for d in s.deployments:
        desired.add_metric([d["id"]], d["desired"])
        ready.add_metric([d["id"]], ready_n.get(d["id"], 0))
        ongoing.add_metric([d["id"]], flight.get(d["id"], 0))
        dinfo.add_metric([d["id"], d.get("model") or "", d.get("pool") or "", d["state"]], 1)
        dep_states[d["state"]] = dep_states.get(d["state"], 0) + 1
    yield desired
    yield ready
    yield ongoing
    yield dinfo
    states = GaugeMetricFamily("inferia_deployments", "Deployments by state.", labels=["state"])
    for st, n in sorted(dep_states.items()):
        states.add_metric([st], n)
    yield states

    # -- the control plane
    yield _c("inferia_heartbeats", "Heartbeats accepted by the inventory.", inv.get("heartbeats_total", 0))
    yield _g("inferia_routing_version", "Current routing table version.", inv.get("routing_version", 0))
    for name, stat, what in (
        ("inferia_inventory_sweep_seconds", "sweep", "the health sweep's scan for missed heartbeats"),
        ("inferia_routing_rebuild_seconds", "rebuild", "a routing-table rebuild"),
    ):
        yield _g(name, f"Duration of the last run of {what}.", round(float(inv.get(f"{stat}_last_s", 0.0)), 6))
        yield _g(
            f"{name}_max",
            f"Longest run of {what} in the last 1-2 minutes.",
            round(float(inv.get(f"{stat}_max_s", 0.0)), 6),
        )
    yield _c("inferia_inventory_sweeps", "Health sweeps run by the inventory.", inv.get("sweeps", 0))
    yield _c("inferia_routing_rebuilds", "Routing-table rebuilds that changed something.", inv.get("rebuilds", 0))
    yield _g(
        "inferia_health_sweep_ms",
        "Duration of the last health sweep in ms (inferia_inventory_sweep_seconds, kept for old dashboards).",
        round(float(inv.get("sweep_ms", 0.0)), 3),
    )
    yield _g(
        "inferia_reconcile_ms",
        "Duration of the last deployment reconcile in ms.",
        round(float(dep_actor.get("last_reconcile_ms", 0.0)), 3),
    )
    yield _c("inferia_reconciles", "Deployment reconcile rounds.", dep_actor.get("reconciles", 0))
    yield _g("inferia_redis_up", "1 when the last publish to Redis succeeded.", 1 if inv.get("redis_healthy") else 0)
    calls = CounterMetricFamily(
        "inferia_provider_calls", "Provider calls made by the pool actors.", labels=["provider", "call"]
    )
    errors = CounterMetricFamily(
        "inferia_provider_errors", "Provider calls that raised an error.", labels=["provider", "call"]
    )
    merged: dict[tuple[str, str], list[int]] = {}
    for row in s.provider_calls:
        slot = merged.setdefault((row["provider"], row["call"]), [0, 0])
        slot[0] += int(row["calls"])
        slot[1] += int(row["errors"])
    for (prov, call), (n, e) in sorted(merged.items()):
        calls.add_metric([prov, call], n)
        errors.add_metric([prov, call], e)
    yield calls
    yield errors
    yield _c(
        "inferia_heartbeat_requests",
        "Heartbeat HTTP requests received by this API replica.",
        s.replica.get("heartbeat_requests", 0),
    )
    yield _c(
        "inferia_heartbeat_batches",
        "Inventory calls made for heartbeats by this API replica.",
        s.replica.get("heartbeat_batches", 0),
    )
    yield _c(
        "inferia_proxy_requests",
        "Inference requests proxied by this API replica.",
        s.replica.get("proxy_requests", 0),
    )
    yield _g("inferia_metrics_snapshot_age_seconds", "Age of the state these figures were read from.", s.at)


class _StateCollector(Collector):
    def __init__(self, owner: ReplicaMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterable[Metric]:
        snap = self.owner.snapshot
        if snap is None:
            return []
        return list(families(snap))


class ReplicaMetrics:
    """The registry of one API replica: the request-path metrics plus the state collector."""

    def __init__(self, read: Reader, max_age_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.read, self.max_age_s, self.clock = read, max_age_s, clock
        self.registry = CollectorRegistry(auto_describe=False)
        for metric in (REQUESTS, LATENCY, TTFT, WAITING, HEARTBEAT_RESULTS):
            self.registry.register(metric)
        self.registry.register(_StateCollector(self))
        self.snapshot: Snapshot | None = None
        self._read_at = -1e18
        self._text: bytes | None = None
        self._text_at = -1e18
        self._lock: asyncio.Lock | None = None

    async def refresh(self) -> None:
        """Read the current state unless the last read is younger than max_age_s (concurrent scrapes share)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        if self.clock() - self._read_at < self.max_age_s:
            return
        snap = await self.read()
        self._read_at = self.clock()
        self.snapshot = snap
        forget_deployments({d["id"] for d in snap.deployments})

    async def render(self) -> bytes:
        """The exposition text, made at most once per max_age_s. prometheus_client writes it in a worker
        thread: at 10,000 nodes it is about 16,000 series (bench/metrics.py), which must not stall the
        heartbeats and the proxy on this replica's event loop."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._text is not None and self.clock() - self._text_at < self.max_age_s:
                return self._text
            await self._refresh()
            if self.snapshot is not None:
                self.snapshot.at = round(max(0.0, self.clock() - self._read_at), 3)
            self._text = await asyncio.to_thread(generate_latest, self.registry)
            self._text_at = self.clock()
            return self._text
