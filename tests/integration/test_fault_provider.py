"""Faults at the provider the control plane must ride out or surface, on the instant test provider
(tests/support/instant.py): a pool's `faults` config makes the k-th call of an operation for a node fail.

The pool actor retries provider calls with the default RetryPolicy (actors/retry.py: 5 attempts, 0.5 s
doubling with +-20 % jitter, so about 7.5 s of waiting before the last attempt; each call limited to
300 s). Neither is configurable per pool, so the scenarios below stay within a few retry rounds and run
their pools side by side. Each ends with the fault suite's invariant (tests/support/invariants.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import ray
import redis

from actors.runtime import get_pool_actor
from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl
from tests.support import instant
from tests.support.invariants import wait_converged

ATTEMPTS = 5  # RetryPolicy().attempts: what the pool actor uses for every provider call
CONVERGE_S = 90.0
FIGURES: dict[str, float] = {}


def _tag() -> str:
    return uuid.uuid4().hex[:6]


def _setup(api: Client, prefix: str, config: dict[str, Any], max_nodes: int = 8) -> tuple[str, str, str]:
    """(model name, pool name, pool id) of a fresh model and instant pool."""
    name = f"{prefix}-{_tag()}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(name, provider="instant", max_nodes=max_nodes, provider_config=config)
    return name, pool["name"], pool["id"]


def _calls(data_dir: Path, pool_id: str, op: str, node_id: str) -> int:
    """How many times the provider was asked `op` for the node (the fault counter the adapter persists)."""
    f = instant.pool_dir(data_dir, pool_id) / f".calls.{op}.{node_id}"
    return int(f.read_text()) if f.exists() else 0


def _journal(data_dir: Path, pool_id: str, op: str) -> Counter[str]:
    return Counter(n for o, n in instant.journal(data_dir, pool_id) if o == op)


def _dep_nodes(api: Client, pool_id: str, dep_id: str) -> list[dict[str, Any]]:
    return [n for n in api.pool_nodes(pool_id, include_terminated=True) if n.get("deployment_id") == dep_id]


def _delete_and_wait(api: Client, dep_ids: list[str]) -> None:
    for dep_id in dep_ids:
        api.delete_deployment(dep_id)
    cpl.wait_for(
        lambda: not {d["id"] for d in api.list_deployments()} & set(dep_ids), CONVERGE_S, every=0.25, what="deleted"
    )


def _stream_events(cp: ControlPlane, node_ids: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, data) of the Redis `events` stream entries about these nodes."""
    assert cp.cfg is not None
    r = redis.Redis.from_url(cp.cfg.redis_url)
    try:
        out: list[tuple[str, dict[str, Any]]] = []
        entries: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange("events", count=100_000)  # type: ignore[assignment]
        for _id, fields in entries:
            kind = fields[b"kind"].decode()
            data: dict[str, Any] = json.loads(fields[b"data"])
            if data.get("node_id") in node_ids:
                out.append((kind, data))
        return out
    finally:
        r.close()


