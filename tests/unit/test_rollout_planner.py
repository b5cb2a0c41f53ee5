"""The rolling-update planner (actors/rollout.py) with a fake clock and a small simulated pool, no Ray."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from actors import rollout_progress
from actors.deployment_core import CreateReplicas, RemoveReplica
from actors.rollout import Finish, RollBack, RolloutPlanner, RolloutView, Strategy, Track, progress

_ids = itertools.count(1)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def node(gen: int, state: str = "ready", ready: bool = True, **kw: Any) -> dict[str, Any]:
    n = {"id": f"n{next(_ids)}", "deployment_id": "d", "state": state, "engine_ready": ready, "generation": gen}
    n.update(kw)
    return n


@dataclass
class World:
    """Nodes that come up after `boot_rounds` rounds (or fail, for a `bad` generation) and end one round
    after being removed; every round checks the bounds the issue asks for."""

    n: int
    strategy: Strategy
    target: int = 2
    boot_rounds: int = 2
    bad: set[int] = field(default_factory=set)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    age: dict[str, int] = field(default_factory=dict)
    peak_alive: int = 0
    min_ready: int = 10**9
    phase: str = "rolling"
    finished: bool = False
    rolled_back: str | None = None
    removed_ready_old: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = [node(1) for _ in range(self.n)]

    def view(self, clock: Clock) -> RolloutView:
        return RolloutView("d", self.n, self.target, self.phase, self.strategy, started_at=clock.t)

    def step(self, planner: RolloutPlanner, clock: Clock, started: float) -> list[Any]:
        v = self.view(clock)
        v.started_at = started
        actions = planner.plan(v, [dict(x) for x in self.nodes])
        by_id = {x["id"]: x for x in self.nodes}
        for a in actions:
            if isinstance(a, CreateReplicas):
                for _ in range(a.count):
                    nn = node(self.target, "provisioning", False)
                    self.nodes.append(nn)
                    self.age[nn["id"]] = 0
            elif isinstance(a, RemoveReplica):
                x = by_id[a.node_id]
                if x["state"] == "ready" and x["generation"] == 1 and self.phase == "rolling":
                    self.removed_ready_old.append(x["id"])
                x["state"] = "draining"
                x["engine_ready"] = False
            elif isinstance(a, RollBack):
                self.rolled_back = a.reason
                self.phase, self.target = "rolling_back", 1
            elif isinstance(a, Finish):
                self.finished = True
        # the world moves on: drained nodes end, new ones boot (or fail)
        for x in list(self.nodes):
            if x["state"] == "draining":
                self.nodes.remove(x)
            elif x["state"] == "provisioning":
                self.age[x["id"]] += 1
                if self.age[x["id"]] >= self.boot_rounds:
                    if x["generation"] in self.bad:
                        x.update(state="failed", reason="engine exited: unknown argument")
                    else:
                        x.update(state="ready", engine_ready=True)
        alive = [x for x in self.nodes if x["state"] not in ("terminated", "failed")]
        ready = [x for x in self.nodes if x["state"] == "ready" and x["engine_ready"]]
        self.peak_alive = max(self.peak_alive, len(alive))
        self.min_ready = min(self.min_ready, len(ready))
        clock.t += 1.0
        return actions

    def run(self, planner: RolloutPlanner, clock: Clock, rounds: int = 500) -> None:
        started = clock.t
        for _ in range(rounds):
            self.step(planner, clock, started)
            if self.finished:
                return
        raise AssertionError(f"not finished after {rounds} rounds: {self.nodes}")


@pytest.mark.parametrize(
    ("n", "surge", "unavailable"),
    [(3, 1, 0), (3, 2, 0), (10, 3, 0), (4, 0, 1), (5, 1, 1), (1, 1, 0), (1, 0, 1), (100, 10, 0)],
)
def test_update_stays_inside_the_bounds(n: int, surge: int, unavailable: int) -> None:
    clock = Clock()
    planner = RolloutPlanner(clock=clock, backoff_base_s=0)
    w = World(n, Strategy(surge, unavailable))
    w.run(planner, clock)
    assert w.peak_alive <= n + surge  # never 2N (unless N + surge is 2N)
    assert w.min_ready >= n - unavailable  # the table never lost more than max_unavailable
    assert len(w.nodes) == n and all(x["generation"] == 2 and x["state"] == "ready" for x in w.nodes)
    assert w.rolled_back is None


def test_surge_zero_updates_inside_a_full_quota() -> None:
    clock = Clock()
    planner = RolloutPlanner(clock=clock, backoff_base_s=0)
    w = World(4, Strategy(0, 1))
    w.run(planner, clock)
    assert w.peak_alive == 4


def test_an_old_replica_goes_only_once_a_new_one_is_ready() -> None:
    clock = Clock()
    planner = RolloutPlanner(clock=clock)
    old = [node(1) for _ in range(3)]
    v = RolloutView("d", 3, 2, "rolling", Strategy(1, 0), started_at=clock.t)
    assert planner.plan(v, old) == [CreateReplicas("d", 1)]
    new = node(2, "provisioning", False)
    assert planner.plan(v, [*old, new]) == []  # N + 1 alive: wait, drain nothing
    new.update(state="ready", engine_ready=True)
    acts = planner.plan(v, [*old, new])
    assert len(acts) == 1 and isinstance(acts[0], RemoveReplica) and acts[0].node_id in {x["id"] for x in old}
    assert acts[0].drain  # drained: out of the table, in-flight requests finish


def test_failing_new_replicas_roll_back_and_old_ones_are_never_touched() -> None:
    clock = Clock()
    planner = RolloutPlanner(clock=clock, backoff_base_s=0)
    w = World(3, Strategy(1, 0), bad={2})
    w.run(planner, clock)
    assert w.rolled_back is not None and "new replicas failed" in w.rolled_back
    assert "unknown argument" in w.rolled_back
    assert w.removed_ready_old == []  # healthy old replicas were never sacrificed
    assert w.min_ready == 3 and w.peak_alive <= 4
    assert len(w.nodes) == 3 and all(x["generation"] == 1 for x in w.nodes)


def test_failure_limit_is_relative_to_the_size() -> None:
    planner = RolloutPlanner()
    assert planner.failure_limit(1) == 2
    assert planner.failure_limit(8) == 2
    assert planner.failure_limit(9) == 3
    assert planner.failure_limit(100) == 25


def test_one_failure_below_the_limit_retries_with_backoff() -> None:
    clock = Clock()
    planner = RolloutPlanner(clock=clock, backoff_base_s=4)
    old = [node(1) for _ in range(8)]
    v = RolloutView("d", 8, 2, "rolling", Strategy(1, 0), started_at=clock.t)
    bad = node(2, "failed", False, reason="oom")
    acts = planner.plan(v, [*old, bad])
    assert acts == [RemoveReplica("d", bad["id"], "oom", drain=False)]  # no create during the backoff
    clock.t += 5
    assert planner.plan(v, old) == [CreateReplicas("d", 1)]


def test_progress_deadline_rolls_back() -> None:
    clock = Clock()
    planner = RolloutPlanner(clock=clock, deadline_s=60)
    old = [node(1) for _ in range(2)]
    stuck = node(2, "provisioning", False)
    v = RolloutView("d", 2, 2, "rolling", Strategy(1, 0), started_at=clock.t)
    assert planner.plan(v, [*old, stuck]) == []
    clock.t += 59
    assert planner.plan(v, [*old, stuck]) == []
    clock.t += 2
    acts = planner.plan(v, [*old, stuck])
    assert len(acts) == 1 and isinstance(acts[0], RollBack) and "deadline" in acts[0].reason
    # a per-deployment deadline overrides the default
    v2 = RolloutView("e", 2, 2, "rolling", Strategy(1, 0), started_at=clock.t - 10, deadline_s=5)
    acts = planner.plan(v2, [{**x, "deployment_id": "e"} for x in [*old, stuck]])
    assert isinstance(acts[-1], RollBack)


def test_rolling_back_restores_the_old_generation_and_drains_ready_new_ones_last() -> None:
    """After a rollback the target is the old generation: not-ready new replicas go at once, ready new ones are
    drained only when an old one replaced them (the table never shrinks), then Finish."""
    clock = Clock()
    planner = RolloutPlanner(clock=clock)
    old = [node(1) for _ in range(2)]
    new_ready = node(2)
    new_booting = node(2, "provisioning", False)
    v = RolloutView("d", 3, 1, "rolling_back", Strategy(1, 0), started_at=clock.t)
    acts = planner.plan(v, [*old, new_ready, new_booting])
    assert RemoveReplica("d", new_booting["id"], "replaced by generation 1") in acts
    assert not any(isinstance(a, RemoveReplica) and a.node_id == new_ready["id"] for a in acts)
    # the old generation goes back to N = 3 (alive 4: no room yet while the booting one drains)
    assert not any(isinstance(a, CreateReplicas) for a in acts)
    restored = node(1)
    acts = planner.plan(v, [*old, new_ready, restored])
    assert acts == [RemoveReplica("d", new_ready["id"], "replaced by generation 1")]
    assert planner.plan(v, [*old, restored]) == [Finish("d", 1)]


def test_resume_from_observed_state() -> None:
    """A new planner (restarted actor) given the replicas and their generations continues where it was."""
    clock = Clock()
    first = RolloutPlanner(clock=clock)
    v = RolloutView("d", 3, 2, "rolling", Strategy(1, 0), started_at=clock.t)
    nodes = [node(1), node(1), node(2)]  # one old already replaced by a ready new one
    assert first.plan(v, nodes) == RolloutPlanner(clock=clock).plan(v, nodes) == [CreateReplicas("d", 1)]
    nodes = [node(1), node(1), node(2), node(2)]  # the second new one is ready: one more old goes
    acts = RolloutPlanner(clock=clock).plan(v, nodes)
    assert len(acts) == 1 and isinstance(acts[0], RemoveReplica)
    assert acts[0].node_id in {nodes[0]["id"], nodes[1]["id"]}
    # a replica without a replicas row yet counts as the target generation (its create's reply was lost)
    nodes = [node(1), node(1), node(1), {**node(2), "generation": None}]
    acts = RolloutPlanner(clock=clock).plan(v, nodes)
    assert sum(isinstance(a, RemoveReplica) for a in acts) == 1 and not any(isinstance(a, CreateReplicas) for a in acts)


def test_scale_down_during_an_update_removes_surplus_new_replicas() -> None:
    clock = Clock()
    planner = RolloutPlanner(clock=clock)
    nodes = [node(2), node(2), node(2, "provisioning", False)]
    v = RolloutView("d", 2, 2, "rolling", Strategy(1, 0), started_at=clock.t)
    acts = planner.plan(v, nodes)
    assert RemoveReplica("d", nodes[2]["id"], "scaled down") in acts
    assert Finish("d", 2) in acts


def test_progress_counts() -> None:
    nodes = [node(1), node(2), node(2, "provisioning", False), node(1, "draining", False)]
    assert progress(nodes, 2).to_dict() == {"updated": 2, "ready": 1, "old": 1}


def test_strategy_rules() -> None:
    assert Strategy().problems() == []
    assert Strategy(0, 1).problems() == []
    assert Strategy(0, 0).problems()[0][0] == "strategy"
    assert Strategy(-1, 0).problems()[0][0] == "strategy.max_surge"


def test_a_restarted_planner_keeps_the_failure_count_and_the_deadline() -> None:
    """The track a planner hands out (persisted by actors/rollout_progress.py) seeds a new planner: the failures
    already counted still count (a second one reaches the limit of 2) and the deadline still runs from the
    last progress, not from the restart."""
    clock = Clock()
    first = RolloutPlanner(clock=clock, deadline_s=60, backoff_base_s=0)
    old = [node(1) for _ in range(3)]
    v = RolloutView("d", 3, 2, "rolling", Strategy(1, 0), started_at=clock.t)
    bad = node(2, "failed", False, reason="unknown argument")
    first.plan(v, [*old, bad])
    saved = first.track("d")
    assert saved is not None and saved.failures == 1 and saved.counted == {bad["id"]}
    # the same failed node seen again by a restarted planner is not counted twice
    v.saved = saved
    second = RolloutPlanner(clock=clock, deadline_s=60, backoff_base_s=0)
    acts = second.plan(v, [*old, bad])
    assert not any(isinstance(a, RollBack) for a in acts)
    t2 = second.track("d")
    assert t2 is not None and t2.failures == 1
    worse = node(2, "failed", False, reason="unknown argument")
    third = RolloutPlanner(clock=clock, deadline_s=60, backoff_base_s=0)
    acts = third.plan(v, [*old, worse])
    assert isinstance(acts[-1], RollBack) and "2 new replicas failed" in acts[-1].reason
    # without the saved track a restarted planner would have counted from zero
    assert not any(
        isinstance(a, RollBack)
        for a in RolloutPlanner(clock=clock).plan(
            RolloutView("d", 3, 2, "rolling", Strategy(1, 0), started_at=clock.t), [*old, worse]
        )
    )

    # the deadline: progress at t0 + 10 (a new replica ready), restart at t0 + 65 -> rolled back at t0 + 71
    clock.t = 5000.0
    p = RolloutPlanner(clock=clock, deadline_s=60)
    v = RolloutView("e", 3, 2, "rolling", Strategy(1, 0), started_at=clock.t)
    olds = [{**node(1), "deployment_id": "e"} for _ in range(3)]
    clock.t += 10
    fresh = {**node(2), "deployment_id": "e"}
    stuck = {**node(2, "provisioning", False), "deployment_id": "e"}
    p.plan(v, [*olds[:2], fresh, stuck])
    saved = p.track("e")
    assert saved is not None and saved.progress_at == 5010.0 and saved.best_ready == 1
    clock.t = 5065.0
    v.saved = saved
    assert RolloutPlanner(clock=clock, deadline_s=60).plan(v, [*olds[:2], fresh, stuck]) == []
    clock.t = 5071.0
    acts = RolloutPlanner(clock=clock, deadline_s=60).plan(v, [*olds[:2], fresh, stuck])
    assert isinstance(acts[-1], RollBack) and "deadline" in acts[-1].reason


def test_a_saved_track_of_another_roll_out_is_ignored() -> None:
    clock = Clock()
    old = [node(1) for _ in range(3)]
    stale = Track(generation=2, phase="rolling", progress_at=clock.t, failures=5)
    v = RolloutView("d", 3, 3, "rolling", Strategy(1, 0), started_at=clock.t, saved=stale)
    planner = RolloutPlanner(clock=clock)
    assert planner.plan(v, old) == [CreateReplicas("d", 1)]
    t = planner.track("d")
    assert t is not None and t.generation == 3 and t.failures == 0


def test_track_round_trips_through_json() -> None:
    t = Track(4, "rolling", 123.5, best_ready=2, failures=1, counted={"n1"}, next_create_at=130.0)
    t.errors["oom"] += 1
    back = Track.from_json(t.failures, t.progress_at, json.loads(json.dumps(t.to_json())))
    assert back == t


def test_a_track_read_back_from_the_database_is_unchanged() -> None:
    """progress_at goes through a TIMESTAMPTZ (microseconds): the same track read back is not written again."""
    t = Track(2, "rolling", 1764703612.123456789, best_ready=1)
    stored = datetime.fromtimestamp(t.progress_at, UTC).timestamp()
    back = Track.from_json(t.failures, stored, t.to_json())
    assert not rollout_progress.changed(back, t)
    assert rollout_progress.changed(None, t) and not rollout_progress.changed(back, None)
    t.failures += 1
    assert rollout_progress.changed(back, t)
