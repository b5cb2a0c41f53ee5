"""InventoryCore: registration, transitions, heartbeats, the health sweep, routes and write batching."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from actors.inventory_core import (
    Heartbeat,
    HeartbeatStatus,
    InventoryCore,
    NodeEntry,
)
from actors.records import hash_secret
from actors.states import NodeState
from tests.unit.fakes import FakeClock

N = NodeState
TIMEOUT = 15.0
WALL0 = 1_700_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(WALL0)


@pytest.fixture
def core(clock: FakeClock, wall: FakeClock) -> InventoryCore:
    return InventoryCore(TIMEOUT, clock=clock, wall=wall)


def token(node_id: str) -> str:
    return f"nt_{node_id}_secret"


def add(
    core: InventoryCore,
    node_id: str = "n1",
    state: NodeState = N.PROVISIONING,
    *,
    provider: str = "fake",
    instance: str | None = None,
    model: str | None = "m",
    endpoint: str | None = None,
    deployment: str | None = "d1",
) -> NodeEntry:
    info: dict[str, Any] = {
        "id": node_id,
        "pool_id": "pool-1",
        "provider": provider,
        "state": str(state),
        "token_hash": hash_secret(token(node_id)),
        "deployment_id": deployment,
        "model_name": model,
        "endpoint": endpoint,
        "provider_instance_id": instance,
    }
    return core.register(info)


def beat(node_id: str | None = "n1", state: str = "ready", **kw: Any) -> Heartbeat:
    tok = kw.pop("token", token(node_id) if node_id else None)
    return Heartbeat(token=tok, node_id=node_id, state=state, **kw)


def ready_node(core: InventoryCore, node_id: str = "n1", endpoint: str = "http://10.0.0.1:8000") -> None:
    add(core, node_id, endpoint=endpoint)
    assert core.heartbeat(beat(node_id)).status == HeartbeatStatus.OK
    assert core.nodes[node_id].state == N.READY


# ------------------------------------------------------------------------------------------- register
def test_register_adds_a_provisioning_node(core: InventoryCore, clock: FakeClock) -> None:
    e = add(core, instance="i-1")
    assert e.state == N.PROVISIONING
    assert e.state_since == clock()
    assert core.nodes["n1"] is e
    assert core.counts() == {"provisioning": 1}


def test_register_is_idempotent_and_never_resurrects(core: InventoryCore) -> None:
    add(core)
    assert core.transition("n1", N.TERMINATED)
    e = add(core, state=N.PROVISIONING, endpoint="http://x:1")
    assert e.state == N.TERMINATED
    assert e.endpoint == "http://x:1"  # details are refreshed, the state is not
    assert len(core.nodes) == 1


def test_register_keeps_known_fields_when_info_has_none(core: InventoryCore) -> None:
    add(core, endpoint="http://a:1", model="llama")
    e = add(core, endpoint=None, model=None)
    assert (e.endpoint, e.model_name) == ("http://a:1", "llama")


def test_forget_removes_node_and_instance_index(core: InventoryCore) -> None:
    add(core, instance="i-1")
    core.forget("n1")
    assert "n1" not in core.nodes
    hb = Heartbeat(token=token("n1"), provider="fake", provider_instance_id="i-1")
    assert core.heartbeat(hb).status == HeartbeatStatus.NOT_FOUND


# ------------------------------------------------------------------------------------------- transitions
def test_transition_legal_and_illegal(core: InventoryCore, clock: FakeClock) -> None:
    add(core)
    clock.advance(3)
    assert core.transition("n1", N.READY)
    assert core.nodes["n1"].state_since == clock()
    assert not core.transition("n1", N.PROVISIONING)  # illegal
    assert core.nodes["n1"].state == N.READY
    assert not core.transition("ghost", N.READY)  # unknown
    assert core.transitions_total == 1


def test_transition_to_same_state_is_idempotent(core: InventoryCore) -> None:
    add(core)
    core.transition("n1", N.UNHEALTHY, "a")
    core.take_writes()
    assert core.transition("n1", N.UNHEALTHY, "b")
    assert core.nodes["n1"].reason == "b"
    assert core.take_writes() == ([], [])
    assert core.transitions_total == 1


def test_transition_records_cas_write(core: InventoryCore) -> None:
    add(core)
    core.transition("n1", N.READY)
    states, beats = core.take_writes()
    assert states == [("n1", (N.PROVISIONING,), N.READY, None)]
    assert beats == []
    assert core.take_writes() == ([], [])


def test_pending_transitions_accumulate_expected_states(core: InventoryCore) -> None:
    add(core)
    core.transition("n1", N.READY)
    core.transition("n1", N.UNHEALTHY, "missed")
    core.transition("n1", N.READY)
    core.transition("n1", N.DRAINING, "bye")
    states, _ = core.take_writes()
    assert states == [("n1", (N.PROVISIONING, N.READY, N.UNHEALTHY), N.DRAINING, "bye")]


def test_leaving_ready_clears_engine_ready(core: InventoryCore) -> None:
    ready_node(core)
    assert core.nodes["n1"].engine_ready
    core.transition("n1", N.DRAINING)
    assert not core.nodes["n1"].engine_ready


# ------------------------------------------------------------------------------------------- heartbeats
def test_heartbeat_unknown_node_is_404(core: InventoryCore) -> None:
    res = core.heartbeat(beat("nope"))
    assert res.status == HeartbeatStatus.NOT_FOUND
    assert res.node_id == "nope"


def test_heartbeat_without_identity_is_404(core: InventoryCore) -> None:
    add(core)
    assert core.heartbeat(Heartbeat(token=token("n1"))).status == HeartbeatStatus.NOT_FOUND
    assert core.heartbeat(Heartbeat(token=token("n1"), provider="fake")).status == HeartbeatStatus.NOT_FOUND


@pytest.mark.parametrize("tok", ["wrong", "", None, token("n2")])
def test_heartbeat_wrong_token_is_403(core: InventoryCore, tok: str | None) -> None:
    add(core)
    add(core, "n2")
    res = core.heartbeat(beat("n1", token=tok))
    assert res.status == HeartbeatStatus.FORBIDDEN
    e = core.nodes["n1"]
    assert e.state == N.PROVISIONING and not e.engine_ready
    assert core.heartbeats_total == 0
    assert core.take_writes() == ([], [])


def test_token_is_checked_against_its_hash(core: InventoryCore) -> None:
    add(core)
    # the hash itself is not a valid token
    res = core.heartbeat(beat("n1", token=hash_secret(token("n1"))))
    assert res.status == HeartbeatStatus.FORBIDDEN


@pytest.mark.parametrize("state", ["ready", "starting", "failed"])
def test_heartbeat_from_a_draining_node_is_accepted_but_never_routes(
    core: InventoryCore, clock: FakeClock, state: str
) -> None:
    """A draining node keeps its engine for in-flight work: its beats are acknowledged, nothing more."""
    add(core)
    assert core.transition("n1", N.DRAINING)
    core.take_writes()
    clock.advance(1)
    res = core.heartbeat(beat("n1", state=state, endpoint="http://new:1"))
    assert res.status == HeartbeatStatus.OK
    e = core.nodes["n1"]
    assert e.state == N.DRAINING
    assert e.endpoint is None
    assert core.routing_table()["models"] == {}
    assert core.take_writes()[0] == []


@pytest.mark.parametrize("gone", [N.TERMINATED, N.FAILED])
@pytest.mark.parametrize("state", ["ready", "starting", "failed"])
def test_heartbeat_from_a_gone_node_is_410_and_never_resurrects(
    core: InventoryCore, clock: FakeClock, gone: NodeState, state: str
) -> None:
    add(core)
    assert core.transition("n1", gone)
    core.take_writes()
    since = core.nodes["n1"].last_seen
    clock.advance(1)
    res = core.heartbeat(beat("n1", state=state, endpoint="http://new:1"))
    assert res.status == HeartbeatStatus.GONE
    assert str(gone) in (res.message or "")
    e = core.nodes["n1"]
    assert e.state == gone
    assert not e.engine_ready
    assert e.last_seen == since
    assert e.endpoint is None
    assert core.take_writes() == ([], [])
    assert core.routing_table()["models"] == {}


def test_wrong_token_on_gone_node_is_403_not_410(core: InventoryCore) -> None:
    add(core)
    core.transition("n1", N.TERMINATED)
    assert core.heartbeat(beat("n1", token="bad")).status == HeartbeatStatus.FORBIDDEN


def test_ready_beat_makes_provisioning_node_ready(core: InventoryCore, clock: FakeClock) -> None:
    add(core)
    clock.advance(2)
    res = core.heartbeat(beat("n1", endpoint="http://10.0.0.1:8000", health_score=90))
    assert res.status == HeartbeatStatus.OK and res.node_id == "n1"
    e = core.nodes["n1"]
    assert e.state == N.READY
    assert e.engine_ready
    assert e.endpoint == "http://10.0.0.1:8000"
    assert e.health_score == 90
    assert e.last_seen == clock()
    assert core.heartbeats_total == 1


def test_starting_beat_keeps_node_provisioning(core: InventoryCore) -> None:
    add(core)
    assert core.heartbeat(beat("n1", state="starting")).status == HeartbeatStatus.OK
    assert core.nodes["n1"].state == N.PROVISIONING
    assert not core.nodes["n1"].engine_ready


def test_starting_beat_on_ready_node_takes_it_out_of_routing(core: InventoryCore) -> None:
    ready_node(core)
    assert core.routing_table()["models"]
    core.heartbeat(beat("n1", state="starting"))
    e = core.nodes["n1"]
    assert e.state == N.READY and not e.engine_ready
    assert core.routing_table()["models"] == {}


def test_failed_beat_marks_ready_node_unhealthy(core: InventoryCore) -> None:
    ready_node(core)
    core.take_writes()
    res = core.heartbeat(beat("n1", state="failed", reason="engine exited with code 1"))
    assert res.status == HeartbeatStatus.OK
    e = core.nodes["n1"]
    assert e.state == N.UNHEALTHY
    assert e.reason == "engine exited with code 1"
    assert not e.engine_ready
    states, _ = core.take_writes()
    assert states == [("n1", (N.READY,), N.UNHEALTHY, "engine exited with code 1")]


def test_failed_beat_without_reason_gets_a_default(core: InventoryCore) -> None:
    ready_node(core)
    core.heartbeat(beat("n1", state="failed"))
    assert core.nodes["n1"].reason == "node reported failure"


def test_failed_beat_on_provisioning_node_leaves_provisioning(core: InventoryCore) -> None:
    add(core)
    core.heartbeat(beat("n1", state="failed", reason="boom"))
    e = core.nodes["n1"]
    assert e.state != N.PROVISIONING
    assert e.reason == "boom"
    assert not e.engine_ready


def test_health_score_is_clamped(core: InventoryCore) -> None:
    ready_node(core)
    core.heartbeat(beat("n1", health_score=250))
    assert core.nodes["n1"].health_score == 100
    core.heartbeat(beat("n1", health_score=-5))
    assert core.nodes["n1"].health_score == 0


def test_metrics_are_kept(core: InventoryCore) -> None:
    ready_node(core)
    core.heartbeat(beat("n1", metrics={"cpu_percent": 12.5}))
    assert core.nodes["n1"].metrics == {"cpu_percent": 12.5}
    core.heartbeat(beat("n1"))  # an empty report keeps the last metrics
    assert core.nodes["n1"].metrics == {"cpu_percent": 12.5}


def test_identity_by_provider_instance_id(core: InventoryCore) -> None:
    add(core, instance="i-1")
    hb = Heartbeat(token=token("n1"), provider="fake", provider_instance_id="i-1")
    res = core.heartbeat(hb)
    assert (res.status, res.node_id) == (HeartbeatStatus.OK, "n1")
    assert core.nodes["n1"].state == N.READY


def test_instance_id_is_scoped_by_provider(core: InventoryCore) -> None:
    add(core, instance="i-1")
    hb = Heartbeat(token=token("n1"), provider="other", provider_instance_id="i-1")
    assert core.heartbeat(hb).status == HeartbeatStatus.NOT_FOUND


def test_identity_survives_a_provider_side_redeploy(core: InventoryCore) -> None:
    add(core, instance="i-1")
    hb = Heartbeat(
        token=token("n1"),
        provider="fake",
        provider_instance_id="i-2",
        previous_provider_instance_id="i-1",
    )
    res = core.heartbeat(hb)
    assert (res.status, res.node_id) == (HeartbeatStatus.OK, "n1")
    assert core.nodes["n1"].provider_instance_id == "i-2"
    # the new id now resolves on its own; the old one no longer does
    new_only = Heartbeat(token=token("n1"), provider="fake", provider_instance_id="i-2")
    assert core.heartbeat(new_only).status == HeartbeatStatus.OK
    old_only = Heartbeat(token=token("n1"), provider="fake", provider_instance_id="i-1")
    assert core.heartbeat(old_only).status == HeartbeatStatus.NOT_FOUND


def test_unknown_previous_instance_is_404(core: InventoryCore) -> None:
    add(core, instance="i-1")
    hb = Heartbeat(token=token("n1"), provider="fake", provider_instance_id="i-9", previous_provider_instance_id="i-8")
    assert core.heartbeat(hb).status == HeartbeatStatus.NOT_FOUND


def test_heartbeat_by_node_id_learns_the_instance_id(core: InventoryCore) -> None:
    add(core)
    core.heartbeat(beat("n1", provider_instance_id="i-7"))
    hb = Heartbeat(token=token("n1"), provider="fake", provider_instance_id="i-7")
    assert core.heartbeat(hb).node_id == "n1"


def test_heartbeat_batch(core: InventoryCore) -> None:
    add(core)
    results = core.heartbeat_batch([beat("n1"), beat("zz"), beat("n1", token="x")])
    assert [r.status for r in results] == [
        HeartbeatStatus.OK,
        HeartbeatStatus.NOT_FOUND,
        HeartbeatStatus.FORBIDDEN,
    ]


# ------------------------------------------------------------------------------------------- sweep
def test_sweep_marks_unhealthy_exactly_after_the_timeout(core: InventoryCore, clock: FakeClock) -> None:
    ready_node(core)
    core.take_writes()
    clock.advance(TIMEOUT - 0.5)
    assert core.sweep() == []
    clock.advance(0.5)  # exactly the timeout: not yet
    assert core.sweep() == []
    assert core.nodes["n1"].state == N.READY
    clock.advance(0.01)
    assert core.sweep() == ["n1"]
    e = core.nodes["n1"]
    assert e.state == N.UNHEALTHY
    assert e.reason is not None and "no heartbeat" in e.reason
    assert not e.engine_ready
    states, _ = core.take_writes()
    assert states == [("n1", (N.READY,), N.UNHEALTHY, e.reason)]
    assert core.sweep() == []  # already unhealthy: nothing more


def _relayed_pair(core: InventoryCore) -> None:
    """Two ready nodes of pool-1 whose health the pool relays (a provider that reports health)."""
    for nid in ("a", "b"):
        add(core, nid, endpoint=f"http://{nid}:8000")
    assert [r.status for r in core.relay("pool-1", [beat("a"), beat("b")], first=True)] == [HeartbeatStatus.OK] * 2
    assert core.nodes["a"].state == core.nodes["b"].state == N.READY and core.nodes["a"].relayed


def test_a_silent_relay_is_a_restarting_pool_not_dead_nodes(core: InventoryCore, clock: FakeClock) -> None:
    _relayed_pair(core)
    clock.advance(TIMEOUT * 4)  # the pool actor is down: nobody relays
    assert core.sweep() == []
    assert sorted(r["node_id"] for r in core.routing_table()["models"]["m"]) == ["a", "b"]
    # the restarted pool's first relay: what it did not report yet counts from now
    core.relay("pool-1", [beat("a")], first=True)
    clock.advance(TIMEOUT - 1)
    core.relay("pool-1", [beat("a")])
    assert core.sweep() == []
    clock.advance(1.5)  # b is still missing from a relay that is alive: now it is unhealthy
    core.relay("pool-1", [beat("a")])
    assert core.sweep() == ["b"]
    assert [r["node_id"] for r in core.routing_table()["models"]["m"]] == ["a"]


def test_an_alive_relay_without_a_node_marks_it(core: InventoryCore, clock: FakeClock) -> None:
    """The pool's watch failed (it relays nothing, but it relays): its nodes go unhealthy after the timeout."""
    _relayed_pair(core)
    for _ in range(4):
        clock.advance(TIMEOUT / 3)
        core.relay("pool-1", [])
    assert sorted(core.sweep()) == ["a", "b"]


