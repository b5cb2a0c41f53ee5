"""A node whose heartbeats stop and resume (a flapping network, a paused VM) gets hysteresis, not a
replacement storm.

What the product promises (docs/ARCHITECTURE.md, actors/inventory_core.py, actors/deployment_core.py):
a `ready` node that misses heartbeats for interval x misses (3 s here) becomes `unhealthy` and leaves the
routing table; its next heartbeat makes it `ready` again; the deployment replaces it only once it has been
`unhealthy` for INFERIA_REPLACE_GRACE_S (default 2 x interval = 2 s here), so a pause shorter than the miss
window changes nothing, a pause that ends within the grace costs no replacement, and only a pause that
outlasts both costs exactly one new node.

The missing heartbeats are real: a local node with the fake engine, whose agent process is SIGSTOPped and
SIGCONTinued (the engine keeps running), as tests/integration/test_health.py deploys and kills nodes.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import ray

from actors.runtime import INVENTORY, NAMESPACE
from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl

SHORT_STOPS = 2  # shorter than the miss window: no state change at all
MEDIUM_STOPS = 3  # past the miss window, resumed well within the replacement grace
FIGURES: dict[str, float] = {}


def _inventory_node(node_id: str) -> dict[str, Any]:
    node: Any = ray.get(ray.get_actor(INVENTORY, namespace=NAMESPACE).node.remote(node_id), timeout=30)
    assert node is not None, node_id
    return dict(node)


def _dep_nodes(api: Client, pool_id: str, dep_id: str) -> dict[str, str]:
    return {
        n["id"]: n["state"] for n in api.pool_nodes(pool_id, include_terminated=True) if n["deployment_id"] == dep_id
    }


def _stop_after_fresh_beat(agent: int, node_id: str) -> float:
    """SIGSTOP the agent right after a heartbeat arrived, so the pause is measured from the last beat."""
    cpl.wait_for(
        lambda: (_inventory_node(node_id)["seconds_since_heartbeat"] or 9.9) < 0.3, 10, every=0.05, what="fresh beat"
    )
    os.kill(agent, signal.SIGSTOP)
    return time.monotonic()


def _watch(node_id: str, until: Any, timeout: float) -> list[str]:
    """The node's states seen while waiting for until(state) (polled from the inventory every 0.1 s)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = str(_inventory_node(node_id)["state"])
        if not seen or seen[-1] != state:
            seen.append(state)
        if until(state):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"node {node_id}: timed out after {timeout}s; states seen {seen}")


def _observe(node_id: str, seconds: float) -> list[str]:
    """The node's distinct states over the next `seconds`."""
    seen: list[str] = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        state = str(_inventory_node(node_id)["state"])
        if not seen or seen[-1] != state:
            seen.append(state)
        time.sleep(0.1)
    return seen


