"""Explicit lifecycles for nodes and deployments: every legal transition is listed here."""

from __future__ import annotations

from enum import StrEnum


class NodeState(StrEnum):
    PROVISIONING = "provisioning"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    TERMINATED = "terminated"
    FAILED = "failed"


class DeploymentState(StrEnum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    RUNNING = "running"
    UPDATING = "updating"
    DEGRADED = "degraded"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class PoolState(StrEnum):
    ACTIVE = "active"
    DELETING = "deleting"
    DELETED = "deleted"


class InvalidTransition(ValueError):
    def __init__(self, kind: str, current: str, target: str) -> None:
        super().__init__(f"illegal {kind} transition {current} -> {target}")
        self.kind, self.current, self.target = kind, current, target


N = NodeState
NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    N.PROVISIONING: frozenset({N.READY, N.FAILED, N.DRAINING, N.TERMINATED, N.UNHEALTHY}),
    N.READY: frozenset({N.UNHEALTHY, N.DRAINING, N.TERMINATED}),
    N.UNHEALTHY: frozenset({N.READY, N.DRAINING, N.TERMINATED}),
    N.DRAINING: frozenset({N.TERMINATED}),
    N.TERMINATED: frozenset(),
    N.FAILED: frozenset({N.TERMINATED}),
}
NODE_TERMINAL = frozenset({N.TERMINATED})
NODE_ALIVE = frozenset({N.PROVISIONING, N.READY, N.UNHEALTHY, N.DRAINING})

D = DeploymentState
DEPLOYMENT_TRANSITIONS: dict[DeploymentState, frozenset[DeploymentState]] = {
    D.PENDING: frozenset({D.DEPLOYING, D.FAILED, D.STOPPING, D.STOPPED}),
    D.DEPLOYING: frozenset({D.RUNNING, D.DEGRADED, D.FAILED, D.STOPPING}),
    D.RUNNING: frozenset({D.UPDATING, D.DEGRADED, D.DEPLOYING, D.STOPPING}),
    D.UPDATING: frozenset({D.RUNNING, D.DEGRADED, D.FAILED, D.STOPPING}),
    D.DEGRADED: frozenset({D.RUNNING, D.DEPLOYING, D.UPDATING, D.FAILED, D.STOPPING}),
    D.FAILED: frozenset({D.STOPPING, D.STOPPED, D.DEPLOYING}),
    D.STOPPING: frozenset({D.STOPPED}),
    D.STOPPED: frozenset({D.DEPLOYING}),
}
# a deployment may only be deleted from these
DEPLOYMENT_DELETABLE = frozenset({D.STOPPED, D.FAILED})
# states in which the reconciler keeps replicas at the desired count
DEPLOYMENT_ACTIVE = frozenset({D.PENDING, D.DEPLOYING, D.RUNNING, D.UPDATING, D.DEGRADED})


def check_node(current: NodeState, target: NodeState) -> None:
    if target not in NODE_TRANSITIONS[current]:
        raise InvalidTransition("node", current, target)


def node_can(current: NodeState, target: NodeState) -> bool:
    return target in NODE_TRANSITIONS[current]


def check_deployment(current: DeploymentState, target: DeploymentState) -> None:
    if target not in DEPLOYMENT_TRANSITIONS[current]:
        raise InvalidTransition("deployment", current, target)


def deployment_can(current: DeploymentState, target: DeploymentState) -> bool:
    return target in DEPLOYMENT_TRANSITIONS[current]