def test_a_relay_of_another_pool_does_not_keep_a_silent_pool_swept(core: InventoryCore, clock: FakeClock) -> None:
    _relayed_pair(core)
    clock.advance(TIMEOUT * 2)
    core.relay("pool-2", [], first=True)
    assert core.sweep() == []


def test_a_silent_pool_without_nodes_is_forgotten(core: InventoryCore, clock: FakeClock) -> None:
    """relay_at is bounded: a pool whose relayed nodes are gone and that went silent leaves it; one that
    still has a relayed node (restarting) or still relays stays."""
    _relayed_pair(core)
    core.relay("pool-2", [], first=True)
    core.relay("pool-3", [], first=True)
    core.forget("a")
    core.forget("b")
    clock.advance(TIMEOUT / 2)
    core.relay("pool-3", [])
    assert core.sweep() == [] and set(core.relay_at) == {"pool-1", "pool-2", "pool-3"}
    clock.advance(TIMEOUT * 0.75)
    core.relay("pool-3", [])
    core.sweep()
    assert set(core.relay_at) == {"pool-3"}  # pool-1 (its nodes forgotten) and pool-2 silent past the timeout
    _relayed_pair(core)  # pool-1 relays again: back
    clock.advance(TIMEOUT * 3)
    assert core.sweep() == [] and "pool-1" in core.relay_at  # silent, but its nodes are still there


