"""Replica choice: power of two choices on load, session affinity within a load bound."""

from __future__ import annotations

import random
from collections import Counter

from serve_app.balancer import Balancer


def eps(n: int) -> list[dict[str, str]]:
    return [{"node_id": f"n{i}", "endpoint": f"http://10.0.0.{i}:8000"} for i in range(n)]


def test_two_choices_never_take_the_most_loaded_of_the_pair() -> None:
    out: dict[str, int] = {"n0": 5, "n1": 0, "n2": 5, "n3": 5}
    b = Balancer(out, random.Random(1))
    picks = Counter(b.pick(eps(4))["node_id"] for _ in range(2000))  # type: ignore[index]
    assert picks["n1"] > 900  # n1 wins every pair it is in: half of all pairs
    # the most loaded of any pair never wins it: with all equal but n1, the others share the rest
    assert sum(picks.values()) == 2000


def test_pressure_counts_other_replicas_and_the_engine_queue() -> None:
    out: dict[str, int] = {}
    b = Balancer(out, random.Random(2))
    b.pressure = {"n0": 10.0}  # queued in its engine / in flight from other API replicas
    assert all(b.pick(eps(2))["node_id"] == "n1" for _ in range(200))  # type: ignore[index]
    assert b.load("n0") == 10.0 and b.load("n9") == 0


def test_tried_replicas_are_skipped_and_none_left_is_none() -> None:
    b = Balancer({}, random.Random(3))
    assert b.pick(eps(3), {"n0", "n1"})["node_id"] == "n2"  # type: ignore[index]
    assert b.pick(eps(2), {"n0", "n1"}) is None
    assert b.pick([]) is None


def test_a_session_sticks_to_one_replica_everywhere_and_moves_little() -> None:
    a, b = Balancer({}, random.Random(4)), Balancer({}, random.Random(5))  # two API replicas
    sessions = [f"s{i}".encode() for i in range(300)]
    where = {s: a.pick(eps(5), session=s)["node_id"] for s in sessions}  # type: ignore[index]
    assert all(b.pick(eps(5), session=s)["node_id"] == where[s] for s in sessions)  # type: ignore[index]
    assert len(set(where.values())) == 5  # spread over every replica
    # a replica leaves: only its own sessions move
    gone = "n2"
    left = [e for e in eps(5) if e["node_id"] != gone]
    moved = [s for s in sessions if a.pick(left, session=s)["node_id"] != where[s]]  # type: ignore[index]
    assert moved and all(where[s] == gone for s in moved)


def test_a_session_leaves_its_replica_when_that_one_is_over_the_load_bound() -> None:
    out: dict[str, int] = {}
    b = Balancer(out, random.Random(6))
    s = b"conversation-1"
    home = b.pick(eps(4), session=s)["node_id"]  # type: ignore[index]
    out[home] = 8  # its replica is far above the mean load
    other = b.pick(eps(4), session=s)["node_id"]  # type: ignore[index]
    assert other != home
    out[home] = 1
    assert b.pick(eps(4), session=s)["node_id"] == home  # type: ignore[index]
