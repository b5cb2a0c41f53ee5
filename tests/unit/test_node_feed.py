"""The inventory's delta feed of node changes and the deployments actor's mirror of it (no Ray)."""

from __future__ import annotations

import random
from typing import Any

from actors.deployment_core import DeploymentPlanner, DeploymentView, QuietRounds, SetState
from actors.inventory_core import FULL_AFTER, Heartbeat, InventoryCore
from actors.node_feed import NodeFeed, NodeMirror
from actors.records import hash_secret
from actors.states import DeploymentState, NodeState


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _core(clock: Clock, epoch: str = "e1") -> InventoryCore:
    return InventoryCore(15.0, clock=clock, wall=clock, feed_epoch=epoch)


def _register(core: InventoryCore, node_id: str, deployment: str | None = "dep-1") -> None:
    core.register(
        {
            "id": node_id,
            "pool_id": "pool-1",
            "provider": "instant",
            "state": "provisioning",
            "token_hash": hash_secret(f"tok-{node_id}"),
            "deployment_id": deployment,
            "model_name": "m",
            "endpoint": f"http://127.0.0.1:9/{node_id}",
        }
    )


def _beat(core: InventoryCore, node_id: str, state: str = "ready") -> None:
    core.heartbeat(Heartbeat(token=f"tok-{node_id}", node_id=node_id, state=state))


def _read(core: InventoryCore, mirror: NodeMirror) -> dict[str, Any]:
    answer = core.node_changes(*mirror.position())
    mirror.apply(answer)
    return answer


