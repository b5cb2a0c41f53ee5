"""The rolling-update planner (issue 12), without Ray or I/O.

Given a deployment in `updating` (its target generation, desired count N and strategy) and its nodes, each
with the generation its replica was created with, `RolloutPlanner.plan()` returns the next actions:

- create target-generation replicas while fewer than N exist, never more than N + max_surge alive in all
  (draining ones included: they still hold their machine), so never 2N;
- a new replica takes traffic as soon as it is ready (the inventory routes it under the deployment's model
  name, beside the old ones); then an old one is drained (out of the table, in-flight requests finish, then
  terminated: RemoveReplica with drain), and again; an old replica is drained only while the ready ones
  stay >= N - max_unavailable, so with the default max_unavailable 0 a ready old replica goes only once a new
  one is ready to take its place;
- old replicas that are not ready serve nothing and go at once; a failed or dead one is never replaced by
  the old generation;
- automatic rollback: when max(min_failures, ceil(failure_ratio * N)) new replicas failed, or no new replica
  became ready for the progress deadline, `RollBack`: the executor sets the target back to the current
  generation, and the same rules then replace the new replicas by old ones (the ready old replicas were never
  touched), after which the deployment is `running` again with the failure recorded (`Finish`).

It is level-triggered: the state is rebuilt from the observations (the replicas and their generation), so a
restarted actor continues where the last one was. What cannot be observed, the failure count and the progress
time (its `Track`), is handed in by `RolloutView.saved` and read back by `track()`: the runner keeps it in
PostgreSQL (actors/rollout_progress.py), so a restarted actor resumes with the same count and deadline.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from actors.deployment_core import CreateReplicas, RemoveReplica, SetState
from actors.states import NodeState

Clock = Callable[[], float]
N_ = NodeState

DEFAULT_DEADLINE_S = 600.0


@dataclass(frozen=True)
class Strategy:
    max_surge: int = 1
    max_unavailable: int = 0

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for each rule broken; the API answers the first as a 422."""
        out = []
        if self.max_surge < 0:
            out.append(("strategy.max_surge", "must be >= 0"))
        if self.max_unavailable < 0:
            out.append(("strategy.max_unavailable", "must be >= 0"))
        if self.max_surge == 0 and self.max_unavailable == 0:
            out.append(("strategy", "max_surge and max_unavailable cannot both be 0 (nothing could move)"))
        return out


@dataclass
class RolloutView:
    deployment_id: str
    desired: int
    target_generation: int
    phase: str  # rolling | rolling_back
    strategy: Strategy = field(default_factory=Strategy)
    started_at: float = 0.0  # on the planner's clock (wall-clock seconds in the actor)
    deadline_s: float | None = None
    saved: Track | None = None  # the track as last persisted (used when this planner has none for the roll-out)


@dataclass(frozen=True)
class RollBack:
    deployment_id: str
    reason: str


@dataclass(frozen=True)
class Finish:
    deployment_id: str
    generation: int


RolloutAction = CreateReplicas | RemoveReplica | SetState | RollBack | Finish


@dataclass
class Progress:
    """What GET shows: replicas of the target generation alive / ready, and old ones still alive."""

    updated: int = 0
    ready: int = 0
    old: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"updated": self.updated, "ready": self.ready, "old": self.old}


def progress(nodes: list[dict[str, Any]], target: int) -> Progress:
    p = Progress()
    for n in nodes:
        state = N_(n["state"])
        if state not in (N_.PROVISIONING, N_.READY, N_.UNHEALTHY):
            continue
        if int(n.get("generation") or target) == target:
            p.updated += 1
            p.ready += state == N_.READY and bool(n.get("engine_ready"))
        else:
            p.old += 1
    return p


