"""DeploymentPlanner.plan(): desired replicas vs. observed nodes -> actions (no Ray, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from actors.deployment_core import (
    Action,
    CreateReplicas,
    DeploymentPlanner,
    DeploymentView,
    RemoveReplica,
    SetState,
)
from actors.inventory_core import Heartbeat, InventoryCore
from actors.records import hash_secret
from actors.states import DeploymentState, NodeState, deployment_can
from tests.unit.fakes import FakeClock

D = DeploymentState
N = NodeState
DEP = "dep-1"


def node(
    node_id: str,
    state: NodeState | str,
    *,
    engine_ready: bool | None = None,
    in_state: float = 0.0,
    reason: str | None = None,
    deployment_id: str | None = DEP,
) -> dict[str, Any]:
    """A node view shaped like InventoryCore.snapshot() returns."""
    st = NodeState(state)
    return {
        "id": node_id,
        "pool_id": "pool-1",
        "provider": "fake",
        "state": str(st),
        "deployment_id": deployment_id,
        "model_name": "m",
        "endpoint": "http://10.0.0.1:8000",
        "provider_instance_id": None,
        "health_score": 100,
        "engine_ready": (st == N.READY) if engine_ready is None else engine_ready,
        "reason": reason,
        "seconds_since_heartbeat": 1.0,
        "seconds_in_state": in_state,
        "metrics": {},
    }


def dep(state: DeploymentState, desired: int = 2, dep_id: str = DEP) -> DeploymentView:
    return DeploymentView(dep_id, state, desired)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(500.0)


@pytest.fixture
def planner(clock: FakeClock) -> DeploymentPlanner:
    return DeploymentPlanner(
        replace_grace_s=0.0,
        provision_timeout_s=600.0,
        max_failures=3,
        backoff_base_s=2.0,
        backoff_max_s=60.0,
        clock=clock,
    )


def removed(actions: list[Action]) -> dict[str, str]:
    return {a.node_id: a.reason for a in actions if isinstance(a, RemoveReplica)}


def creates(actions: list[Action]) -> int:
    return sum(a.count for a in actions if isinstance(a, CreateReplicas))


def states(actions: list[Action]) -> list[SetState]:
    return [a for a in actions if isinstance(a, SetState)]


# ------------------------------------------------------------------------------------------- bring-up
def test_pending_with_no_nodes_creates_all_and_deploys(planner: DeploymentPlanner) -> None:
    actions = planner.plan([dep(D.PENDING, 3)], [])
    assert actions == [CreateReplicas(DEP, 3), SetState(DEP, D.DEPLOYING)]


def test_deploying_with_provisioning_nodes_waits(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.PROVISIONING, in_state=30), node("b", N.PROVISIONING, in_state=30)]
    assert planner.plan([dep(D.DEPLOYING)], nodes) == []


def test_deploying_creates_only_the_missing(planner: DeploymentPlanner) -> None:
    actions = planner.plan([dep(D.DEPLOYING, 3)], [node("a", N.PROVISIONING)])
    assert actions == [CreateReplicas(DEP, 2)]


def test_all_ready_is_running(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.READY), node("b", N.READY)]
    assert planner.plan([dep(D.DEPLOYING)], nodes) == [SetState(DEP, D.RUNNING)]
    assert planner.plan([dep(D.RUNNING)], nodes) == []


def test_ready_without_engine_ready_does_not_count(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.READY), node("b", N.READY, engine_ready=False)]
    assert planner.plan([dep(D.DEPLOYING)], nodes) == []


def test_some_ready_from_running_is_degraded(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.READY), node("b", N.PROVISIONING)]
    assert planner.plan([dep(D.RUNNING)], nodes) == [SetState(DEP, D.DEGRADED)]
    # degraded stays degraded without a new SetState
    assert planner.plan([dep(D.DEGRADED)], nodes) == []


def test_degraded_back_to_running(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.READY), node("b", N.READY)]
    assert planner.plan([dep(D.DEGRADED)], nodes) == [SetState(DEP, D.RUNNING)]


def test_other_deployments_nodes_are_ignored(planner: DeploymentPlanner) -> None:
    nodes = [node("x", N.READY, deployment_id="other"), node("y", N.READY, deployment_id=None)]
    actions = planner.plan([dep(D.PENDING, 1)], nodes)
    assert actions == [CreateReplicas(DEP, 1), SetState(DEP, D.DEPLOYING)]


def test_draining_and_terminated_nodes_are_not_replicas(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.DRAINING), node("b", N.TERMINATED), node("c", N.READY)]
    actions = planner.plan([dep(D.RUNNING, 2)], nodes)
    assert actions == [CreateReplicas(DEP, 1), SetState(DEP, D.DEGRADED)]


def test_many_deployments_are_planned_independently(planner: DeploymentPlanner) -> None:
    deps = [dep(D.PENDING, 1, "d-a"), dep(D.DEPLOYING, 1, "d-b")]
    nodes = [node("n", N.READY, deployment_id="d-b")]
    assert planner.plan(deps, nodes) == [
        CreateReplicas("d-a", 1),
        SetState("d-a", D.DEPLOYING),
        SetState("d-b", D.RUNNING),
    ]


# ------------------------------------------------------------------------------------------- replacement
def test_unhealthy_after_grace_is_replaced_and_running_degrades(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.READY), node("b", N.UNHEALTHY, in_state=0.0, reason="no heartbeat for 16.0s")]
    actions = planner.plan([dep(D.RUNNING)], nodes)
    assert actions == [
        RemoveReplica(DEP, "b", "unhealthy: no heartbeat for 16.0s"),
        CreateReplicas(DEP, 1),
        SetState(DEP, D.DEGRADED),
    ]


def test_unhealthy_within_grace_is_kept(clock: FakeClock) -> None:
    planner = DeploymentPlanner(replace_grace_s=30.0, clock=clock)
    nodes = [node("a", N.READY), node("b", N.UNHEALTHY, in_state=29.9)]
    assert planner.plan([dep(D.RUNNING)], nodes) == [SetState(DEP, D.DEGRADED)]
    nodes[1]["seconds_in_state"] = 30.0
    actions = planner.plan([dep(D.DEGRADED)], nodes)
    assert removed(actions) == {"b": "unhealthy: missed heartbeats"}
    assert creates(actions) == 1


def test_provisioning_past_timeout_is_removed_and_counted(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.PROVISIONING, in_state=599.0), node("b", N.PROVISIONING, in_state=600.0)]
    actions = planner.plan([dep(D.DEPLOYING)], nodes)
    assert removed(actions) == {"b": "did not become ready within 600s"}
    assert creates(actions) == 0  # backoff after a failure
    track = planner._track[DEP]
    assert track.failures == 1
    assert track.last_error == "did not become ready within 600s"


def test_failed_node_is_counted_once_and_removed(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.FAILED, reason="image pull failed")]
    first = planner.plan([dep(D.DEPLOYING, 1)], nodes)
    assert first[0] == RemoveReplica(DEP, "a", "image pull failed", drain=False)  # dead: no drain
    assert [s.error for s in states(first)] == [
        "replica failures with none ready: 1 (the deployment fails at 3), retrying with backoff: 'image pull failed' x1"
    ]
    second = planner.plan([dep(D.DEPLOYING, 1)], nodes)
    assert second == first  # the same failed node is not counted again
    assert planner._track[DEP].failures == 1


def test_failed_node_without_reason(planner: DeploymentPlanner) -> None:
    actions = planner.plan([dep(D.DEPLOYING, 1)], [node("a", N.FAILED)])
    assert removed(actions) == {"a": "node failed"}


def test_backoff_delays_the_next_create(planner: DeploymentPlanner, clock: FakeClock) -> None:
    d = dep(D.DEPLOYING, 1)
    assert creates(planner.plan([d], [node("f1", N.FAILED, reason="e1")])) == 0
    clock.advance(1.9)
    assert creates(planner.plan([d], [])) == 0
    clock.advance(0.1)  # 2 s = backoff_base_s after the first failure
    assert [a for a in planner.plan([d], []) if not isinstance(a, SetState)] == [CreateReplicas(DEP, 1)]
    # second failure: 4 s
    assert creates(planner.plan([d], [node("f2", N.FAILED, reason="e2")])) == 0
    clock.advance(3.9)
    assert creates(planner.plan([d], [])) == 0
    clock.advance(0.1)
    assert creates(planner.plan([d], [])) == 1


def test_backoff_is_capped(clock: FakeClock) -> None:
    planner = DeploymentPlanner(max_failures=100, backoff_base_s=2.0, backoff_max_s=10.0, clock=clock)
    d = dep(D.DEPLOYING, 1)
    for i in range(8):
        planner.plan([d], [node(f"f{i}", N.FAILED)])
    assert planner._track[DEP].next_create_at == clock() + 10.0
    clock.advance(10.0)
    assert creates(planner.plan([d], [])) == 1


def test_max_failures_without_ready_fails_with_last_error(planner: DeploymentPlanner) -> None:
    d = dep(D.DEPLOYING, 2)
    planner.plan([d], [node("f1", N.FAILED, reason="e1")])
    planner.plan([d], [node("f2", N.FAILED, reason="e2")])
    nodes = [node("f3", N.FAILED, reason="CUDA out of memory"), node("p", N.PROVISIONING)]
    actions = planner.plan([d], nodes)
    assert actions == [
        RemoveReplica(DEP, "f3", "CUDA out of memory", drain=False),
        RemoveReplica(DEP, "p", "deployment failed"),
        SetState(
            DEP,
            D.FAILED,
            "3 replicas failed with none ready (limit 3 for 2 replicas): 'e1' x1; 'e2' x1; 'CUDA out of memory' x1",
        ),
    ]
    assert creates(actions) == 0


def test_ready_replica_resets_the_failure_count(planner: DeploymentPlanner) -> None:
    d = dep(D.DEGRADED, 2)
    planner.plan([d], [node("f1", N.FAILED)])
    planner.plan([d], [node("f2", N.FAILED)])
    actions = planner.plan([d], [node("f3", N.FAILED), node("r", N.READY)])
    assert not [s for s in states(actions) if s.state == D.FAILED]
    assert planner._track[DEP].failures == 0
    assert creates(actions) == 1  # no backoff once a replica is ready


def test_failed_state_not_set_where_illegal(planner: DeploymentPlanner) -> None:
    d = dep(D.RUNNING, 1)  # running -> failed is not a legal transition
    for i in range(3):
        actions = planner.plan([d], [node(f"f{i}", N.FAILED)])
    assert not deployment_can(D.RUNNING, D.FAILED)
    assert states(actions) == []


def test_reset_and_forget(planner: DeploymentPlanner) -> None:
    d = dep(D.DEPLOYING, 1)
    planner.plan([d], [node("f1", N.FAILED)])
    planner.reset(DEP)
    assert planner.plan([d], []) == [CreateReplicas(DEP, 1)]
    planner.plan([d], [node("f2", N.FAILED)])
    planner.forget(DEP)
    assert DEP not in planner._track


def test_record_failure_is_idempotent_per_node(planner: DeploymentPlanner, clock: FakeClock) -> None:
    planner.record_failure(DEP, "a", "x")
    at = planner._track[DEP].next_create_at
    clock.advance(1)
    planner.record_failure(DEP, "a", "y")
    t = planner._track[DEP]
    assert (t.failures, t.last_error, t.next_create_at) == (1, "x", at)


# ------------------------------------------------------------------------------------------- stop
def test_stopping_removes_everything_then_stops(planner: DeploymentPlanner) -> None:
    nodes = [
        node("a", N.READY),
        node("b", N.PROVISIONING),
        node("c", N.UNHEALTHY),
        node("d", N.FAILED),
        node("e", N.TERMINATED),
    ]
    actions = planner.plan([dep(D.STOPPING)], nodes)
    assert removed(actions) == {n: "deployment stopping" for n in "abcd"}
    assert states(actions) == []
    # draining ones are on their way out: wait for them
    assert planner.plan([dep(D.STOPPING)], [node("a", N.DRAINING), node("e", N.TERMINATED)]) == []
    assert planner.plan([dep(D.STOPPING)], [node("e", N.TERMINATED)]) == [SetState(DEP, D.STOPPED)]
    assert planner.plan([dep(D.STOPPING)], []) == [SetState(DEP, D.STOPPED)]


@pytest.mark.parametrize("state", [D.STOPPED, D.FAILED])
def test_stopped_and_failed_clean_up_leftovers_without_creating(
    planner: DeploymentPlanner, state: DeploymentState
) -> None:
    actions = planner.plan([dep(state, 3)], [node("a", N.READY)])
    assert actions == [RemoveReplica(DEP, "a", f"deployment {state}")]
    assert planner.plan([dep(state, 3)], []) == []


# ------------------------------------------------------------------------------------------- scale
def test_scale_down_removes_not_ready_first(planner: DeploymentPlanner) -> None:
    nodes = [
        node("r1", N.READY, in_state=100),
        node("p1", N.PROVISIONING, in_state=10),
        node("r2", N.READY, in_state=50),
        node("u1", N.UNHEALTHY, in_state=0.0),
    ]
    planner.replace_grace_s = 60.0  # keep the unhealthy one as a replica
    actions = planner.plan([dep(D.RUNNING, 2)], nodes)
    assert removed(actions) == {"p1": "scaled down", "u1": "scaled down"}
    assert creates(actions) == 0
    assert states(actions) == []  # two ready: still running


def test_scale_down_removes_the_newest_ready_first(planner: DeploymentPlanner) -> None:
    """The documented order ("not-ready first, newest first"): the oldest replica is kept."""
    nodes = [
        node("old", N.READY, in_state=3600),
        node("new", N.READY, in_state=5),
        node("mid", N.READY, in_state=600),
    ]
    actions = planner.plan([dep(D.RUNNING, 2)], nodes)
    assert removed(actions) == {"new": "scaled down"}


def test_scale_to_zero(planner: DeploymentPlanner) -> None:
    nodes = [node("a", N.READY), node("b", N.READY)]
    actions = planner.plan([dep(D.RUNNING, 0)], nodes)
    assert set(removed(actions)) == {"a", "b"}
    assert creates(actions) == 0


def test_pending_with_zero_replicas_leaves_pending() -> None:
    """A deployment created with replicas=0 (the API allows it) must settle, not stay pending."""
    planner = DeploymentPlanner(clock=FakeClock())
    d = dep(D.PENDING, 0)
    for _ in range(3):
        for a in states(planner.plan([d], [])):
            assert deployment_can(d.state, a.state)
            d.state = a.state
    assert d.state != D.PENDING


# ------------------------------------------------------------------------------------------- idempotence
SCENARIOS: dict[str, tuple[DeploymentView, list[dict[str, Any]]]] = {
    "pending": (dep(D.PENDING, 2), []),
    "running": (dep(D.RUNNING, 2), [node("a", N.READY), node("b", N.READY)]),
    "replace": (dep(D.RUNNING, 2), [node("a", N.READY), node("b", N.UNHEALTHY, reason="x")]),
    "failed-node": (dep(D.DEPLOYING, 2), [node("a", N.FAILED, reason="boom"), node("b", N.PROVISIONING)]),
    "timeout": (dep(D.DEPLOYING, 1), [node("a", N.PROVISIONING, in_state=601)]),
    "stopping": (dep(D.STOPPING, 2), [node("a", N.READY), node("b", N.DRAINING)]),
    "scale-down": (dep(D.RUNNING, 1), [node("a", N.READY, in_state=9), node("b", N.READY, in_state=3)]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_plan_is_idempotent(planner: DeploymentPlanner, name: str) -> None:
    d, nodes = SCENARIOS[name]
    first = planner.plan([d], nodes)
    second = planner.plan([d], nodes)
    assert first == second


# ------------------------------------------------------------------------------------------- with the inventory
def _apply(inv: InventoryCore, d: DeploymentView, actions: list[Action], counter: list[int]) -> list[str]:
    """A minimal executor: create nodes in the inventory, remove (drain + terminate), set states."""
    created = []
    for a in actions:
        if isinstance(a, CreateReplicas):
            for _ in range(a.count):
                counter[0] += 1
                nid = f"n{counter[0]}"
                inv.register(
                    {
                        "id": nid,
                        "pool_id": "pool-1",
                        "provider": "fake",
                        "token_hash": hash_secret("tok-" + nid),
                        "deployment_id": d.id,
                        "model_name": "m",
                    }
                )
                created.append(nid)
        elif isinstance(a, RemoveReplica):
            inv.transition(a.node_id, N.DRAINING, a.reason)
            inv.transition(a.node_id, N.TERMINATED, a.reason)
        elif isinstance(a, SetState):
            assert a.state == d.state or deployment_can(d.state, a.state)
            d.state, d.error = a.state, a.error
    return created


def test_plans_from_a_real_inventory_snapshot(clock: FakeClock) -> None:
    inv = InventoryCore(15.0, clock=clock, wall=FakeClock(1e9))
    planner = DeploymentPlanner(clock=clock)
    d = dep(D.PENDING, 2)
    counter = [0]
    new = _apply(inv, d, planner.plan([d], inv.snapshot(True)), counter)
    assert d.state == D.DEPLOYING and len(new) == 2
    for nid in new:
        inv.heartbeat(Heartbeat(token="tok-" + nid, node_id=nid, endpoint=f"http://{nid}:1"))
    _apply(inv, d, planner.plan([d], inv.snapshot(True)), counter)
    assert d.state == D.RUNNING
    clock.advance(16)  # one replica's heartbeats stop
    inv.heartbeat(Heartbeat(token="tok-" + new[0], node_id=new[0]))
    inv.sweep()
    actions = planner.plan([d], inv.snapshot(True))
    assert removed(actions) == {new[1]: f"unhealthy: {inv.nodes[new[1]].reason}"}
    assert creates(actions) == 1
    _apply(inv, d, actions, counter)
    assert d.state == D.DEGRADED


def test_engine_that_keeps_failing_to_start_fails_the_deployment(clock: FakeClock) -> None:
    """An engine that crashes on start (agent sends a 'failed' beat, then exits) on every replica.

    After max_failures the deployment must go to FAILED with the engine's error, instead of
    replacing the replica forever without counting failures or backing off.
    """
    inv = InventoryCore(15.0, clock=clock, wall=FakeClock(1e9))
    planner = DeploymentPlanner(max_failures=3, clock=clock)
    d = dep(D.PENDING, 1)
    counter = [0]
    for _ in range(12):
        new = _apply(inv, d, planner.plan([d], inv.snapshot(True)), counter)
        for nid in new:
            inv.heartbeat(
                Heartbeat(token="tok-" + nid, node_id=nid, state="failed", reason="engine exited with code 1")
            )
        clock.advance(61.0)  # past any backoff
        if d.state == D.FAILED:
            break
    assert d.state == D.FAILED, f"still {d.state} after creating {counter[0]} replicas"
    assert counter[0] <= 4


def test_hysteresis_silent_node_gets_grace_self_reported_failure_does_not() -> None:
    """A node that only missed heartbeats may come back within the grace (no replacement storm from a
    flapping network); one whose agent reported the failure (engine exited) is replaced at once."""
    clock = FakeClock()
    planner = DeploymentPlanner(replace_grace_s=10.0, clock=clock)
    dep = DeploymentView("d1", DeploymentState.RUNNING, 2)
    silent = {
        "id": "a",
        "deployment_id": "d1",
        "state": "unhealthy",
        "seconds_in_state": 4.0,
        "reason": "no heartbeat for 15.0s",
        "failed_by_node": False,
        "engine_ready": False,
    }
    ready = {"id": "b", "deployment_id": "d1", "state": "ready", "seconds_in_state": 50.0, "engine_ready": True}
    actions = planner.plan([dep], [silent, ready])
    assert not any(isinstance(a, RemoveReplica) for a in actions)
    assert not any(isinstance(a, CreateReplicas) for a in actions)
    crashed = dict(silent, failed_by_node=True, reason="engine exited with code -9")
    actions = planner.plan([dep], [crashed, ready])
    assert any(isinstance(a, RemoveReplica) and a.node_id == "a" for a in actions)
    assert any(isinstance(a, CreateReplicas) and a.count == 1 for a in actions)
    past_grace = dict(silent, seconds_in_state=10.0)
    assert any(isinstance(a, RemoveReplica) for a in planner.plan([dep], [past_grace, ready]))


# ------------------------------------------------------------------------------------ failure threshold (issue 10)
def test_failure_threshold_is_relative_to_the_replica_count(planner: DeploymentPlanner) -> None:
    """Three capacity errors early in a big roll-out do not fail it: max(3, ceil(0.5 x desired))."""
    assert [planner.threshold(n) for n in (1, 2, 6, 7, 10, 500)] == [3, 3, 3, 4, 5, 250]
    d = dep(D.DEPLOYING, 10)
    for i in range(4):
        actions = planner.plan([d], [node(f"f{i}", N.FAILED, reason="no capacity")])
        assert not [s for s in states(actions) if s.state == D.FAILED]
    actions = planner.plan([d], [node("f4", N.FAILED, reason="no capacity")])
    failed = [s for s in states(actions) if s.state == D.FAILED]
    assert failed and failed[0].error == (
        "5 replicas failed with none ready (limit 5 for 10 replicas): 'no capacity' x5"
    )


def test_the_deployment_error_says_what_keeps_failing_counted(planner: DeploymentPlanner) -> None:
    d = dep(D.DEPLOYING, 20)  # fails at 10
    reasons = ["quota exceeded", "quota exceeded", "engine exited", "quota exceeded"]
    for i, r in enumerate(reasons):
        actions = planner.plan([d], [node(f"f{i}", N.FAILED, reason=r)])
        for s in states(actions):
            d.error = s.error
    assert d.error == (
        "replica failures with none ready: 4 (the deployment fails at 10), retrying with backoff: "
        "'quota exceeded' x3; 'engine exited' x1"
    )
    assert states(planner.plan([d], [])) == []  # said once: nothing to write while nothing changes
    # a ready replica resets the count and clears the report
    actions = planner.plan([d], [node("r", N.READY)])
    assert SetState(DEP, D.DEPLOYING, None) in actions


def test_another_error_is_not_overwritten_by_the_failure_report(planner: DeploymentPlanner) -> None:
    d = DeploymentView(DEP, D.DEPLOYING, 4, error="pool 'p' is at its max_nodes quota (2)")
    actions = planner.plan([d], [node("f", N.FAILED, reason="x")])
    assert [s for s in states(actions) if s.state == D.DEPLOYING] == []


# ------------------------------------------------------------------------------------ drain (issue 10 #9)
def test_scale_down_and_silent_replicas_are_drained_dead_ones_terminated_at_once(planner: DeploymentPlanner) -> None:
    silent = node("s", N.UNHEALTHY, in_state=100, reason="no heartbeat for 15s")
    crashed = node("c", N.UNHEALTHY, in_state=0, reason="engine exited") | {"failed_by_node": True}
    failed = node("f", N.FAILED, reason="boom")
    actions = planner.plan([dep(D.RUNNING, 1)], [node("a", N.READY, in_state=9), node("b", N.READY), silent])
    drains = {a.node_id: a.drain for a in actions if isinstance(a, RemoveReplica)}
    assert drains == {"s": True, "b": True}  # the silent one may still finish requests; the surplus too
    actions = planner.plan([dep(D.RUNNING, 3)], [node("a", N.READY), crashed, failed])
    drains = {a.node_id: a.drain for a in actions if isinstance(a, RemoveReplica)}
    assert drains == {"c": False, "f": False}
    actions = planner.plan([dep(D.STOPPING, 2)], [node("a", N.READY), node("f", N.FAILED)])
    drains = {a.node_id: a.drain for a in actions if isinstance(a, RemoveReplica)}
    assert drains == {"a": True, "f": False}  # a stop drains what serves
