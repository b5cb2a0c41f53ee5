"""The autoscaling decision with a fake clock: delays, panic, bounds, zero, flapping load, restart."""

from __future__ import annotations

import pytest

from actors.autoscaler import Autoscaler, AutoscalingPolicy, Signals


def policy(**kw: object) -> AutoscalingPolicy:
    base: dict[str, object] = {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 2,
        "downscale_delay_s": 60,
    }
    base.update(kw)
    return AutoscalingPolicy(**base)  # type: ignore[arg-type]


def run(a: Autoscaler, current: int, load: float, t0: float, t1: float, step: float = 0.5) -> tuple[int, float]:
    """Drive decide() from t0 to t1 (inclusive), applying each decision; return (replicas, time of last change)."""
    t, changed_at = t0, t0
    while t <= t1 + 1e-9:
        d = a.decide(current, Signals(proxy_ongoing=load), t)
        if d.changed:
            current, changed_at = d.desired, t
        t += step
    return current, changed_at


def test_wanted_is_ceil_of_load_over_target_within_bounds() -> None:
    a = Autoscaler(policy())
    assert [a.wanted(x) for x in (0, 0.5, 2, 2.1, 4, 7.9, 100)] == [1, 1, 1, 2, 2, 4, 4]


def test_scale_up_waits_the_upscale_delay() -> None:
    a = Autoscaler(policy())
    d = a.decide(1, Signals(proxy_ongoing=3), 0.0)  # wants 2, not yet panic (3 < 2 x 2)
    assert d.desired == 1 and not d.changed and "of 2" in d.reason
    assert a.decide(1, Signals(proxy_ongoing=3), 1.9).desired == 1
    d = a.decide(1, Signals(proxy_ongoing=3), 2.0)
    assert d.desired == 2 and d.changed and d.inputs["load"] == 3


def test_panic_scales_up_at_once() -> None:
    a = Autoscaler(policy())
    d = a.decide(1, Signals(proxy_ongoing=7), 0.0)  # 7 >= 2 x capacity 2
    assert d.desired == 4 and d.reason.startswith("panic")


def test_load_counts_engine_queue_and_held_requests_without_double_counting() -> None:
    s = Signals(proxy_ongoing=2, proxy_queued=1, engine_running=2, engine_waiting=3)
    assert s.load == 5  # engines see requests of other gateways too: the larger view wins
    assert Signals(proxy_ongoing=2, proxy_queued=2, engine_running=2).load == 4


def test_scale_down_only_after_sustained_low_demand_one_step_at_a_time() -> None:
    a = Autoscaler(policy())
    replicas, _ = run(a, 4, 0.5, 0, 59.5)
    assert replicas == 4  # not yet: 60 s of low demand needed
    replicas, at = run(a, 4, 0.5, 60, 60)
    assert replicas == 3 and at == 60
    replicas, _ = run(a, 3, 0.5, 60.5, 119.5)
    assert replicas == 3  # each step waits the delay again
    replicas, _ = run(a, 3, 0.5, 120, 240)
    assert replicas == 1  # and never below min_replicas


def test_flapping_load_does_not_scale() -> None:
    a = Autoscaler(policy(downscale_delay_s=10))
    current, t = 2, 0.0
    for i in range(200):  # load alternates between needing 3 and needing 1 every 1.5 s
        load = 5 if (i // 3) % 2 == 0 else 1
        d = a.decide(current, Signals(proxy_ongoing=load), t)
        assert d.desired == current, d.reason
        t += 0.5


def test_scale_to_zero_after_idle_and_back_at_once() -> None:
    a = Autoscaler(policy(min_replicas=0, scale_to_zero_after_s=300, downscale_delay_s=60))
    assert a.decide(1, Signals(), 0.0).desired == 1  # idleness counts from the first look
    assert a.decide(1, Signals(proxy_ongoing=1), 10.0).desired == 1
    assert a.decide(1, Signals(), 309.0).desired == 1  # 299 s idle
    d = a.decide(1, Signals(), 310.0)
    assert d.desired == 0 and "zero" in d.reason
    assert a.decide(0, Signals(), 1000.0).desired == 0
    d = a.decide(0, Signals(proxy_queued=1), 1001.0)  # a held request wakes it without delay
    assert d.desired == 1 and "waiting at zero" in d.reason
    assert a.decide(0, Signals(proxy_queued=5), 1002.0).desired == 3


def test_requests_seen_by_the_proxy_keep_it_from_zero() -> None:
    a = Autoscaler(policy(min_replicas=0, scale_to_zero_after_s=30))
    a.decide(1, Signals(), 0.0)
    # short requests finish between two looks: only last_request_at shows them
    assert a.decide(1, Signals(last_request_at=25.0), 40.0).desired == 1
    assert a.decide(1, Signals(), 56.0).desired == 0


def test_policy_change_moves_into_bounds_at_once() -> None:
    a = Autoscaler(policy())
    a.set_policy(policy(min_replicas=2, max_replicas=3))
    assert a.decide(1, Signals(), 0.0).desired == 2
    assert a.decide(4, Signals(proxy_ongoing=10), 0.0).desired == 3


def test_state_survives_a_restart() -> None:
    a = Autoscaler(policy())
    run(a, 4, 0.5, 0, 50)  # 50 s into the 60 s downscale delay
    saved = a.state()
    b = Autoscaler(policy())
    b.restore(saved, now=50.0)
    assert b.decide(4, Signals(proxy_ongoing=0.5), 55.0).desired == 4
    assert b.decide(4, Signals(proxy_ongoing=0.5), 60.0).desired == 3  # the delay was not restarted
    c = Autoscaler(policy(min_replicas=0, scale_to_zero_after_s=100))
    c.restore({"last_request_at": 10.0, "up_since": "junk", "down_since": float("nan")}, now=200.0)
    assert c.state() == {"up_since": None, "down_since": None, "last_request_at": 10.0}
    assert c.decide(1, Signals(), 200.0).desired == 0
    c.restore({"last_request_at": 1e12}, now=5.0)  # a time in the future is clamped
    assert c.state()["last_request_at"] == 5.0


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
        ({"min_replicas": 0}, "scale_to_zero_after_s"),
        ({"max_replicas": 0, "min_replicas": 0, "scale_to_zero_after_s": 1}, "max_replicas"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests"),
        ({"target_ongoing_requests": float("inf")}, "target_ongoing_requests"),
        ({"upscale_delay_s": -1}, "upscale_delay_s"),
        ({"scale_to_zero_after_s": 0}, "scale_to_zero_after_s"),
    ],
)
def test_policy_problems_name_the_field(kw: dict[str, object], field: str) -> None:
    assert field in [f for f, _ in policy(**kw).problems()]


def test_valid_policy_and_round_trip() -> None:
    p = policy(min_replicas=0, scale_to_zero_after_s=300)
    assert p.problems() == []
    assert AutoscalingPolicy.from_dict({**p.to_dict(), "unknown": 1}) == p