def test_flapping_node_gets_hysteresis_not_a_replacement_storm(control_plane: ControlPlane, api: Client) -> None:
    data_dir = Path(control_plane.settings.data_dir)
    interval = control_plane.settings.heartbeat_interval_s
    miss_window = interval * control_plane.settings.heartbeat_misses
    name = f"flap-{uuid.uuid4().hex[:6]}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(name, max_nodes=4)
    dep_id = api.deploy(name, pool["name"], replicas=1)["id"]
    api.wait_deployment(dep_id, timeout=90)
    (node,) = _dep_nodes(api, pool["id"], dep_id)
    agent, engines = cpl.node_pids(data_dir, node)
    assert agent is not None and engines, (agent, engines)
    stopped = False
    try:
        # 1) pauses shorter than the miss window: the node never leaves `ready`
        for _ in range(SHORT_STOPS):
            _stop_after_fresh_beat(agent, node)
            stopped = True
            seen = _observe(node, miss_window * 0.5)
            os.kill(agent, signal.SIGCONT)
            stopped = False
            assert seen == ["ready"], seen

        # 2) pauses past the miss window, resumed soon after the node went unhealthy: unhealthy -> ready,
        #    same node, no replacement
        for i in range(MEDIUM_STOPS):
            t_stop = _stop_after_fresh_beat(agent, node)
            stopped = True
            seen = _watch(node, lambda s: s != "ready", miss_window + 5)
            t_unhealthy = time.monotonic()
            assert seen[-1] == "unhealthy", seen
            FIGURES[f"stop{i}_to_unhealthy_s"] = t_unhealthy - t_stop
            time.sleep(0.5)
            os.kill(agent, signal.SIGCONT)
            stopped = False
            seen += [s for s in _watch(node, lambda s: s == "ready", 10) if s != seen[-1]]
            FIGURES[f"unhealthy{i}_to_ready_s"] = time.monotonic() - t_unhealthy
            assert seen == ["ready", "unhealthy", "ready"], seen
            assert _dep_nodes(api, pool["id"], dep_id) == {node: "ready"}, "a node that came back was replaced"
        d = api.wait_deployment(dep_id, timeout=30)
        assert d["state"] == "running" and d["ready_replicas"] == 1, d

        # 3) a pause that outlasts the miss window and the grace: exactly one replacement
        t_stop = _stop_after_fresh_beat(agent, node)
        stopped = True
        seen = _watch(node, lambda s: s in ("draining", "terminated"), miss_window + 30)
        FIGURES["long_stop_to_removal_s"] = time.monotonic() - t_stop

        def replaced() -> str | None:
            others = [n for n, s in _dep_nodes(api, pool["id"], dep_id).items() if n != node and s == "ready"]
            return others[0] if others else None

        new = cpl.wait_for(replaced, 60, every=0.2, what="a replacement ready")
        FIGURES["long_stop_to_replacement_ready_s"] = time.monotonic() - t_stop
    finally:
        if stopped:
            os.kill(agent, signal.SIGCONT)  # it gets SIGTERM (deprovision) or 410 and stops itself
    assert "unhealthy" in seen, seen
    api.wait_deployment(dep_id, timeout=60)
    cpl.wait_for(lambda: _dep_nodes(api, pool["id"], dep_id).get(node) == "terminated", 60, what="old node gone")
    time.sleep(3 * interval)  # a few reconcile rounds later: still one replacement, nothing growing
    nodes = _dep_nodes(api, pool["id"], dep_id)
    long_stops = 1
    assert len(nodes) <= 1 + long_stops, nodes
    assert nodes == {node: "terminated", new: "ready"}, nodes
    assert cpl.wait_for(lambda: not cpl.node_pids(data_dir, node)[1], 30, what="old engine stopped") is True
    print("\nFIGURES flapping " + " ".join(f"{k}={v:.2f}" for k, v in FIGURES.items()))
    api.delete_deployment(dep_id)
    cpl.wait_for(lambda: not any(d["id"] == dep_id for d in api.list_deployments()), 60, what="deleted")
    api.delete_pool(pool["id"])


def test_silent_nodes_are_still_detected_after_the_inventory_restarts(control_plane: ControlPlane, api: Client) -> None:
    """The sweep waits for the heartbeat ingress after a (re)start ("unknown is not dead"). When only the
    inventory restarts, no API replica starts again: the replicas' next heartbeats or routing long-poll
    tell the new inventory the ingress is up, and missed heartbeats count again."""
    data_dir = Path(control_plane.settings.data_dir)
    interval = control_plane.settings.heartbeat_interval_s
    name = f"inv-restart-{uuid.uuid4().hex[:6]}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(f"inv-restart-{uuid.uuid4().hex[:6]}")
    dep = api.deploy(name, pool["name"], replicas=1)
    api.wait_deployment(dep["id"], timeout=60)
    node_id = next(iter(_dep_nodes(api, pool["id"], dep["id"])))
    agent, _ = cpl.node_pids(data_dir, node_id)
    assert agent is not None

    inv = ray.get_actor(INVENTORY, namespace=NAMESPACE)
    ray.kill(inv, no_restart=False)
    cpl.wait_for(lambda: _inventory_node(node_id)["state"] == "ready", 60, what="inventory back, node ready")

    t0 = _stop_after_fresh_beat(agent, node_id)
    try:
        seen = _watch(node_id, lambda s: s == "unhealthy", 3 * interval + 5.0)
        took = time.monotonic() - t0
    finally:
        os.kill(agent, signal.SIGCONT)
    assert seen == ["ready", "unhealthy"], seen
    assert took <= 3 * interval + 2.0, took  # by the sweep, not by the 10 s provider reconcile
    _watch(node_id, lambda s: s == "ready", 15.0)
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 60, what="deleted")