def _plain(nodes: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    """What the reconciler decides on, without the fields that age or that the feed leaves out."""
    keys = ("pool_id", "state", "deployment_id", "endpoint", "engine_ready", "reason", "failed_by_node")
    return {n["id"]: tuple(n[k] for k in keys) for n in nodes}


def test_a_quiet_feed_makes_no_version_and_a_change_makes_one() -> None:
    feed = NodeFeed(epoch="e")
    assert feed.seal() == 0 and feed.changed_since("e", 0) == []
    feed.touch("a")
    feed.touch("b")
    feed.touch("a")
    assert feed.changed_since("e", 0) == ["a", "b"]  # once each, in order
    assert feed.version == 1
    assert feed.changed_since("e", 1) == [] and feed.version == 1  # nothing new: the same version
    feed.touch("c")
    assert feed.changed_since("e", 1) == ["c"]
    assert sorted(feed.changed_since("e", 0) or []) == ["a", "b", "c"]


def test_the_history_is_bounded_and_a_reader_too_far_behind_resyncs() -> None:
    feed = NodeFeed(epoch="e", history=3, max_ids=100)
    for i in range(5):
        feed.touch(f"n{i}")
        feed.seal()
    assert feed.version == 5 and feed.floor == 2
    assert sorted(feed.changed_since("e", 2) or []) == ["n2", "n3", "n4"]
    assert feed.changed_since("e", 1) is None  # older than the history kept
    assert feed.changed_since("other", 5) is None  # another epoch: the inventory restarted
    assert feed.changed_since("e", 9) is None  # a version this feed never made
    assert feed.resyncs == 3
    by_ids = NodeFeed(epoch="e", history=100, max_ids=4)
    for i in range(3):
        for j in range(2):
            by_ids.touch(f"n{i}-{j}")
        by_ids.seal()
    assert by_ids.floor == 1 and by_ids.changed_since("e", 0) is None
    assert sorted(by_ids.changed_since("e", 1) or []) == ["n1-0", "n1-1", "n2-0", "n2-1"]


def test_the_mirror_follows_every_change_the_reconciler_decides_on() -> None:
    clock = Clock()
    core = _core(clock)
    mirror = NodeMirror(clock=clock)
    for i in range(6):
        _register(core, f"n{i}")
    _register(core, "idle", deployment=None)  # no deployment: never in the mirror
    first = _read(core, mirror)
    assert first["full"] and mirror.full_reads == 1
    assert _plain(mirror.nodes()) == _plain(core.snapshot(True))

    assert not _read(core, mirror)["nodes"]  # quiet: an empty delta
    _beat(core, "n0")  # provisioning -> ready, engine ready
    _beat(core, "n1", "failed")
    assert core.transition("n2", NodeState.DRAINING, "scaled down")
    core.forget("n3")
    answer = _read(core, mirror)
    assert not answer["full"]
    assert sorted(n["id"] for n in answer["nodes"]) == ["n0", "n1", "n2"] and answer["removed"] == ["n3"]
    assert _plain(mirror.nodes()) == _plain(core.snapshot(True))

    _beat(core, "n0")  # the same again: no change, so no version
    version = core.feed.version
    assert not _read(core, mirror)["nodes"] and core.feed.version == version
    assert mirror.delta_reads == 3


def test_random_changes_keep_the_mirror_equal_to_the_snapshot() -> None:
    clock = Clock()
    core = _core(clock)
    mirror = NodeMirror(clock=clock)
    rnd = random.Random(7)
    ids = [f"n{i}" for i in range(40)]
    for i in ids:
        _register(core, i)
    for step in range(300):
        node = rnd.choice(ids)
        what = rnd.randrange(6)
        if what == 0:
            _beat(core, node)
        elif what == 1:
            _beat(core, node, "failed")
        elif what == 2:
            core.transition(node, rnd.choice(list(NodeState)), f"r{step}")
        elif what == 3:
            core.forget(node)
        elif what == 4:
            _register(core, node, deployment=rnd.choice(["dep-1", "dep-2", None]))
        else:
            clock.t += 5.0
            core.sweep()
        if step % 7 == 0:
            _read(core, mirror)
            assert _plain(mirror.nodes()) == _plain(core.snapshot(True)), step
    _read(core, mirror)
    assert _plain(mirror.nodes()) == _plain(core.snapshot(True))
    assert mirror.full_reads == 1  # one snapshot, deltas after it


def test_seconds_in_state_ages_on_the_mirrors_own_clock() -> None:
    clock = Clock()
    core = _core(clock)
    theirs = Clock(5.0)  # another machine's monotonic clock
    mirror = NodeMirror(clock=theirs)
    _register(core, "n0")
    clock.t += 30.0
    _read(core, mirror)
    theirs.t += 12.5
    (node,) = mirror.nodes()
    assert abs(node["seconds_in_state"] - 42.5) < 1e-6
    assert not _read(core, mirror)["nodes"]  # nothing changed: only the age moved
    theirs.t += 1.0
    assert abs(mirror.nodes()[0]["seconds_in_state"] - 43.5) < 1e-6


def test_a_restart_of_either_side_is_a_full_snapshot() -> None:
    clock = Clock()
    core = _core(clock, epoch="first")
    mirror = NodeMirror(clock=clock)
    for i in range(5):
        _register(core, f"n{i}")
    _read(core, mirror)
    # the inventory restarts (a new epoch): it rebuilds from Postgres, where n4 had already gone
    again = _core(clock, epoch="second")
    for i in range(4):
        _register(again, f"n{i}")
    answer = _read(again, mirror)
    assert answer["full"] and mirror.epoch == "second"
    assert sorted(_plain(mirror.nodes())) == ["n0", "n1", "n2", "n3"]  # n4 is not left behind
    # the deployments actor restarts: a fresh mirror has no position
    fresh = NodeMirror(clock=clock)
    assert fresh.position() == (None, 0)
    assert _read(again, fresh)["full"]
    assert _plain(fresh.nodes()) == _plain(mirror.nodes())
    fresh.reset()
    assert _read(again, fresh)["full"] and fresh.full_reads == 2


def test_most_nodes_changed_is_answered_with_the_snapshot() -> None:
    clock = Clock()
    core = _core(clock)
    mirror = NodeMirror(clock=clock)
    count = 2 * FULL_AFTER
    for i in range(count):
        _register(core, f"n{i}")
    _read(core, mirror)
    for i in range(FULL_AFTER + 5):  # more than half of the nodes
        _beat(core, f"n{i}")
    answer = _read(core, mirror)
    assert answer["full"] and len(answer["nodes"]) == count
    _beat(core, "n9999", "failed")  # unknown: nothing changes
    for i in range(10):
        _beat(core, f"n{count - 1 - i}")
    small = _read(core, mirror)
    assert not small["full"] and len(small["nodes"]) == 10
    assert _plain(mirror.nodes()) == _plain(core.snapshot(True))


def test_engine_metrics_come_apart_for_the_autoscaled_deployments() -> None:
    clock = Clock()
    core = _core(clock)
    _register(core, "a", "dep-1")
    _register(core, "b", "dep-2")
    core.heartbeat(Heartbeat(token="tok-a", node_id="a", state="ready", metrics={"engine_waiting": 3}))
    core.heartbeat(Heartbeat(token="tok-b", node_id="b", state="ready", metrics={"engine_waiting": 1}))
    version = core.feed.seal()
    core.heartbeat(Heartbeat(token="tok-a", node_id="a", state="ready", metrics={"engine_waiting": 9}))
    assert core.feed.seal() == version  # metrics alone are no feed change
    assert core.engine_metrics(["dep-1"]) == {"a": {"engine_waiting": 9}}
    assert core.engine_metrics([]) == {}


def _planned(core: InventoryCore, mirror: NodeMirror, planner: DeploymentPlanner, desired: int) -> list[Any]:
    _read(core, mirror)
    return planner.plan([DeploymentView("dep-1", DeploymentState.DEPLOYING, desired, 1, None)], mirror.nodes())


def test_the_planner_says_when_time_alone_may_change_its_answer() -> None:
    clock = Clock()
    core = _core(clock)
    mirror = NodeMirror(clock=clock)
    planner = DeploymentPlanner(replace_grace_s=10.0, provision_timeout_s=60.0, clock=clock)
    for i in range(3):
        _register(core, f"n{i}")
    assert _planned(core, mirror, planner, 3) == [] and planner.time_bound  # provisioning: a timeout runs
    for i in range(3):
        _beat(core, f"n{i}")
    actions = _planned(core, mirror, planner, 3)  # all ready: deploying -> running is the only action
    assert not planner.time_bound and all(isinstance(a, SetState) for a in actions)
    assert _planned(core, mirror, planner, 4) and planner.time_bound  # short of a replica: backoff, retries
    core.transition("n0", NodeState.UNHEALTHY, "missed heartbeats")
    _planned(core, mirror, planner, 3)
    assert planner.time_bound  # the grace runs out later: a replacement then


def test_quiet_rounds_are_skipped_only_while_nothing_changes() -> None:
    clock = Clock()
    gate = QuietRounds(clock=clock, full_every_s=30.0)
    deps: list[Any] = [("dep-1", "running", 3)]
    assert not gate.quiet(deps, nodes_changed=False)  # never ran: a full round
    gate.ran(deps, steady=True)
    assert gate.quiet(deps, nodes_changed=False) and gate.skipped == 1
    assert not gate.quiet(deps, nodes_changed=True)  # a node changed
    assert not gate.quiet([("dep-1", "running", 4)], nodes_changed=False)  # a deployment changed
    clock.t += 31.0
    assert not gate.quiet(deps, nodes_changed=False)  # the periodic full round
    gate.ran(deps, steady=False)  # it planned something (or waits on time)
    assert not gate.quiet(deps, nodes_changed=False)
    gate.ran(deps, steady=True)
    gate.invalidate()  # an API call, a reset, a full round that failed half-way
    assert not gate.quiet(deps, nodes_changed=False)


def test_a_quiet_round_at_10000_nodes_reads_nothing() -> None:
    clock = Clock()
    core = _core(clock)
    mirror = NodeMirror(clock=clock)
    for i in range(10_000):
        _register(core, f"n{i}", deployment=f"dep-{i % 100}")
    assert len(_read(core, mirror)["nodes"]) == 10_000
    for _ in range(3):  # heartbeats that change nothing the reconciler reads
        for i in range(0, 10_000, 97):
            _beat(core, f"n{i}", "starting")
    answer = _read(core, mirror)
    assert answer == {"epoch": "e1", "version": core.feed.version, "full": False, "nodes": [], "removed": []}
    assert mirror.last_changes == 0 and len(mirror) == 10_000
