"""The deployment reconciler's decisions, without Ray or I/O.

`plan()` compares each deployment's desired replicas with what the inventory observes and returns
the actions that close the gap. It is level-triggered and idempotent: running it twice on the same
observations yields the same actions, and the executor (actors/deployment.py) makes each action
idempotent too.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.states import DeploymentState, NodeState, deployment_can

Clock = Callable[[], float]
D = DeploymentState

ALIVE = {NodeState.PROVISIONING, NodeState.READY, NodeState.UNHEALTHY}


@dataclass(frozen=True)
class CreateReplicas:
    deployment_id: str
    count: int


@dataclass(frozen=True)
class RemoveReplica:
    deployment_id: str
    node_id: str
    reason: str
    # drain first (out of the routing table, in-flight requests finish, bounded by INFERIA_DRAIN_TIMEOUT_S);
    # False for a dead node (failed, or its agent reported the engine gone): terminated at once
    drain: bool = True


@dataclass(frozen=True)
class SetState:
    deployment_id: str
    state: DeploymentState
    error: str | None = None


Action = CreateReplicas | RemoveReplica | SetState


@dataclass
class DeploymentView:
    id: str
    state: DeploymentState
    desired: int
    generation: int = 1
    error: str | None = None  # what the deployment's row says now


# distinct error texts kept per deployment (the most frequent are shown), and their length
MAX_ERROR_KINDS = 20
MAX_ERROR_LEN = 300
FAILURE_REPORT = "replica failures with none ready:"


@dataclass
class _Track:
    failures: int = 0
    last_error: str | None = None
    next_create_at: float = 0.0
    counted: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)  # error text -> failures with it (since the last ready)

    def summary(self, top: int = 3) -> str:
        shown = [f"{msg!r} x{n}" for msg, n in self.errors.most_common(top)]
        more = len(self.errors) - len(shown)
        return "; ".join(shown) + (f"; and {more} other error(s)" if more > 0 else "")


class DeploymentPlanner:
    def __init__(
        self,
        *,
        replace_grace_s: float = 0.0,
        provision_timeout_s: float = 600.0,
        max_failures: int = 3,
        failure_ratio: float = 0.5,
        backoff_base_s: float = 2.0,
        backoff_max_s: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.replace_grace_s = replace_grace_s
        self.provision_timeout_s = provision_timeout_s
        self.max_failures = max_failures
        self.failure_ratio = failure_ratio
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self._track: dict[str, _Track] = {}
        # after plan(): whether its answer may change with time alone (a node provisioning or unhealthy, a
        # deployment short of replicas: timeouts, grace, backoff); if not, and it planned nothing, the same
        # deployments and nodes plan nothing later either (the executor's quiet rounds rely on it)
        self.time_bound = False

    def threshold(self, desired: int) -> int:
        """Failures with no ready replica that fail a deployment: relative to its size (3 capacity errors early
        in a 500-replica roll-out are not a failed deployment), at least max_failures."""
        return max(self.max_failures, math.ceil(self.failure_ratio * desired))

    def forget(self, deployment_id: str) -> None:
        self._track.pop(deployment_id, None)

    def record_failure(self, deployment_id: str, node_id: str, reason: str | None) -> None:
        t = self._track.setdefault(deployment_id, _Track())
        if node_id in t.counted:
            return
        t.counted.add(node_id)
        t.failures += 1
        t.last_error = reason
        text = (reason or "unknown error")[:MAX_ERROR_LEN]
        if text in t.errors or len(t.errors) < MAX_ERROR_KINDS:
            t.errors[text] += 1
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** (t.failures - 1)))
        t.next_create_at = self.clock() + delay

    def reset(self, deployment_id: str) -> None:
        self._track[deployment_id] = _Track()

    def plan(self, deps: list[DeploymentView], nodes: list[dict[str, Any]]) -> list[Action]:
        now = self.clock()
        by_dep: dict[str, list[dict[str, Any]]] = {}
        for n in nodes:
            if n.get("deployment_id"):
                by_dep.setdefault(n["deployment_id"], []).append(n)
        actions: list[Action] = []
        self.time_bound = False
        for d in deps:
            actions.extend(self._plan_one(d, by_dep.get(d.id, []), now))
        return actions

    def _plan_one(self, d: DeploymentView, nodes: list[dict[str, Any]], now: float) -> list[Action]:
        out: list[Action] = []
        track = self._track.setdefault(d.id, _Track())
        live = [n for n in nodes if n["state"] in ALIVE]

        if d.state in (D.STOPPING, D.STOPPED, D.FAILED):
            leftover = [n for n in nodes if n["state"] in ALIVE or n["state"] == NodeState.FAILED]
            for n in leftover:
                dead = n["state"] == NodeState.FAILED
                out.append(RemoveReplica(d.id, n["id"], f"deployment {d.state}", drain=not dead))
            if d.state == D.STOPPING and not leftover and not any(n["state"] == NodeState.DRAINING for n in nodes):
                out.append(SetState(d.id, D.STOPPED))
            return out

        # failed nodes count against the deployment and are cleaned up
        for n in nodes:
            if n["state"] == NodeState.FAILED:
                self.record_failure(d.id, n["id"], n.get("reason"))
                out.append(RemoveReplica(d.id, n["id"], n.get("reason") or "node failed", drain=False))

        keep: list[dict[str, Any]] = []
        for n in live:
            state = n["state"]
            if state != NodeState.READY:
                self.time_bound = True
            in_state = float(n.get("seconds_in_state") or 0.0)
            # hysteresis: a node that only missed heartbeats gets replace_grace_s to come back (no
            # replacement storm from a flapping network); one that reported its own failure goes at once
            grace = 0.0 if n.get("failed_by_node") else self.replace_grace_s
            if state == NodeState.UNHEALTHY and in_state >= grace:
                reason = f"unhealthy: {n.get('reason') or 'missed heartbeats'}"
                # one that only went silent may still finish requests: drained; a reported failure is dead
                out.append(RemoveReplica(d.id, n["id"], reason, drain=not n.get("failed_by_node")))
                continue
            if state == NodeState.PROVISIONING and in_state >= self.provision_timeout_s:
                reason = f"did not become ready within {self.provision_timeout_s:.0f}s"
                self.record_failure(d.id, n["id"], reason)
                out.append(RemoveReplica(d.id, n["id"], reason, drain=False))
                continue
            keep.append(n)

        ready = [n for n in keep if n["state"] == NodeState.READY and n.get("engine_ready")]
        if ready:
            track.failures = 0
            track.counted.clear()
            track.errors.clear()
            track.next_create_at = 0.0

        limit = self.threshold(d.desired)
        if track.failures >= limit and not ready:
            msg = (
                f"{track.failures} replicas failed with none ready (limit {limit} for {d.desired} replicas): "
                f"{track.summary()}"
            )
            for n in keep:
                out.append(RemoveReplica(d.id, n["id"], "deployment failed"))
            if deployment_can(d.state, D.FAILED):
                out.append(SetState(d.id, D.FAILED, msg))
            return out
        out.extend(self._report_failures(d, track, limit))

        # scale
        missing = d.desired - len(keep)
        if missing > 0:
            self.time_bound = True
        if missing > 0 and now >= track.next_create_at:
            out.append(CreateReplicas(d.id, missing))
        elif missing < 0:
            # remove surplus: not-ready first, then the least loaded (`load`: requests in flight, set by the
            # autoscaler's executor), newest first
            surplus = sorted(
                keep,
                key=lambda n: (
                    n["state"] == NodeState.READY,
                    float(n.get("load") or 0),
                    float(n.get("seconds_in_state") or 0),
                ),
            )[:-missing]
            for n in surplus:
                out.append(RemoveReplica(d.id, n["id"], "scaled down"))

        # state
        target = self._state_for(d, len(ready))
        if target is not None and target != d.state and deployment_can(d.state, target):
            out.append(SetState(d.id, target, None))
        return out

    def _report_failures(self, d: DeploymentView, track: _Track, limit: int) -> list[Action]:
        """Say in the deployment's error what keeps failing; cleared once a replica is ready. Another error
        (the pool's quota, set by the executor) is left alone."""
        ours = d.error is None or d.error.startswith(FAILURE_REPORT)
        if track.failures == 0:
            return [SetState(d.id, d.state, None)] if d.error is not None and ours else []
        msg = f"{FAILURE_REPORT} {track.failures} (the deployment fails at {limit}), retrying with backoff: "
        msg += track.summary()
        return [SetState(d.id, d.state, msg)] if ours and d.error != msg else []

    def _state_for(self, d: DeploymentView, ready: int) -> DeploymentState | None:
        if d.state == D.PENDING:
            return D.DEPLOYING
        if ready >= d.desired:
            return D.RUNNING
        if d.state in (D.RUNNING, D.DEGRADED):
            return D.DEGRADED
        return None


# a quiet round is skipped at most this long: then a full round runs whatever (the level-triggered safety net)
FULL_ROUND_S = 30.0


class QuietRounds:
    """Whether the executor may skip a reconcile round: the last full round planned nothing and depended on
    nothing time moves (DeploymentPlanner.time_bound, no autoscaling, no roll-out), and since then neither
    the deployments (from Postgres) nor their nodes (the inventory's feed) changed. Then the same inputs
    would plan nothing again; a full round still runs every FULL_ROUND_S."""

    def __init__(self, clock: Clock = time.monotonic, full_every_s: float = FULL_ROUND_S) -> None:
        self.clock = clock
        self.full_every_s = full_every_s
        self._deps: list[Any] | None = None
        self._steady = False
        self._last_full = -math.inf
        self.skipped = 0

    def quiet(self, deps: list[Any], nodes_changed: bool) -> bool:
        if (
            not self._steady
            or nodes_changed
            or deps != self._deps
            or self.clock() - self._last_full >= self.full_every_s
        ):
            return False
        self.skipped += 1
        return True

    def invalidate(self) -> None:
        """Run the next round in full (a full round starts; an API call or a reset came in)."""
        self._steady = False

    def ran(self, deps: list[Any], steady: bool) -> None:
        """A full round ended; steady: it planned nothing and nothing in it waits on time."""
        self._deps, self._steady, self._last_full = deps, steady, self.clock()