@dataclass
class Track:
    """What the planner remembers of one roll-out (one target generation and phase): the failures counted (and
    which nodes they were), when a new replica last became ready (the progress deadline counts from there)."""

    generation: int
    phase: str
    progress_at: float
    best_ready: int = 0
    failures: int = 0
    counted: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    next_create_at: float = 0.0

    def copy(self) -> Track:
        return replace(self, counted=set(self.counted), errors=Counter(self.errors))

    def to_json(self) -> dict[str, Any]:
        """The track's fields besides failures and progress_at (those have their own columns)."""
        return {
            "generation": self.generation,
            "phase": self.phase,
            "best_ready": self.best_ready,
            "counted": sorted(self.counted),
            "errors": dict(self.errors),
            "next_create_at": self.next_create_at,
        }

    @classmethod
    def from_json(cls, failures: int, progress_at: float, data: dict[str, Any]) -> Track:
        return cls(
            generation=int(data["generation"]),
            phase=str(data["phase"]),
            progress_at=progress_at,
            best_ready=int(data.get("best_ready") or 0),
            failures=failures,
            counted={str(x) for x in data.get("counted") or []},
            errors=Counter({str(k): int(v) for k, v in (data.get("errors") or {}).items()}),
            next_create_at=float(data.get("next_create_at") or 0.0),
        )