def test_heartbeats_keep_a_node_ready(core: InventoryCore, clock: FakeClock) -> None:
    ready_node(core)
    for _ in range(10):
        clock.advance(TIMEOUT - 1)
        core.heartbeat(beat("n1"))
        assert core.sweep() == []
    assert core.nodes["n1"].state == N.READY


def test_sweep_leaves_other_states_alone(core: InventoryCore, clock: FakeClock) -> None:
    add(core, "p")  # provisioning: the deployment reconciler times these out
    add(core, "d")
    core.transition("d", N.DRAINING)
    clock.advance(TIMEOUT * 10)
    assert core.sweep() == []
    assert core.nodes["p"].state == N.PROVISIONING
    assert core.nodes["d"].state == N.DRAINING


def test_heartbeat_brings_an_unhealthy_node_back(core: InventoryCore, clock: FakeClock) -> None:
    ready_node(core)
    clock.advance(TIMEOUT + 1)
    core.sweep()
    assert core.routing_table()["models"] == {}
    core.take_writes()
    res = core.heartbeat(beat("n1"))
    assert res.status == HeartbeatStatus.OK
    e = core.nodes["n1"]
    assert e.state == N.READY and e.engine_ready
    assert [r["node_id"] for r in core.routing_table()["models"]["m"]] == ["n1"]
    states, _ = core.take_writes()
    assert states == [("n1", (N.UNHEALTHY,), N.READY, None)]


