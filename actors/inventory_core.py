"""The inventory's logic without Ray: heartbeats, health sweep, node states and the routing table.

Driven by an injected clock so unit tests step time by hand. The Ray actor (actors/inventory.py)
is a thin shell that feeds it heartbeat batches, runs `sweep()` in a loop and flushes
`take_writes()` to Postgres in batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from actors.endpoints import EndpointRule
from actors.node_feed import NodeFeed, feed_answer
from actors.records import secret_matches
from actors.states import NODE_TERMINAL, NodeState, node_can

Clock = Callable[[], float]

# a feed answer with more changed nodes than this and than half of all is a full snapshot (as cheap to read)
FULL_AFTER = 1000


class HeartbeatStatus(IntEnum):
    OK = 200
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409  # an endpoint change the rule refuses (actors/endpoints.py)
    GONE = 410


@dataclass
class Heartbeat:
    """One node's report. `token` is the node's own token (checked against its hash)."""

    token: str | None
    node_id: str | None = None
    provider: str | None = None
    provider_instance_id: str | None = None
    previous_provider_instance_id: str | None = None
    state: str = "ready"  # starting | ready | failed
    health_score: int = 100
    endpoint: str | None = None
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    # per-node monotonic sequence of one agent start (start_id): an older beat is ignored. None: old agents,
    # provider-relayed health (Nosana sidecar, Kubernetes): applied as they come
    seq: int | None = None
    start_id: str | None = None


@dataclass
class NodeEntry:
    id: str
    pool_id: str
    provider: str
    state: NodeState
    token_hash: str
    deployment_id: str | None = None
    model_name: str | None = None
    served_model: str | None = None
    endpoint: str | None = None
    provider_instance_id: str | None = None
    last_seen: float = 0.0
    state_since: float = 0.0
    health_score: int | None = None
    engine_ready: bool = False
    reason: str | None = None
    failed_by_node: bool = False  # the node itself reported the failure (not just silence)
    metrics: dict[str, Any] = field(default_factory=dict)
    beat_start_id: str | None = None  # the agent start and sequence number of the last applied beat
    beat_seq: int | None = None
    relayed: bool = False  # its health comes from its pool relaying the provider's (not from an agent)

    def view(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "pool_id": self.pool_id,
            "provider": self.provider,
            "state": str(self.state),
            "deployment_id": self.deployment_id,
            "model_name": self.model_name,
            "endpoint": self.endpoint,
            "provider_instance_id": self.provider_instance_id,
            "health_score": self.health_score,
            "engine_ready": self.engine_ready,
            "reason": self.reason,
            "failed_by_node": self.failed_by_node,
            "seconds_since_heartbeat": round(now - self.last_seen, 3) if self.last_seen else None,
            "seconds_in_state": round(now - self.state_since, 3),
            "metrics": self.metrics,
        }


# an API replica's load report (report_load, every ~0.5 s) counts this long; a replica that stops is forgotten
LOAD_REPORT_TTL_S = 3.0


@dataclass
class LoadReport:
    at: float
    ongoing: dict[str, int]  # node id -> requests in flight through this replica's proxy
    queued: dict[str, int]  # deployment id -> requests waiting for an endpoint
    # deployment id -> wall time of the newest request it answered (the autoscaler's idle clock: a request
    # shorter than the report period never shows in `ongoing`)
    last_request: dict[str, float] = field(default_factory=dict)


@dataclass
class HeartbeatResult:
    status: HeartbeatStatus
    node_id: str | None = None
    message: str | None = None


class DurationStat:
    """The last duration of a repeated step and the longest one of the recent past.

    The maximum covers between one and two windows: two fixed buckets, the current and the previous.
    """

    def __init__(self, window_s: float = 60.0, clock: Clock = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.last_s = 0.0
        self.count = 0
        self._bucket_start = clock()
        self._cur_max = 0.0
        self._prev_max = 0.0

    def _roll(self) -> None:
        now = self.clock()
        if now - self._bucket_start < self.window_s:
            return
        stale = now - self._bucket_start >= 2 * self.window_s
        self._prev_max = 0.0 if stale else self._cur_max
        self._cur_max = 0.0
        self._bucket_start = now

    def add(self, seconds: float) -> None:
        self._roll()
        self.last_s = seconds
        self.count += 1
        self._cur_max = max(self._cur_max, seconds)

    @property
    def max_s(self) -> float:
        self._roll()
        return max(self._cur_max, self._prev_max)

    def view(self) -> dict[str, float]:
        return {"last_s": self.last_s, "max_s": self.max_s, "count": float(self.count)}


class InventoryCore:
    def __init__(
        self,
        heartbeat_timeout_s: float,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        sweeping: bool = True,
        feed_epoch: str | None = None,
    ) -> None:
        self.timeout = heartbeat_timeout_s
        self.clock = clock
        self.wall = wall
        self.nodes: dict[str, NodeEntry] = {}
        self._by_instance: dict[tuple[str, str], str] = {}
        # pending writes: node_id -> (expected states, new state, reason); node_id -> (wall time, score)
        self._state_writes: dict[str, tuple[tuple[NodeState, ...], NodeState, str | None]] = {}
        self._beat_writes: dict[str, tuple[datetime, int | None]] = {}
        self.version = int(wall() * 1000)  # monotonic across restarts as long as the wall clock is
        self.changed_at = wall()  # wall time of the last version change (gateways measure staleness)
        self._routes: dict[str, list[dict[str, Any]]] = {}
        self._routes_key: dict[str, list[tuple[Any, ...]]] = {}  # _strip_scores(self._routes)
        self._dirty = True
        # paused until the heartbeat ingress is up: "unknown is not dead"
        self.sweeping = sweeping
        self.ingress_beat_at = float("-inf")  # when node agents' heartbeats last arrived through an API replica
        self.relay_at: dict[str, float] = {}  # pool id -> when that pool last relayed its provider's health
        self.heartbeats_total = 0
        self.transitions_total = 0
        self.stale_beats_total = 0  # heartbeats older than one already applied (ignored)
        self._load: dict[str, LoadReport] = {}  # API replica id -> its last load report
        self.rebuilds = DurationStat(clock=clock)  # routing-table rebuilds (not the no-op refreshes)
        self.endpoint_rule: EndpointRule | None = None  # judges endpoints sent to the API (actors/endpoints.py)
        # node changes the deployments actor reads (actors/node_feed.py): a new epoch every start
        self.feed = NodeFeed(epoch=feed_epoch)

    # ------------------------------------------------------------ registration
    def register(self, info: dict[str, Any]) -> NodeEntry:
        """Add or refresh a node (idempotent). A terminated node stays terminated."""
        now = self.clock()
        node_id = info["id"]
        entry = self.nodes.get(node_id)
        if entry is None:
            entry = NodeEntry(
                id=node_id,
                pool_id=info["pool_id"],
                provider=info["provider"],
                state=NodeState(info.get("state", NodeState.PROVISIONING)),
                token_hash=info["token_hash"],
                last_seen=now,
                state_since=now,
            )
            self.nodes[node_id] = entry
        for key in ("deployment_id", "model_name", "served_model", "endpoint", "provider_instance_id"):
            if info.get(key) is not None:
                setattr(entry, key, info[key])
        if info.get("token_hash"):
            entry.token_hash = info["token_hash"]
        if entry.provider_instance_id:
            self._by_instance[(entry.provider, entry.provider_instance_id)] = node_id
        self._dirty = True
        self.feed.touch(node_id)
        return entry

    def forget(self, node_id: str) -> None:
        entry = self.nodes.pop(node_id, None)
        if entry and entry.provider_instance_id:
            self._by_instance.pop((entry.provider, entry.provider_instance_id), None)
        self._dirty = True
        self.feed.touch(node_id)

    # ------------------------------------------------------------ transitions
    def transition(self, node_id: str, to: NodeState, reason: str | None = None) -> bool:
        """Explicit, validated transition; False when illegal or unknown (idempotent: same state is True)."""
        entry = self.nodes.get(node_id)
        if entry is None:
            return False
        if entry.state == to:
            if reason and entry.reason != reason:
                entry.reason = reason
                self.feed.touch(node_id)
            return True
        if not node_can(entry.state, to):
            return False
        prev = entry.state
        entry.state = to
        entry.reason = reason
        entry.state_since = self.clock()
        if to != NodeState.READY:
            entry.engine_ready = entry.engine_ready and to == NodeState.PROVISIONING
        # CAS in the database: only from the state we moved from (or an earlier pending one)
        pending = self._state_writes.get(node_id)
        expected = (pending[0] if pending else ()) + (prev,)
        self._state_writes[node_id] = (tuple(dict.fromkeys(expected)), to, reason)
        self.transitions_total += 1
        self._dirty = True
        self.feed.touch(node_id)
        return True

    # ------------------------------------------------------------ heartbeats
    def _resolve(self, hb: Heartbeat) -> NodeEntry | None:
        if hb.node_id:
            return self.nodes.get(hb.node_id)
        if hb.provider and hb.provider_instance_id:
            node_id = self._by_instance.get((hb.provider, hb.provider_instance_id))
            if node_id is None and hb.previous_provider_instance_id:
                node_id = self._by_instance.get((hb.provider, hb.previous_provider_instance_id))
            return self.nodes.get(node_id) if node_id else None
        return None

    def heartbeat(self, hb: Heartbeat, checked: bool = False) -> HeartbeatResult:
        """checked: sent to the API (agents, sidecars), so an endpoint change must pass the endpoint rule."""
        entry = self._resolve(hb)
        if entry is None:
            return HeartbeatResult(HeartbeatStatus.NOT_FOUND, hb.node_id, "unknown node")
        if not secret_matches(hb.token, entry.token_hash):
            return HeartbeatResult(HeartbeatStatus.FORBIDDEN, entry.id, "token does not match this node")
        if entry.state in NODE_TERMINAL or entry.state == NodeState.FAILED:
            return HeartbeatResult(HeartbeatStatus.GONE, entry.id, f"node is {entry.state}")
        if self._stale(entry, hb):  # a late beat (e.g. retried on the fallback port): answered, not applied
            self.stale_beats_total += 1
            return HeartbeatResult(HeartbeatStatus.OK, entry.id, "stale heartbeat ignored")
        if entry.state == NodeState.DRAINING:  # keeps serving in-flight work until deprovisioned; never routed
            entry.last_seen = self.clock()
            return HeartbeatResult(HeartbeatStatus.OK, entry.id)
        if checked and self.endpoint_rule is not None and (why := self.endpoint_rule.judge(entry, hb)):
            return HeartbeatResult(HeartbeatStatus.CONFLICT, entry.id, why)
        self.heartbeats_total += 1
        now = self.clock()
        entry.last_seen = now
        entry.health_score = max(0, min(100, int(hb.health_score)))
        if hb.metrics:
            entry.metrics = hb.metrics
        # identity kept across a provider-side redeploy (new instance id reported with the old one)
        if hb.provider_instance_id and hb.provider_instance_id != entry.provider_instance_id:
            if entry.provider_instance_id:
                self._by_instance.pop((entry.provider, entry.provider_instance_id), None)
            entry.provider_instance_id = hb.provider_instance_id
            self._by_instance[(entry.provider, hb.provider_instance_id)] = entry.id
            self._dirty = True
        if hb.endpoint and hb.endpoint != entry.endpoint:
            entry.endpoint = hb.endpoint
            self._dirty = True
            self.feed.touch(entry.id)
        self._beat_writes[entry.id] = (datetime.fromtimestamp(self.wall(), UTC), entry.health_score)
        if hb.state == "ready":
            if entry.failed_by_node:
                entry.failed_by_node = False
                self.feed.touch(entry.id)
            if not entry.engine_ready:
                entry.engine_ready = True
                self._dirty = True
                self.feed.touch(entry.id)
            if entry.state in (NodeState.PROVISIONING, NodeState.UNHEALTHY):
                self.transition(entry.id, NodeState.READY)
        elif hb.state == "failed":
            entry.engine_ready = False
            entry.failed_by_node = True
            self._dirty = True
            self.feed.touch(entry.id)
            if entry.state == NodeState.READY:
                self.transition(entry.id, NodeState.UNHEALTHY, hb.reason or "node reported failure")
            elif entry.state == NodeState.PROVISIONING:  # never came up: counts as a failed replica
                self.transition(entry.id, NodeState.FAILED, hb.reason or "node reported failure")
        else:  # starting
            if hb.reason and hb.reason != entry.reason:  # e.g. why a pod is still pending: shown to the user
                entry.reason = hb.reason
                self.feed.touch(entry.id)
            if entry.engine_ready:
                entry.engine_ready = False
                self._dirty = True
                self.feed.touch(entry.id)
        return HeartbeatResult(HeartbeatStatus.OK, entry.id)

    @staticmethod
    def _stale(entry: NodeEntry, hb: Heartbeat) -> bool:
        """True for a beat not newer than the last applied one of the same agent start; otherwise the beat's
        sequence becomes the node's last. A new start_id (the agent restarted) is applied; no seq: as before."""
        if hb.seq is None:
            return False
        if hb.start_id == entry.beat_start_id and entry.beat_seq is not None and hb.seq <= entry.beat_seq:
            return True
        entry.beat_start_id, entry.beat_seq = hb.start_id, hb.seq
        return False

    def heartbeat_batch(self, beats: Iterable[Heartbeat], checked: bool = False) -> list[HeartbeatResult]:
        return [self.heartbeat(b, checked) for b in beats]

    def relay(self, pool_id: str, beats: Iterable[Heartbeat], first: bool = False) -> list[HeartbeatResult]:
        """A pool relays its provider's health (each interval, even with nothing to say). first: the first relay
        of a pool actor's start; its last start knew nothing meanwhile, so its relayed nodes count from now (as
        grace_all does for agents when the ingress restarts)."""
        now = self.clock()
        if first:
            for e in self.nodes.values():
                if e.relayed and e.pool_id == pool_id:
                    e.last_seen = max(e.last_seen, now)
        self.relay_at[pool_id] = now
        results = []
        for b in beats:
            r = self.heartbeat(b)
            node = self.nodes.get(r.node_id or "") if r.status == HeartbeatStatus.OK else None
            if node is not None:
                node.relayed = True
            results.append(r)
        return results

    # ------------------------------------------------------------ load (in-flight requests, from the API)
    def report_load(
        self,
        replica_id: str,
        ongoing: dict[str, int],
        queued: dict[str, int] | None = None,
        last_request: dict[str, float] | None = None,
    ) -> None:
        """One API replica's requests in flight per node (and waiting per deployment); replaces its last
        report. The figures are summed over the replicas whose report is younger than LOAD_REPORT_TTL_S."""
        now = self.clock()
        self._load[replica_id] = LoadReport(
            now,
            {str(k): int(v) for k, v in ongoing.items() if int(v) > 0},
            {str(k): int(v) for k, v in (queued or {}).items() if int(v) > 0},
            {str(k): float(v) for k, v in (last_request or {}).items()},
        )
        for rid in [r for r, rep in self._load.items() if now - rep.at > LOAD_REPORT_TTL_S]:
            del self._load[rid]

    def pressure(self, replica_id: str) -> dict[str, float]:
        """For one API replica's balancer: per node, what it cannot see itself: the requests the other API
        replicas have in flight there plus the engine's own waiting queue (from its heartbeats' metrics)."""
        out: dict[str, float] = {}
        now = self.clock()
        for rid, rep in self._load.items():
            if rid == replica_id or now - rep.at > LOAD_REPORT_TTL_S:
                continue
            for nid, n in rep.ongoing.items():
                out[nid] = out.get(nid, 0.0) + n
        for nid, e in self.nodes.items():
            waiting = e.metrics.get("engine_waiting") if e.metrics else None
            if isinstance(waiting, int | float) and waiting > 0 and e.state == NodeState.READY:
                out[nid] = out.get(nid, 0.0) + float(waiting)
        return out

    def _fresh_load(self) -> list[LoadReport]:
        now = self.clock()
        return [r for r in self._load.values() if now - r.at <= LOAD_REPORT_TTL_S]

    def node_load(self, node_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Requests in flight per node, summed over the API replicas (only nodes with some, unless named)."""
        total: dict[str, int] = {}
        for rep in self._fresh_load():
            for nid, n in rep.ongoing.items():
                total[nid] = total.get(nid, 0) + n
        if node_ids is None:
            return total
        return {nid: total.get(nid, 0) for nid in node_ids}

    def deployment_load(self) -> dict[str, dict[str, float]]:
        """Per deployment: `ongoing` (in flight on its nodes) and `queued` (waiting), summed over the replicas,
        and `last_request_at` (the newest answered request's wall time) when a replica reported one."""
        out: dict[str, dict[str, float]] = {}
        for nid, n in self.node_load().items():
            e = self.nodes.get(nid)
            if e is not None and e.deployment_id:
                out.setdefault(e.deployment_id, {"ongoing": 0, "queued": 0})["ongoing"] += n
        for rep in self._fresh_load():
            for dep, n in rep.queued.items():
                out.setdefault(dep, {"ongoing": 0, "queued": 0})["queued"] += n
            for dep, t in rep.last_request.items():
                entry = out.setdefault(dep, {"ongoing": 0, "queued": 0})
                entry["last_request_at"] = max(entry.get("last_request_at", 0.0), t)
        return out

    # ------------------------------------------------------------ health sweep
    def grace_all(self) -> None:
        """The heartbeat ingress (re)started: heartbeats could not arrive before, so count from now."""
        now = self.clock()
        for e in self.nodes.values():
            e.last_seen = max(e.last_seen, now)
        self.sweeping = True

    def ingress_started(self) -> bool:
        """An API replica started. When agents' heartbeats still arrived within the last third of the timeout
        (about one interval: through the other API replicas), none was kept from arriving and nothing is
        granted, so a node that died just before is still caught in time; else (the only replica restarted,
        or the first start) grace_all. True when it granted."""
        if self.sweeping and self.clock() - self.ingress_beat_at < self.timeout / 3:
            return False
        self.grace_all()
        return True

    def sweep(self) -> list[str]:
        """Mark nodes whose heartbeats stopped as unhealthy; returns the ids that changed. A node whose health
        its pool relays is not marked while that pool's relay itself is silent (see relay)."""
        if not self.sweeping:
            return []
        now = self.clock()
        deadline = now - self.timeout
        changed = []
        relaying: set[str] = set()  # the pools that some relayed node still belongs to
        for entry in self.nodes.values():
            if entry.relayed:
                relaying.add(entry.pool_id)
            if entry.state == NodeState.READY and entry.last_seen < deadline:
                if entry.relayed and self.relay_at.get(entry.pool_id, float("-inf")) < deadline:
                    continue  # its pool's relay is down (restarting): unknown, not dead
                missed = now - entry.last_seen
                if self.transition(entry.id, NodeState.UNHEALTHY, f"no heartbeat for {missed:.1f}s"):
                    changed.append(entry.id)
        # bounded: a silent pool none of whose nodes is left (deleted, or emptied) is forgotten; it comes back
        # with its next relay
        for pool_id in [p for p, at in self.relay_at.items() if at < deadline and p not in relaying]:
            del self.relay_at[pool_id]
        return changed

    # ------------------------------------------------------------ routing table
    def _build_routes(self) -> dict[str, list[dict[str, Any]]]:
        routes: dict[str, list[dict[str, Any]]] = {}
        for e in self.nodes.values():
            if e.state != NodeState.READY or not e.engine_ready or not e.endpoint or not e.model_name:
                continue
            routes.setdefault(e.model_name, []).append(
                {
                    "deployment_id": e.deployment_id,
                    "node_id": e.id,
                    "pool_id": e.pool_id,
                    "endpoint": e.endpoint,
                    "served_model": e.served_model or e.model_name,
                    "health_score": e.health_score,
                }
            )
        for entries in routes.values():
            entries.sort(key=lambda r: r["node_id"])
        return routes

    def refresh_routes(self) -> bool:
        """Rebuild when something changed; bump the version only if the content changed."""
        if not self._dirty:
            return False
        t0 = time.perf_counter()
        self._dirty = False
        new = self._build_routes()
        key = _strip_scores(new)  # the previous table's key is kept: one strip per rebuild, not two
        changed = key != self._routes_key
        self._routes, self._routes_key = new, key
        if changed:
            self.version += 1
            self.changed_at = self.wall()
        self.rebuilds.add(time.perf_counter() - t0)
        return changed

    def routing_table(self) -> dict[str, Any]:
        self.refresh_routes()
        return self.current_table()

    def current_table(self) -> dict[str, Any]:
        """The table as last rebuilt (no rebuild: the actor coalesces rebuilds of bursts of changes)."""
        return {"version": self.version, "changed_at": round(self.changed_at, 6), "models": self._routes}

    # ------------------------------------------------------------ persistence
    def take_writes(
        self,
    ) -> tuple[list[tuple[str, tuple[NodeState, ...], NodeState, str | None]], list[tuple[str, datetime, int | None]]]:
        states = [(k, exp, new, reason) for k, (exp, new, reason) in self._state_writes.items()]
        beats = [(k, at, score) for k, (at, score) in self._beat_writes.items()]
        self._state_writes.clear()
        self._beat_writes.clear()
        return states, beats

    def restore_writes(
        self,
        states: list[tuple[str, tuple[NodeState, ...], NodeState, str | None]],
        beats: list[tuple[str, datetime, int | None]],
    ) -> None:
        """Put back writes that failed to flush (Postgres down); newer pending ones win."""
        for k, exp, new, reason in states:
            cur = self._state_writes.get(k)
            if cur is None:
                self._state_writes[k] = (exp, new, reason)
            else:  # a newer transition is pending: it must also match what the database still holds
                self._state_writes[k] = (tuple(dict.fromkeys(exp + cur[0])), cur[1], cur[2])
        for k, at, score in beats:
            self._beat_writes.setdefault(k, (at, score))

    # ------------------------------------------------------------ views
    def snapshot(self, deployment_only: bool = False) -> list[dict[str, Any]]:
        now = self.clock()
        return [e.view(now) for e in self.nodes.values() if not deployment_only or e.deployment_id]

    def node_changes(self, epoch: str | None, version: int, deployment_only: bool = True) -> dict[str, Any]:
        """The nodes changed after `version` of `epoch` (actors/node_feed.py), or every node (`full`) when the
        reader must resync or when most nodes changed. deployment_only: nodes without a deployment are left
        out (one that lost its deployment, or is gone, is in `removed`)."""
        ids = self.feed.changed_since(epoch, version)
        now = self.clock()
        if ids is None or len(ids) > max(FULL_AFTER, len(self.nodes) // 2):
            return feed_answer(self.feed.epoch, self.feed.version, True, self.snapshot(deployment_only), [])
        nodes: list[dict[str, Any]] = []
        removed: list[str] = []
        for node_id in ids:
            e = self.nodes.get(node_id)
            if e is None or (deployment_only and not e.deployment_id):
                removed.append(node_id)
            else:
                nodes.append(e.view(now))
        return feed_answer(self.feed.epoch, self.feed.version, False, nodes, removed)

    def engine_metrics(self, deployment_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The last engine metrics of the nodes of these deployments (the autoscaler's signals; not in the
        node feed: they change with every heartbeat)."""
        wanted = set(deployment_ids)
        if not wanted:
            return {}
        return {e.id: e.metrics for e in self.nodes.values() if e.deployment_id in wanted and e.metrics}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.nodes.values():
            out[str(e.state)] = out.get(str(e.state), 0) + 1
        return out


def _strip_scores(routes: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[Any, ...]]]:
    # health-score jitter alone does not publish a new version
    return {
        m: [(r["deployment_id"], r["node_id"], r["endpoint"], r["served_model"]) for r in rs]
        for m, rs in routes.items()
    }