def test_transient_provider_faults_and_slow_provider_converge(control_plane: ControlPlane, api: Client) -> None:
    """429, 500, a timeout and a lost reply on provision; a slow provider; failing deprovisions (within the
    retry budget, and beyond it so that the pool's provider reconcile finishes the job): every replica comes
    up, nothing is created twice, and after the delete nothing is left at the provider."""
    data_dir = Path(control_plane.settings.data_dir)
    prov = _setup(api, "fp-prov", {"faults": {"provision": ["429", "500", "timeout", "lost_reply"]}})
    slow = _setup(api, "fp-slow", {"latency_s": 2.0, "deprovision_latency_s": 1.0})
    deprov = _setup(api, "fp-deprov", {"faults": {"deprovision": ["500", "lost_reply", "timeout"]}})
    # six failures: the first terminate gives up after its 5 attempts, the provider reconcile retries it
    stubborn = _setup(api, "fp-stub", {"faults": {"deprovision": ["500"] * (ATTEMPTS + 1)}})
    setups = [prov, slow, deprov, stubborn]
    pool_ids = [s[2] for s in setups]

    t0 = time.monotonic()
    deps = [api.deploy(model, pool, replicas=2)["id"] for model, pool, _ in setups]
    wait_converged(api, data_dir, pool_ids, deps, CONVERGE_S)
    FIGURES["deploy_to_converged_s"] = time.monotonic() - t0

    # provision faults: each replica took 5 calls (4 failures, the 4th created the instance and lost the
    # reply), yet was created exactly once at the provider and no replica was replaced
    # (the instance reports itself healthy once created, so a replica may be ready before the 5th call returns)
    prov_nodes = _dep_nodes(api, prov[2], deps[0])
    assert len(prov_nodes) == 2, prov_nodes
    prov_ids = [n["id"] for n in prov_nodes]
    cpl.wait_for(
        lambda: all(_calls(data_dir, prov[2], "provision", n) >= 5 for n in prov_ids), 30, what="5 provision calls"
    )
    wait_converged(api, data_dir, pool_ids, deps, CONVERGE_S)
    creates = _journal(data_dir, prov[2], "create")
    for n in _dep_nodes(api, prov[2], deps[0]):
        assert _calls(data_dir, prov[2], "provision", n["id"]) == 5, n
        assert creates[n["id"]] == 1, creates
        assert n["state"] == "ready", n
    assert len(_dep_nodes(api, prov[2], deps[0])) == 2
    # the slow provider: both replicas up, none replaced while provisioning took its time
    assert len(_dep_nodes(api, slow[2], deps[1])) == 2
    for (_m, _p, pool_id), dep_id in zip(setups, deps, strict=True):
        assert not [n for n in _dep_nodes(api, pool_id, dep_id) if n["state"] != "ready"], pool_id

    # delete everything: deprovision faults are retried until the provider has nothing left
    deprov_nodes = [n["id"] for n in _dep_nodes(api, deprov[2], deps[2])]
    stubborn_nodes = [n["id"] for n in _dep_nodes(api, stubborn[2], deps[3])]
    t1 = time.monotonic()
    _delete_and_wait(api, deps)
    FIGURES["delete_s"] = time.monotonic() - t1
    for pool_id in pool_ids:
        assert instant.instances(data_dir, pool_id) == {}, pool_id
    for n in deprov_nodes:
        assert _calls(data_dir, deprov[2], "deprovision", n) == 4, n  # 500, lost reply, timeout, then done
    for n in stubborn_nodes:
        assert _calls(data_dir, stubborn[2], "deprovision", n) >= ATTEMPTS + 2, n  # a second terminate ran
    for pool_id in (deprov[2], stubborn[2]):
        deletes = _journal(data_dir, pool_id, "delete")
        assert all(c == 1 for c in deletes.values()) and len(deletes) == 2, deletes
    wait_converged(api, data_dir, pool_ids, [], CONVERGE_S)
    print("\nFIGURES provider_faults " + " ".join(f"{k}={v:.2f}" for k, v in FIGURES.items()))