def test_view_and_snapshot(core: InventoryCore, clock: FakeClock) -> None:
    ready_node(core)
    add(core, "idle", deployment=None)
    clock.advance(4)
    snap = {v["id"]: v for v in core.snapshot()}
    assert set(snap) == {"n1", "idle"}
    v = snap["n1"]
    assert v["state"] == "ready"
    assert v["engine_ready"] is True
    assert v["seconds_in_state"] == 4.0
    assert v["seconds_since_heartbeat"] == 4.0
    assert v["deployment_id"] == "d1"
    assert "token_hash" not in v
    assert [v["id"] for v in core.snapshot(deployment_only=True)] == ["n1"]


# ------------------------------------------------------------------------------------------- routing
def test_routing_table_lists_only_ready_engine_ready_nodes(core: InventoryCore) -> None:
    ready_node(core, "a", "http://a:1")
    ready_node(core, "b", "http://b:1")
    add(core, "prov", endpoint="http://p:1")  # provisioning
    add(core, "noendpoint")
    core.heartbeat(beat("noendpoint"))  # ready but no endpoint
    add(core, "nomodel", model=None, endpoint="http://nm:1")
    core.heartbeat(beat("nomodel"))  # ready but no model
    ready_node(core, "starting", "http://s:1")
    core.heartbeat(beat("starting", state="starting"))  # ready, engine not ready
    ready_node(core, "sick", "http://u:1")
    core.heartbeat(beat("sick", state="failed"))  # unhealthy
    table = core.routing_table()
    assert list(table["models"]) == ["m"]
    routes = table["models"]["m"]
    assert [r["node_id"] for r in routes] == ["a", "b"]
    assert routes[0] == {
        "deployment_id": "d1",
        "node_id": "a",
        "pool_id": "pool-1",
        "endpoint": "http://a:1",
        "served_model": "m",
        "health_score": 100,
    }


