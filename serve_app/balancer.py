"""Which replica gets a request: power of two choices on load, or a session's own replica within a load bound.

A replica's load is this API replica's requests in flight to it plus `pressure`: what the other API replicas
have in flight there and what the engine itself says is waiting (its `/metrics` queue, carried by the
heartbeats), as the inventory sums them (pushed back on each load report, ~1 s old at most).

- no session: two distinct random candidates, the one with the lower load (random among equals). It
  avoids the herd that "least of all" makes when many API replicas see the same stale figures, and costs
  two lookups however many replicas there are.
- `x-session-id`: rendezvous hashing (highest random weight) orders the candidates the same way for the
  same session on every API replica, so a conversation keeps reaching the replica holding its prefix cache.
  The first in that order whose load stays within `bound` x the mean load (+1) takes it; a replica that
  leaves moves only its own sessions (consistent hashing with bounded loads).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

AFFINITY_BOUND = 1.25


def _score(session: bytes, node_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(session + b"\0" + node_id.encode(), digest_size=8).digest(), "big")


class Balancer:
    def __init__(self, outstanding: Mapping[str, int], rng: random.Random | None = None) -> None:
        self.outstanding = outstanding  # the proxy's own in-flight counters (node id -> n), read live
        self.pressure: dict[str, float] = {}  # node id -> load seen elsewhere (other replicas + engine queue)
        self.rng = rng or random.Random()

    def load(self, node_id: str) -> float:
        return self.outstanding.get(node_id, 0) + self.pressure.get(node_id, 0.0)

    def pick(
        self,
        candidates: Sequence[dict[str, Any]],
        tried: set[str] | None = None,
        session: bytes | None = None,
    ) -> dict[str, Any] | None:
        pool = [e for e in candidates if e["node_id"] not in tried] if tried else candidates
        if not pool:
            return None
        if len(pool) == 1:
            return pool[0]
        if session:
            return self._affine(pool, session)
        a, b = self.rng.sample(range(len(pool)), 2)
        ea, eb = pool[a], pool[b]
        la, lb = self.load(ea["node_id"]), self.load(eb["node_id"])
        if la == lb:
            return ea if self.rng.random() < 0.5 else eb
        return ea if la < lb else eb

    def _affine(self, pool: Sequence[dict[str, Any]], session: bytes) -> dict[str, Any]:
        ordered = sorted(pool, key=lambda e: _score(session, e["node_id"]), reverse=True)
        loads = [self.load(e["node_id"]) for e in ordered]
        limit = AFFINITY_BOUND * sum(loads) / len(ordered) + 1
        for e, load in zip(ordered, loads, strict=True):
            if load <= limit:
                return e
        return ordered[loads.index(min(loads))]
