"""Timings of the inventory's health sweep and routing rebuild, and their /metrics gauges."""

from __future__ import annotations

from actors.inventory_core import DurationStat, Heartbeat, InventoryCore
from actors.records import hash_secret
from serve_app.metrics import Snapshot, families
from tests.unit.fakes import FakeClock


def test_duration_stat_keeps_last_and_recent_max() -> None:
    clock = FakeClock()
    stat = DurationStat(window_s=60.0, clock=clock)
    stat.add(0.030)
    stat.add(0.010)
    assert stat.last_s == 0.010
    assert stat.max_s == 0.030
    clock.advance(61)  # next window: the previous one's maximum still counts
    stat.add(0.005)
    assert stat.max_s == 0.030
    clock.advance(61)  # two windows later it is gone
    assert stat.max_s == 0.005
    clock.advance(200)  # nothing recorded for a long time
    assert stat.max_s == 0.0
    assert stat.view() == {"last_s": 0.005, "max_s": 0.0, "count": 3.0}


def _core(clock: FakeClock) -> InventoryCore:
    core = InventoryCore(15.0, clock=clock, wall=FakeClock(1_700_000_000.0))
    core.register(
        {
            "id": "n1",
            "pool_id": "p",
            "provider": "x",
            "token_hash": hash_secret("t1"),
            "model_name": "m",
            "endpoint": "http://e",
        }
    )
    return core


def test_rebuilds_are_timed_but_no_op_refreshes_are_not() -> None:
    clock = FakeClock()
    core = _core(clock)
    core.refresh_routes()
    assert core.rebuilds.count == 1
    assert not core.refresh_routes()  # nothing changed: no rebuild
    assert core.rebuilds.count == 1
    core.heartbeat(Heartbeat(token="t1", node_id="n1", state="ready"))
    assert core.refresh_routes()  # the node became routable: a real rebuild with a new version
    assert core.rebuilds.count == 2
    assert core.rebuilds.last_s >= 0.0


def test_timings_are_prometheus_gauges() -> None:
    inv = {"sweep_last_s": 0.0012, "sweep_max_s": 0.004, "rebuild_last_s": 0.02, "rebuild_max_s": 0.031}
    fams = {f.name: f for f in families(Snapshot(inventory=inv))}
    for name, value in (
        ("inferia_inventory_sweep_seconds", 0.0012),
        ("inferia_inventory_sweep_seconds_max", 0.004),
        ("inferia_routing_rebuild_seconds", 0.02),
        ("inferia_routing_rebuild_seconds_max", 0.031),
    ):
        assert fams[name].type == "gauge"
        assert [s.value for s in fams[name].samples] == [value]