def test_served_model_defaults_to_model_name(core: InventoryCore) -> None:
    core.register(
        {
            "id": "n1",
            "pool_id": "p",
            "provider": "fake",
            "token_hash": hash_secret(token("n1")),
            "model_name": "llama",
            "served_model": "llama-3-8b.gguf",
            "endpoint": "http://a:1",
        }
    )
    core.heartbeat(beat("n1"))
    assert core.routing_table()["models"]["llama"][0]["served_model"] == "llama-3-8b.gguf"


def test_initial_version_comes_from_the_wall_clock(core: InventoryCore) -> None:
    assert core.version == int(WALL0 * 1000)
    assert core.routing_table() == {"version": int(WALL0 * 1000), "changed_at": WALL0, "models": {}}


def test_version_bumps_only_when_content_changes(core: InventoryCore) -> None:
    v0 = core.routing_table()["version"]
    add(core, endpoint="http://a:1")
    assert core.routing_table()["version"] == v0  # provisioning: not routable, no change
    core.heartbeat(beat("n1"))
    v1 = core.routing_table()["version"]
    assert v1 == v0 + 1
    assert core.routing_table()["changed_at"] == core.wall()  # stamped at the change
    assert core.routing_table()["version"] == v1  # nothing changed
    core.heartbeat(beat("n1", health_score=40))
    assert core.routing_table()["version"] == v1  # health score only
    core.heartbeat(beat("n1", endpoint="http://a:2"))
    v2 = core.routing_table()["version"]
    assert v2 == v1 + 1
    assert core.routing_table()["models"]["m"][0]["endpoint"] == "http://a:2"


