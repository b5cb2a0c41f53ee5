"""The autoscaler applied in the reconcile round (actors/autoscale_runner.py), with a fake store and clock:
signals from the load report and the heartbeats, the target written by compare-and-set with an event, the
state kept so a restarted actor continues, a manual scale in between wins, the least-loaded replica goes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from actors.autoscale_runner import AutoscaleRunner, annotate_load
from actors.deployment_core import DeploymentPlanner, DeploymentView, RemoveReplica
from actors.records import DeploymentRecord
from actors.states import DeploymentState

POLICY = {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2, "upscale_delay_s": 2,
          "downscale_delay_s": 10, "scale_to_zero_after_s": 30}  # fmt: skip


class FakeStore:
    def __init__(self, dep: DeploymentRecord) -> None:
        self.dep = dep
        self.events: list[dict[str, Any]] = []
        self.writes = 0

    async def save_autoscaler(
        self,
        dep_id: str,
        state: dict[str, Any],
        *,
        from_replicas: int | None = None,
        to_replicas: int | None = None,
        event: dict[str, Any] | None = None,
    ) -> DeploymentRecord | None:
        self.writes += 1
        if to_replicas is not None:
            if self.dep.desired_replicas != from_replicas:
                return None
            self.dep = replace(self.dep, desired_replicas=to_replicas)
            self.events.append(event or {})
        self.dep = replace(self.dep, autoscaler_state=state)
        return self.dep


def _dep(desired: int = 0) -> DeploymentRecord:
    return DeploymentRecord("dep-1", "m", "p", desired, DeploymentState.RUNNING, "ek", "h", autoscaling=dict(POLICY))


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _node(i: int, running: float = 0, waiting: float = 0, state: str = "ready") -> dict[str, Any]:
    return {"id": f"n{i}", "deployment_id": "dep-1", "state": state, "engine_ready": True, "seconds_in_state": 50 - i,
            "metrics": {"engine_running": running, "engine_waiting": waiting}}  # fmt: skip


def _round(r: AutoscaleRunner, store: FakeStore, nodes: list[dict[str, Any]], load: dict[str, Any]) -> int:
    deps = {"dep-1": store.dep}
    asyncio.run(r.run(store, deps, nodes, load))  # type: ignore[arg-type]
    return deps["dep-1"].desired_replicas


def test_held_request_at_zero_wakes_one_replica_with_an_event_naming_the_inputs() -> None:
    clock, store = Clock(), FakeStore(_dep(0))
    r = AutoscaleRunner(clock)
    assert _round(r, store, [], {}) == 0
    assert _round(r, store, [], {"deployments": {"dep-1": {"ongoing": 0, "queued": 1}}}) == 1
    ev = store.events[-1]
    assert ev["previous"] == 0 and ev["desired"] == 1 and ev["proxy_queued"] == 1 and ev["policy"] == POLICY
    assert store.dep.autoscaler_state and store.dep.autoscaler_state["last"]["desired"] == 1


def test_engine_queue_counts_and_the_state_survives_a_restart() -> None:
    clock, store = Clock(), FakeStore(_dep(1))
    r = AutoscaleRunner(clock)
    nodes = [_node(0, running=2, waiting=1)]  # the engine sees 3; the proxy only 2 (other gateways)
    load = {"deployments": {"dep-1": {"ongoing": 2, "queued": 0}}}
    assert _round(r, store, nodes, load) == 1  # 3 < 2 x capacity 2 is not panic: the upscale delay runs
    saved = store.dep.autoscaler_state
    assert saved and saved["timers"]["up_since"] == clock.t
    clock.t += 2.5
    restarted = AutoscaleRunner(clock)  # a new actor: the timers come back from the row
    assert _round(restarted, store, nodes, load) == 2  # ceil(3 / 2), 2.5 s after the demand began
    assert store.events[-1]["engine_waiting"] == 1 and store.events[-1]["load"] == 3


def test_a_manual_scale_in_between_wins_and_unchanged_state_is_not_rewritten() -> None:
    clock, store = Clock(), FakeStore(_dep(1))
    r = AutoscaleRunner(clock)
    idle: dict[str, Any] = {"deployments": {}}
    _round(r, store, [_node(0)], idle)
    writes = store.writes
    for _ in range(5):
        clock.t += 0.5
        _round(r, store, [_node(0)], idle)
    assert store.writes == writes  # same timers and reason: no write per round
    store.dep = replace(store.dep, desired_replicas=3)  # a PATCH replicas=3 landed
    clock.t += 1
    busy = {"deployments": {"dep-1": {"ongoing": 20, "queued": 0}}}
    assert _round(r, store, [_node(0)], busy) == 4  # decided from 3, the current value, not a stale 1


def test_scale_down_drains_the_least_loaded_replica() -> None:
    nodes = [_node(0, running=2), _node(1, running=0), _node(2, running=1)]
    annotate_load(nodes, {"n0": 2, "n2": 1})
    planner = DeploymentPlanner()
    actions = planner.plan([DeploymentView("dep-1", DeploymentState.RUNNING, 2)], nodes)
    removed = [a for a in actions if isinstance(a, RemoveReplica)]
    assert [a.node_id for a in removed] == ["n1"] and removed[0].drain


def test_urgent_names_a_request_at_zero_or_a_panic_without_moving_any_timer() -> None:
    clock, store = Clock(), FakeStore(_dep(1))
    r = AutoscaleRunner(clock)
    assert not r.watching() and r.urgent({}) == []
    _round(r, store, [_node(0)], {"deployments": {}})
    assert r.watching()
    before = r._scalers["dep-1"].state()
    assert r.urgent({"deployments": {"dep-1": {"ongoing": 3, "queued": 0}}}) == []  # more, not panic: next round
    assert r.urgent({"deployments": {"dep-1": {"ongoing": 4, "queued": 0}}}) == ["dep-1"]  # 2 x capacity 2
    assert r._scalers["dep-1"].state() == before
    store.dep = replace(store.dep, desired_replicas=0)
    _round(r, store, [], {"deployments": {}})
    assert r.urgent({"deployments": {"dep-1": {"ongoing": 0, "queued": 1}}}) == ["dep-1"]  # held at zero