def test_provider_errors_are_surfaced_and_nothing_leaks(control_plane: ControlPlane, api: Client) -> None:
    """A provider that keeps answering 503 fails each node after the retry budget; one that refuses
    (permanent) fails it at once. Three failed replicas fail the deployment with the provider's error
    (GET /v1/deployments/{id}), each node's failure names it (events stream), nothing exists at the provider."""
    data_dir = Path(control_plane.settings.data_dir)
    busy = _setup(api, "fp-503", {"faults": {"provision": ["503*"]}})
    refuse = _setup(api, "fp-perm", {"faults": {"provision": ["permanent*"]}})
    # the refusing pool's provider reconcile runs over and over meanwhile: it must leave failed nodes to their
    # deployment, which counts them (it used to take them for vanished, and the failures went uncounted)
    refuse_actor = get_pool_actor(refuse[2])
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            ray.get(refuse_actor.reconcile_now.remote(), timeout=60)
            time.sleep(0.05)

    hammering = threading.Thread(target=hammer, daemon=True)
    t0 = time.monotonic()
    dep_busy = api.deploy(busy[0], busy[1], replicas=3)["id"]
    dep_refuse = api.deploy(refuse[0], refuse[1], replicas=3)["id"]
    hammering.start()

    def failed(dep_id: str) -> dict[str, Any] | None:
        d = api.get_deployment(dep_id)
        return d if d["state"] == "failed" else None

    try:
        d_refuse = cpl.wait_for(lambda: failed(dep_refuse), 60, every=0.25, what="refused deployment failed")
    finally:
        done.set()
        hammering.join(60)
    FIGURES["permanent_to_failed_s"] = time.monotonic() - t0
    d_busy = cpl.wait_for(lambda: failed(dep_busy), 90, every=0.25, what="503 deployment failed")
    FIGURES["retries_exhausted_to_failed_s"] = time.monotonic() - t0

    assert "replicas failed" in d_busy["error"], d_busy
    assert "provider unavailable" in d_busy["error"] and "HTTP 503" in d_busy["error"], d_busy
    assert "refused by the provider" in d_refuse["error"], d_refuse
    assert "provider unavailable" not in d_refuse["error"], d_refuse  # a refusal is not retried

    busy_nodes = {n["id"] for n in _dep_nodes(api, busy[2], dep_busy)}
    refuse_nodes = {n["id"] for n in _dep_nodes(api, refuse[2], dep_refuse)}
    assert len(busy_nodes) >= 3 and len(refuse_nodes) == 3, (busy_nodes, refuse_nodes)
    # the provider was asked exactly the retry budget (503) or once (refusal)
    busy_counts = [_calls(data_dir, busy[2], "provision", n) for n in busy_nodes]
    assert busy_counts.count(ATTEMPTS) >= 3 and max(busy_counts) <= ATTEMPTS, busy_counts
    assert all(_calls(data_dir, refuse[2], "provision", n) == 1 for n in refuse_nodes)

    # each node that failed says why, in the events stream the operators watch (node.failed, or the
    # node.terminated that follows it within the same flush, which carries the same reason)
    events = _stream_events(control_plane, busy_nodes | refuse_nodes)
    why: dict[str, str] = {}
    for _kind, d in events:
        why[d["node_id"]] = why.get(d["node_id"], "") + " | " + (d.get("reason") or "")
    assert sum(1 for n in busy_nodes if "HTTP 503" in why.get(n, "")) >= 3, why
    assert sum(1 for n in refuse_nodes if "refused by the provider" in why.get(n, "")) >= 3, why

    # nothing was created (and so nothing leaked); every node ends terminated
    for pool_id in (busy[2], refuse[2]):
        assert instant.instances(data_dir, pool_id) == {}
        assert not _journal(data_dir, pool_id, "create")
    wait_converged(api, data_dir, [busy[2], refuse[2]], [], CONVERGE_S)
    _delete_and_wait(api, [dep_busy, dep_refuse])
    print("\nFIGURES provider_errors " + " ".join(f"{k}={v:.2f}" for k, v in FIGURES.items() if "failed" in k))


def test_list_failures_never_mark_nodes_vanished(control_plane: ControlPlane, api: Client) -> None:
    """Unknown is not dead: while the provider's list call fails, the pool's provider reconcile must not
    take live nodes for vanished ones (nor delete anything as an orphan)."""
    data_dir = Path(control_plane.settings.data_dir)
    model, pool, pool_id = _setup(api, "fp-list", {"faults": {"list": ["500", "timeout", "503*"]}})
    dep_id = api.deploy(model, pool, replicas=2)["id"]
    wait_converged(api, data_dir, [pool_id], [dep_id], CONVERGE_S)
    before = {n["id"] for n in _dep_nodes(api, pool_id, dep_id)}
    assert len(before) == 2

    actor = get_pool_actor(pool_id)
    for _ in range(4):  # run the provider reconcile now, rather than waiting for its 10 s tick
        report: Any = ray.get(actor.reconcile_now.remote(), timeout=60)
        assert not any(report.values()), report
    calls = instant.pool_dir(data_dir, pool_id) / ".calls.list.pool"
    assert int(calls.read_text()) >= 4  # the list call was made, and failed, each time

    nodes = _dep_nodes(api, pool_id, dep_id)
    assert {n["id"] for n in nodes} == before, nodes
    assert all(n["state"] == "ready" for n in nodes), nodes
    assert not _journal(data_dir, pool_id, "delete")
    assert len(instant.instances(data_dir, pool_id)) == 2
    wait_converged(api, data_dir, [pool_id], [dep_id], CONVERGE_S)
    _delete_and_wait(api, [dep_id])
    wait_converged(api, data_dir, [pool_id], [], CONVERGE_S)