def test_health_score_only_rebuild_keeps_version(core: InventoryCore) -> None:
    ready_node(core, "a", "http://a:1")
    v = core.routing_table()["version"]
    core.heartbeat(beat("a", health_score=10))
    add(core, "b")  # registering marks the table dirty, but adds no route
    assert not core.refresh_routes()
    assert core.routing_table()["version"] == v


def test_versions_strictly_increase(core: InventoryCore, clock: FakeClock) -> None:
    seen = [core.routing_table()["version"]]
    ready_node(core, "a", "http://a:1")
    seen.append(core.routing_table()["version"])
    clock.advance(TIMEOUT + 1)
    core.sweep()
    seen.append(core.routing_table()["version"])
    core.heartbeat(beat("a"))
    seen.append(core.routing_table()["version"])
    core.transition("a", N.DRAINING)
    seen.append(core.routing_table()["version"])
    assert all(b > a for a, b in itertools.pairwise(seen)), seen


def test_refresh_routes_reports_changes(core: InventoryCore) -> None:
    assert not core.refresh_routes()
    ready_node(core)
    assert core.refresh_routes()
    assert not core.refresh_routes()


def test_forget_removes_routes(core: InventoryCore) -> None:
    ready_node(core)
    v = core.routing_table()["version"]
    core.forget("n1")
    t = core.routing_table()
    assert t["models"] == {} and t["version"] == v + 1


