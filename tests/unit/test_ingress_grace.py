"""An API replica that starts grants every node a fresh heartbeat timeout only when heartbeats could not
arrive before it (issue 15: with several replicas the others kept receiving them)."""

from __future__ import annotations

from actors.inventory_core import Heartbeat, HeartbeatStatus, InventoryCore
from actors.records import hash_secret
from actors.states import NodeState
from tests.unit.fakes import FakeClock

TIMEOUT = 15.0


def ready(core: InventoryCore, node_id: str) -> None:
    core.register({"id": node_id, "pool_id": "p1", "provider": "fake", "token_hash": hash_secret("t-" + node_id)})
    assert core.heartbeat(Heartbeat(token="t-" + node_id, node_id=node_id)).status == HeartbeatStatus.OK


def test_first_start_grants_and_starts_the_sweep() -> None:
    clock = FakeClock()
    core = InventoryCore(TIMEOUT, clock=clock, wall=FakeClock(), sweeping=False)
    ready(core, "n1")
    clock.advance(100)
    assert core.ingress_started() is True
    assert core.sweeping and core.nodes["n1"].last_seen == clock()


def test_a_replica_starting_while_beats_arrive_through_others_grants_nothing() -> None:
    clock = FakeClock()
    core = InventoryCore(TIMEOUT, clock=clock, wall=FakeClock())
    ready(core, "dead")
    ready(core, "alive")
    clock.advance(10)  # "dead" beat last 10 s ago; "alive" beats through the other replica
    core.ingress_beat_at = clock()
    core.nodes["alive"].last_seen = clock()
    clock.advance(1)
    assert core.ingress_started() is False
    clock.advance(TIMEOUT - 11 + 0.1)
    assert "dead" in core.sweep()  # caught at its own timeout, not one timeout after the replica started
    assert core.nodes["dead"].state == NodeState.UNHEALTHY


def test_the_only_replica_restarting_after_silence_grants() -> None:
    clock = FakeClock()
    core = InventoryCore(TIMEOUT, clock=clock, wall=FakeClock())
    ready(core, "n1")
    core.ingress_beat_at = clock()
    clock.advance(TIMEOUT / 3 + 1)  # no beat arrived meanwhile: the ingress was down
    assert core.ingress_started() is True
    assert core.nodes["n1"].last_seen == clock()
    clock.advance(TIMEOUT - 1)
    assert core.sweep() == []
