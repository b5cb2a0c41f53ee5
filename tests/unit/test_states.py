"""Node and deployment lifecycles: the transition tables against an independent spec."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from actors.states import (
    DEPLOYMENT_ACTIVE,
    DEPLOYMENT_DELETABLE,
    DEPLOYMENT_TRANSITIONS,
    NODE_ALIVE,
    NODE_TERMINAL,
    NODE_TRANSITIONS,
    DeploymentState,
    InvalidTransition,
    NodeState,
    check_deployment,
    check_node,
    deployment_can,
    node_can,
)

N = NodeState
D = DeploymentState

# The lifecycles as specified, written out independently of actors/states.py.
NODE_SPEC: set[tuple[NodeState, NodeState]] = {
    (N.PROVISIONING, N.READY),
    (N.PROVISIONING, N.FAILED),
    (N.PROVISIONING, N.DRAINING),
    (N.PROVISIONING, N.TERMINATED),
    (N.PROVISIONING, N.UNHEALTHY),
    (N.READY, N.UNHEALTHY),
    (N.READY, N.DRAINING),
    (N.READY, N.TERMINATED),
    (N.UNHEALTHY, N.READY),
    (N.UNHEALTHY, N.DRAINING),
    (N.UNHEALTHY, N.TERMINATED),
    (N.DRAINING, N.TERMINATED),
    (N.FAILED, N.TERMINATED),
}

DEPLOYMENT_SPEC: set[tuple[DeploymentState, DeploymentState]] = {
    (D.PENDING, D.DEPLOYING),
    (D.PENDING, D.FAILED),
    (D.PENDING, D.STOPPING),
    (D.PENDING, D.STOPPED),
    (D.DEPLOYING, D.RUNNING),
    (D.DEPLOYING, D.DEGRADED),
    (D.DEPLOYING, D.FAILED),
    (D.DEPLOYING, D.STOPPING),
    (D.RUNNING, D.UPDATING),
    (D.RUNNING, D.DEGRADED),
    (D.RUNNING, D.DEPLOYING),
    (D.RUNNING, D.STOPPING),
    (D.UPDATING, D.RUNNING),
    (D.UPDATING, D.DEGRADED),
    (D.UPDATING, D.FAILED),
    (D.UPDATING, D.STOPPING),
    (D.DEGRADED, D.RUNNING),
    (D.DEGRADED, D.DEPLOYING),
    (D.DEGRADED, D.UPDATING),
    (D.DEGRADED, D.FAILED),
    (D.DEGRADED, D.STOPPING),
    (D.FAILED, D.STOPPING),
    (D.FAILED, D.STOPPED),
    (D.FAILED, D.DEPLOYING),
    (D.STOPPING, D.STOPPED),
    (D.STOPPED, D.DEPLOYING),
}

NODE_PAIRS = list(itertools.product(NodeState, NodeState))
DEPLOYMENT_PAIRS = list(itertools.product(DeploymentState, DeploymentState))


def _id(pair: tuple[object, object]) -> str:
    return f"{pair[0]}->{pair[1]}"


# ------------------------------------------------------------------------------------------- nodes
def test_node_table_covers_every_state() -> None:
    assert set(NODE_TRANSITIONS) == set(NodeState)


def test_node_table_matches_spec() -> None:
    table = {(a, b) for a, targets in NODE_TRANSITIONS.items() for b in targets}
    assert table == NODE_SPEC


@pytest.mark.parametrize("pair", NODE_PAIRS, ids=[_id(p) for p in NODE_PAIRS])
def test_node_transition(pair: tuple[NodeState, NodeState]) -> None:
    current, target = pair
    legal = pair in NODE_SPEC
    assert node_can(current, target) is legal
    if legal:
        check_node(current, target)  # does not raise
    else:
        with pytest.raises(InvalidTransition) as info:
            check_node(current, target)
        assert info.value.kind == "node"
        assert info.value.current == current
        assert info.value.target == target
        assert f"{current} -> {target}" in str(info.value)


@pytest.mark.parametrize("state", list(NodeState))
def test_node_self_transition_is_illegal(state: NodeState) -> None:
    assert not node_can(state, state)


def test_terminated_is_final_and_the_only_terminal_state() -> None:
    assert NODE_TRANSITIONS[N.TERMINATED] == frozenset()
    assert frozenset({N.TERMINATED}) == NODE_TERMINAL
    # every other state can still reach terminated (nothing is stranded)
    for s in NodeState:
        if s != N.TERMINATED:
            assert _reachable(NODE_TRANSITIONS, s, N.TERMINATED), s


def test_node_alive_set() -> None:
    assert frozenset({N.PROVISIONING, N.READY, N.UNHEALTHY, N.DRAINING}) == NODE_ALIVE
    assert not (NODE_ALIVE & NODE_TERMINAL)
    assert N.FAILED not in NODE_ALIVE


def test_every_node_state_is_reachable_from_provisioning() -> None:
    for s in NodeState:
        assert s == N.PROVISIONING or _reachable(NODE_TRANSITIONS, N.PROVISIONING, s), s


def test_invalid_transition_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="illegal node transition terminated -> ready"):
        check_node(N.TERMINATED, N.READY)


# ------------------------------------------------------------------------------------------- deployments
def test_deployment_table_covers_every_state() -> None:
    assert set(DEPLOYMENT_TRANSITIONS) == set(DeploymentState)


def test_deployment_table_matches_spec() -> None:
    table = {(a, b) for a, targets in DEPLOYMENT_TRANSITIONS.items() for b in targets}
    assert table == DEPLOYMENT_SPEC


@pytest.mark.parametrize("pair", DEPLOYMENT_PAIRS, ids=[_id(p) for p in DEPLOYMENT_PAIRS])
def test_deployment_transition(pair: tuple[DeploymentState, DeploymentState]) -> None:
    current, target = pair
    legal = pair in DEPLOYMENT_SPEC
    assert deployment_can(current, target) is legal
    if legal:
        check_deployment(current, target)
    else:
        with pytest.raises(InvalidTransition) as info:
            check_deployment(current, target)
        assert info.value.kind == "deployment"
        assert (info.value.current, info.value.target) == (current, target)
        assert str(info.value) == f"illegal deployment transition {current} -> {target}"


@pytest.mark.parametrize("state", list(DeploymentState))
def test_deployment_self_transition_is_illegal(state: DeploymentState) -> None:
    assert not deployment_can(state, state)


def test_deployment_sets() -> None:
    assert frozenset({D.STOPPED, D.FAILED}) == DEPLOYMENT_DELETABLE
    assert frozenset({D.PENDING, D.DEPLOYING, D.RUNNING, D.UPDATING, D.DEGRADED}) == DEPLOYMENT_ACTIVE
    assert not (DEPLOYMENT_ACTIVE & DEPLOYMENT_DELETABLE)


@pytest.mark.parametrize("state", list(DeploymentState))
def test_every_deployment_state_can_be_stopped(state: DeploymentState) -> None:
    assert state == D.STOPPED or _reachable(DEPLOYMENT_TRANSITIONS, state, D.STOPPED)


@pytest.mark.parametrize("state", sorted(DEPLOYMENT_DELETABLE))
def test_deletable_deployments_can_be_restarted(state: DeploymentState) -> None:
    assert deployment_can(state, D.DEPLOYING)


def _reachable(table: Mapping[Any, frozenset[Any]], start: Any, goal: Any) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False