def test_new_core_starts_above_an_earlier_version(clock: FakeClock, wall: FakeClock) -> None:
    first = InventoryCore(TIMEOUT, clock=clock, wall=wall)
    ready_node(first)
    v = first.routing_table()["version"]
    wall.advance(1)
    second = InventoryCore(TIMEOUT, clock=clock, wall=wall)
    assert second.routing_table()["version"] > v


# ------------------------------------------------------------------------------------------- writes
def test_at_most_one_heartbeat_write_per_node_per_flush(core: InventoryCore, wall: FakeClock) -> None:
    ready_node(core, "a", "http://a:1")
    ready_node(core, "b", "http://b:1")
    core.take_writes()
    for score in (90, 80, 70):
        wall.advance(1)
        core.heartbeat(beat("a", health_score=score))
    core.heartbeat(beat("b", health_score=55))
    states, beats = core.take_writes()
    assert states == []
    by_node = {k: (at, score) for k, at, score in beats}
    assert len(beats) == 2
    assert by_node["a"] == (datetime.fromtimestamp(WALL0 + 3, UTC), 70)  # the latest wins
    assert by_node["b"][1] == 55
    assert core.take_writes() == ([], [])


def test_rejected_heartbeats_write_nothing(core: InventoryCore) -> None:
    add(core)
    core.heartbeat(beat("n1", token="bad"))
    core.heartbeat(beat("ghost"))
    assert core.take_writes() == ([], [])


def test_restore_writes_puts_back_a_failed_flush(core: InventoryCore) -> None:
    ready_node(core)
    states, beats = core.take_writes()
    assert states and beats
    core.restore_writes(states, beats)
    assert core.take_writes() == (states, beats)


def test_restore_writes_newer_heartbeat_wins(core: InventoryCore, wall: FakeClock) -> None:
    ready_node(core)
    _, old_beats = core.take_writes()
    wall.advance(5)
    core.heartbeat(beat("n1", health_score=42))
    core.restore_writes([], old_beats)
    _, beats = core.take_writes()
    assert beats == [("n1", datetime.fromtimestamp(WALL0 + 5, UTC), 42)]


def test_restore_writes_newer_transition_wins(core: InventoryCore) -> None:
    add(core)
    core.transition("n1", N.READY)
    old, _ = core.take_writes()
    core.transition("n1", N.DRAINING, "bye")
    core.restore_writes(old, [])
    states, _ = core.take_writes()
    assert len(states) == 1
    node_id, _expected, new, reason = states[0]
    assert (node_id, new, reason) == ("n1", N.DRAINING, "bye")


def test_restore_writes_keeps_the_database_state_expected(core: InventoryCore) -> None:
    """After a failed flush the database still holds the state before the restored write.

    The newer pending write must still be allowed (CAS) from that state, or the row is stuck:
    here the database says `ready`, the node is `draining`, and CAS from (`unhealthy`,) never matches.
    """
    ready_node(core)
    core.take_writes()  # flushed: the database says ready
    core.transition("n1", N.UNHEALTHY, "missed")
    failed, beats = core.take_writes()  # this flush fails: the database still says ready
    core.transition("n1", N.DRAINING, "bye")
    core.restore_writes(failed, beats)
    states, _ = core.take_writes()
    assert len(states) == 1
    node_id, expected, new, _reason = states[0]
    assert (node_id, new) == ("n1", N.DRAINING)
    assert N.READY in expected, f"CAS expects {expected}, but the database still holds 'ready'"
    assert N.UNHEALTHY in expected