class RolloutPlanner:
    def __init__(
        self,
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        min_failures: int = 2,
        failure_ratio: float = 0.25,
        replace_grace_s: float = 0.0,
        provision_timeout_s: float = 600.0,
        backoff_base_s: float = 2.0,
        backoff_max_s: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        self.deadline_s = deadline_s
        self.min_failures = min_failures
        self.failure_ratio = failure_ratio
        self.replace_grace_s = replace_grace_s
        self.provision_timeout_s = provision_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self._track: dict[str, Track] = {}

    def failure_limit(self, desired: int) -> int:
        """New replicas that may fail before the roll-out is rolled back: relative to the deployment's size."""
        return max(self.min_failures, math.ceil(self.failure_ratio * desired))

    def forget(self, deployment_id: str) -> None:
        self._track.pop(deployment_id, None)

    def track(self, deployment_id: str) -> Track | None:
        """A copy of the roll-out's track after the last plan() (what the runner persists)."""
        t = self._track.get(deployment_id)
        return t.copy() if t is not None else None

    def _fail(self, t: Track, node_id: str, reason: str, now: float) -> None:
        if node_id in t.counted:
            return
        t.counted.add(node_id)
        t.failures += 1
        if len(t.errors) < 10 or reason in t.errors:
            t.errors[reason[:200]] += 1
        t.next_create_at = now + min(self.backoff_max_s, self.backoff_base_s * 2 ** (t.failures - 1))

    def plan(self, r: RolloutView, nodes: list[dict[str, Any]]) -> list[RolloutAction]:
        """The next actions for one deployment in `updating`. `nodes`: the inventory's view of its nodes, each
        with `generation` (the generation its replica was created with; missing: the target)."""
        now = self.clock()
        t = self._track.get(r.deployment_id)
        if t is None or t.generation != r.target_generation or t.phase != r.phase:
            saved = r.saved
            if saved is not None and saved.generation == r.target_generation and saved.phase == r.phase:
                t = saved.copy()  # a restarted actor: the same failure count and deadline
            else:
                t = Track(r.target_generation, r.phase, progress_at=min(r.started_at or now, now))
            self._track[r.deployment_id] = t
        target, n_desired = r.target_generation, r.desired
        out: list[RolloutAction] = []
        alive = 0  # every node holding a machine (draining too): bounded by N + max_surge
        new_keep: list[dict[str, Any]] = []
        old_keep: list[dict[str, Any]] = []
        for n in nodes:
            state = N_(n["state"])
            if state == N_.TERMINATED:
                continue
            is_new = int(n.get("generation") or target) == target
            if state == N_.FAILED:
                if is_new:
                    self._fail(t, n["id"], n.get("reason") or "node failed", now)
                out.append(RemoveReplica(r.deployment_id, n["id"], n.get("reason") or "node failed", drain=False))
                continue
            alive += 1
            if state == N_.DRAINING:
                continue
            in_state = float(n.get("seconds_in_state") or 0.0)
            dead = bool(n.get("failed_by_node"))
            if state == N_.UNHEALTHY and (dead or in_state >= self.replace_grace_s):
                reason = f"unhealthy: {n.get('reason') or 'missed heartbeats'}"
                if is_new:
                    self._fail(t, n["id"], reason, now)
                out.append(RemoveReplica(r.deployment_id, n["id"], reason, drain=not dead))
                continue
            if state == N_.PROVISIONING and in_state >= self.provision_timeout_s:
                reason = f"did not become ready within {self.provision_timeout_s:.0f}s"
                if is_new:
                    self._fail(t, n["id"], reason, now)
                out.append(RemoveReplica(r.deployment_id, n["id"], reason, drain=False))
                continue
            (new_keep if is_new else old_keep).append(n)

        def ready(n: dict[str, Any]) -> bool:
            return N_(n["state"]) == N_.READY and bool(n.get("engine_ready"))

        new_ready = [n for n in new_keep if ready(n)]
        old_ready = [n for n in old_keep if ready(n)]
        if len(new_ready) > t.best_ready:
            t.best_ready, t.progress_at = len(new_ready), now

        if r.phase == "rolling":
            limit = self.failure_limit(n_desired)
            deadline = r.deadline_s if r.deadline_s is not None else self.deadline_s
            why = None
            if t.failures >= limit:
                shown = "; ".join(f"{m!r} x{k}" for m, k in t.errors.most_common(3))
                why = f"{t.failures} new replicas failed (limit {limit} for {n_desired} replicas): {shown}"
            elif deadline > 0 and now - t.progress_at > deadline and len(new_ready) < n_desired:
                why = f"no new replica became ready for {deadline:.0f}s (progress deadline)"
            if why is not None:
                # stop here: nothing more is created or drained; the next round plans back to the old generation
                stop: list[RolloutAction] = [a for a in out if isinstance(a, RemoveReplica)]
                return [*stop, RollBack(r.deployment_id, why)]

        # old replicas that serve nothing go at once (never a ready one here)
        for n in old_keep:
            if not ready(n):
                out.append(RemoveReplica(r.deployment_id, n["id"], f"replaced by generation {target}"))
        # more new ones than wanted (the target count went down meanwhile): not-ready first, then newest
        surplus = len(new_keep) - n_desired
        if surplus > 0:
            extra = sorted(new_keep, key=lambda n: (ready(n), float(n.get("seconds_in_state") or 0)))[:surplus]
            for n in extra:
                out.append(RemoveReplica(r.deployment_id, n["id"], "scaled down"))
            new_keep = [n for n in new_keep if n not in extra]
            new_ready = [n for n in new_ready if n not in extra]

        if len(new_ready) >= n_desired and not old_keep:
            return [*out, Finish(r.deployment_id, target)]

        # drain old ready replicas while the ready ones stay >= N - max_unavailable
        floor = max(0, n_desired - r.strategy.max_unavailable)
        ready_now = len(new_ready) + len(old_ready)
        drainable = min(len(old_ready), max(0, ready_now - floor))
        # least loaded first, then the oldest
        order = sorted(old_ready, key=lambda n: (float(n.get("load") or 0), -float(n.get("seconds_in_state") or 0)))
        for n in order[:drainable]:
            out.append(RemoveReplica(r.deployment_id, n["id"], f"replaced by generation {target}"))

        # create new ones: up to N of them, never more than N + max_surge alive in all
        room = n_desired + r.strategy.max_surge - alive
        need = n_desired - len(new_keep)
        count = min(room, need)
        if count > 0 and now >= t.next_create_at:
            out.append(CreateReplicas(r.deployment_id, count))
        return out
