"""The fault suite's end-of-scenario invariant, for pools on the instant test provider:

1. every node the database believes alive exists at the provider (nothing "alive" that is gone);
2. every instance at the provider is known to the database as alive (no leaked, paid instance);
3. every active deployment has its desired replicas ready again, and the routing table lists them;
4. no node was ever created twice at the provider (the journal has one create per node id).

Pools on the local provider can be checked too (`local_pools`): their provider truth is every node
directory with a live agent process (what the local adapter's list_nodes reports); they have no journal.

`wait_converged` polls until all hold (the control plane converges level-triggered) and otherwise fails
with what still differs.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from controller.client import Client
from tests.support import instant

ALIVE = ("provisioning", "ready", "unhealthy", "draining")


def local_instances(data_dir: Path, pool_id: str) -> set[str]:
    """Node ids of a local-provider pool whose agent process runs (its node.json names a live pid)."""
    import json

    import psutil

    out = set()
    for f in (data_dir / "nodes" / pool_id).glob("*/node.json"):
        try:
            pid = int(json.loads(f.read_text()).get("pid") or 0)
            if pid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(f.parent.name)
        except (OSError, ValueError, psutil.Error):
            continue
    return out


def violations(
    api: Client,
    data_dir: Path,
    pool_ids: list[str],
    deployment_ids: list[str],
    local_pools: frozenset[str] = frozenset(),
) -> list[str]:
    out: list[str] = []
    for pool_id in pool_ids:
        db = {n["id"]: n["state"] for n in api.pool_nodes(pool_id, include_terminated=True)}
        db_alive = {n for n, s in db.items() if s in ALIVE}
        local = pool_id in local_pools
        at_provider = local_instances(data_dir, pool_id) if local else set(instant.instances(data_dir, pool_id))
        settling = {n for n, s in db.items() if s in ("provisioning", "draining")}
        if settling:
            out.append(f"pool {pool_id}: still settling: {sorted(settling)}")
        gone = db_alive - at_provider
        if gone:
            out.append(f"pool {pool_id}: alive in the database but not at the provider: {sorted(gone)}")
        leaked = at_provider - db_alive
        if leaked:
            states = {n: db.get(n, "unknown to the database") for n in leaked}
            out.append(f"pool {pool_id}: at the provider but not alive in the database (leak): {states}")
        creates = Counter(n for op, n in ([] if local else instant.journal(data_dir, pool_id)) if op == "create")
        twice = [n for n, c in creates.items() if c > 1]
        if twice:
            out.append(f"pool {pool_id}: created more than once at the provider: {twice}")
    routes = api.routing_table()["models"]
    for dep_id in deployment_ids:
        d = api.get_deployment(dep_id)
        if d["state"] in ("stopped", "stopping"):
            continue
        want = int(d["desired_replicas"])
        if d["ready_replicas"] != want:
            out.append(f"deployment {dep_id}: {d['ready_replicas']}/{want} replicas ready (state {d['state']})")
        listed = [e for e in routes.get(d["model"], []) if e.get("deployment_id") in (None, dep_id)]
        if len(listed) < want:
            out.append(f"deployment {dep_id}: {len(listed)}/{want} endpoints in the routing table")
    return out


def wait_converged(
    api: Client,
    data_dir: Path,
    pool_ids: list[str],
    deployment_ids: list[str],
    timeout: float = 60.0,
    local_pools: frozenset[str] = frozenset(),
) -> float:
    """Seconds it took for the invariant to hold; AssertionError naming what differs otherwise."""
    t0 = time.monotonic()
    last: list[str] = []
    while time.monotonic() - t0 < timeout:
        try:
            last = violations(api, data_dir, pool_ids, deployment_ids, local_pools)
        except Exception as exc:  # the API may be restarting: keep polling
            last = [f"API: {exc!r}"]
        if not last:
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"not converged after {timeout}s:\n" + "\n".join(last))


def provider_summary(data_dir: Path, pool_id: str) -> dict[str, Any]:
    j = instant.journal(data_dir, pool_id)
    return {
        "instances": len(instant.instances(data_dir, pool_id)),
        "creates": sum(1 for op, _ in j if op == "create"),
        "deletes": sum(1 for op, _ in j if op == "delete"),
    }