# ------------------------------------------------------------------------------------ heartbeat seq (issue 10 #8)
def test_a_late_older_beat_cannot_resurrect(core: InventoryCore) -> None:
    """The agent retried an old `ready` beat on the fallback port; it lands after a newer `failed` one."""
    ready_node(core)
    assert core.heartbeat(beat(state="ready", seq=5, start_id="s1")).status == HeartbeatStatus.OK
    assert core.heartbeat(beat(state="failed", reason="engine exited", seq=7, start_id="s1")).status == 200
    assert core.nodes["n1"].state == N.UNHEALTHY
    late = core.heartbeat(beat(state="ready", seq=6, start_id="s1"))
    assert late.status == HeartbeatStatus.OK and late.message == "stale heartbeat ignored"
    assert core.nodes["n1"].state == N.UNHEALTHY  # not applied
    assert core.routing_table()["models"] == {}
    assert core.heartbeat(beat(state="ready", seq=7, start_id="s1")).message == "stale heartbeat ignored"
    assert core.stale_beats_total == 2
    assert core.heartbeat(beat(state="ready", seq=8, start_id="s1")).message is None
    assert core.nodes["n1"].state == N.READY


def test_a_beat_of_a_new_agent_start_is_applied(core: InventoryCore) -> None:
    ready_node(core)
    core.heartbeat(beat(state="failed", seq=900, start_id="s1"))
    assert core.nodes["n1"].state == N.UNHEALTHY
    res = core.heartbeat(beat(state="ready", seq=1, start_id="s2"))  # the agent restarted: seq starts again
    assert res.message is None and core.nodes["n1"].state == N.READY


def test_beats_without_seq_work_as_before(core: InventoryCore) -> None:
    """Old agents and provider-relayed health (the Nosana sidecar) send no seq."""
    ready_node(core)
    core.heartbeat(beat(state="ready", seq=10, start_id="s1"))
    core.heartbeat(beat(state="failed"))
    assert core.nodes["n1"].state == N.UNHEALTHY
    core.heartbeat(beat(state="ready"))
    assert core.nodes["n1"].state == N.READY
    assert core.stale_beats_total == 0


def test_a_stale_beat_of_a_terminated_node_is_still_gone(core: InventoryCore) -> None:
    ready_node(core)
    core.heartbeat(beat(seq=3, start_id="s1"))
    core.transition("n1", N.TERMINATED)
    assert core.heartbeat(beat(seq=2, start_id="s1")).status == HeartbeatStatus.GONE


# ------------------------------------------------------------------------------------ load (issue 10 #9)
def test_load_reports_are_summed_over_replicas_and_expire(core: InventoryCore, clock: FakeClock) -> None:
    ready_node(core, "n1")
    add(core, "n2", deployment="d2")
    core.report_load("api-a", {"n1": 2, "n2": 1}, {"d1": 4})
    core.report_load("api-b", {"n1": 3, "n2": 0})
    assert core.node_load() == {"n1": 5, "n2": 1}
    assert core.node_load(["n1", "n3"]) == {"n1": 5, "n3": 0}
    assert core.deployment_load() == {"d1": {"ongoing": 5, "queued": 4}, "d2": {"ongoing": 1, "queued": 0}}
    core.report_load("api-a", {"n1": 1})  # a replica's new report replaces its last one
    assert core.node_load() == {"n1": 4}
    clock.advance(2.0)
    core.report_load("api-b", {"n1": 1})
    clock.advance(1.5)  # api-a's report is 3.5 s old: expired; api-b's counts
    assert core.node_load() == {"n1": 1}
    clock.advance(2.0)
    assert core.node_load() == {}
    core.report_load("api-c", {})
    assert set(core._load) == {"api-c"}  # expired reports are dropped, not kept forever


def test_pressure_is_what_a_replica_cannot_see_itself(core: InventoryCore, clock: FakeClock) -> None:
    ready_node(core, "n1")
    ready_node(core, "n2", endpoint="http://10.0.0.2:8000")
    core.report_load("api-a", {"n1": 2})
    core.report_load("api-b", {"n1": 3, "n2": 1})
    assert core.pressure("api-a") == {"n1": 3, "n2": 1}  # only the other replica's requests
    assert core.pressure("api-b") == {"n1": 2}
    assert core.heartbeat(beat("n2", metrics={"engine_waiting": 4.0, "engine_running": 2.0})).status == (
        HeartbeatStatus.OK
    )
    assert core.pressure("api-a") == {"n1": 3, "n2": 5}  # + the engine's own queue
    clock.advance(3.5)  # the reports expired; the engine's queue stays until its next beat
    assert core.pressure("api-a") == {"n2": 4}
