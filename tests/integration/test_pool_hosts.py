"""Pools hosted by a fixed set of actors (INFERIA_POOL_HOSTS=2): 4 pools run in 2 `pools:<k>` host actors,
and one host SIGKILLed while nodes are provisioning is restarted by Ray and rebuilds every pool it hosts.

`inferia-orch up` runs as its own process group on its own data dir and ports (tests/support/crash.py), so
this test needs no Ray session of its own: the hosting is checked through the control plane's processes
(exactly 2 `ray::PoolActor` workers for 4 pools), through the API, and through a short-lived driver process
that joins that control plane's Ray cluster and lists its named actors (never through `ray.init` here: the
session fixture may already have a Ray session in this pytest process).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from actors.runtime import NAMESPACE, POOL_HOST_PREFIX, pool_actor_name
from controller.boot import RAY_ENV
from controller.client import Client, NotFound
from tests.support import controlplane as cpl
from tests.support import instant
from tests.support.crash import ROOT, ControlPlaneProcess, actor_processes, describe
from tests.support.invariants import wait_converged

HOSTS = 2
POOLS = 4
REPLICAS = 3
SCALED = 5
LATENCY_S = 1.0  # the kill lands mid-provision even when the API answers slowly (CI: 0.3 s was too short)
CONVERGE_TIMEOUT_S = 60.0

# Run in a separate driver process joined to the control plane's cluster: named actors of the namespace,
# and for every pool host its pid and the pools it runs.
_PROBE = """
import json, os, sys
import ray
ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False, logging_level="ERROR")
names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == sys.argv[2])
hosts = {}
for name in names:
    if name.startswith(sys.argv[3]):
        h = ray.get_actor(name, namespace=sys.argv[2])
        pid = ray.get(h.__ray_call__.remote(lambda _self: os.getpid()), timeout=60)
        hosts[name] = {"pid": pid, "hosted": ray.get(h.hosted.remote(), timeout=60)}
print("PROBE " + json.dumps({"names": names, "hosts": hosts}), flush=True)
"""


@pytest.fixture()
def cp_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("hosts"))
    cp.env["INFERIA_POOL_HOSTS"] = str(HOSTS)
    try:
        yield cp
    finally:
        cp.kill_everything()


def _gcs_address(cp: ControlPlaneProcess) -> str:
    for pid in cp.remember():
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        m = re.search(r"--gcs[-_]address[= ](\S+)", cmd)
        if m:
            return m.group(1)
    raise AssertionError(f"no Ray GCS address among the control plane's processes: {describe(cp.remember())}")


def _probe(cp: ControlPlaneProcess) -> dict[str, Any]:
    env = dict(cp.env) | RAY_ENV
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, _gcs_address(cp), NAMESPACE, POOL_HOST_PREFIX],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    for line in out.stdout.splitlines():
        if line.startswith("PROBE "):
            result: dict[str, Any] = json.loads(line.removeprefix("PROBE "))
            return result
    raise AssertionError(f"probe failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def _pool_hosts(cp: ControlPlaneProcess) -> list[int]:
    return sorted(actor_processes(cp.remember(), "PoolActor"))


def _pool_deleted(api: Client, pool_id: str) -> bool:
    try:
        return bool(api.get_pool(pool_id)["state"] == "deleted")
    except NotFound:
        return True


def _check_hosting(
    cp: ControlPlaneProcess, api: Client, by_host: dict[str, list[str]], deleted: list[str]
) -> dict[str, Any]:
    """Exactly the 2 host actors run every pool, each pool where its hash puts it; their pids are the
    control plane's only `ray::PoolActor` processes. (A host keeps running a pool deleted since it started,
    as a one-pool actor does: `deleted` are left out of the comparison.)"""
    live = _pool_hosts(cp)
    assert len(live) == HOSTS, describe(cp.remember())
    probe = _probe(cp)
    assert not [n for n in probe["names"] if n.startswith("pool:")], probe["names"]
    assert sorted(probe["hosts"]) == [f"{POOL_HOST_PREFIX}{k}" for k in range(HOSTS)], probe
    assert sorted(h["pid"] for h in probe["hosts"].values()) == live, (probe, describe(live))
    for name, pools in by_host.items():
        assert sorted(set(probe["hosts"][name]["hosted"]) - set(deleted)) == sorted(pools), (name, probe)
    for pool_ids in by_host.values():
        for pool_id in pool_ids:
            assert api.get_pool(pool_id)["state"] == "active"
            assert api.pool_nodes(pool_id)
    return probe


def test_two_pool_hosts_run_four_pools_and_survive_a_host_kill(cp_proc: ControlPlaneProcess) -> None:
    data_dir = cp_proc.data_dir
    figures: dict[str, float] = {"up_s": cp_proc.start()}
    t_test = time.monotonic()
    tag = uuid.uuid4().hex[:6]
    model = f"ph-{tag}"
    with cp_proc.client() as api:
        api.register_model(**cpl.fake_model(model))

        # 4 pools covering both hosts (pool ids are random: a pool landing on an already full host is
        # deleted again, which happens in 1 run out of 8)
        pools: dict[str, str] = {}  # pool id -> host name
        extra: list[str] = []
        n = 0
        while len(pools) < POOLS:
            n += 1
            p = api.create_pool(
                f"ph-{tag}-{n}",
                provider="instant",
                max_nodes=SCALED + 2,
                provider_config={"latency_s": LATENCY_S, "deprovision_latency_s": LATENCY_S},
            )
            host = pool_actor_name(p["id"], HOSTS)
            used = set(pools.values())
            if len(pools) == POOLS - 1 and len(used) == 1 and host in used:
                extra.append(p["id"])
                api.delete_pool(p["id"])
                continue
            pools[p["id"]] = host
        pool_ids = list(pools)
        by_host = {
            f"{POOL_HOST_PREFIX}{k}": [p for p, h in pools.items() if h == f"{POOL_HOST_PREFIX}{k}"]
            for k in range(HOSTS)
        }
        assert all(by_host.values()), by_host
        deps = {pool_id: api.deploy(model, pool_id, replicas=REPLICAS)["id"] for pool_id in pool_ids}
        dep_ids = list(deps.values())
        figures["deploy_s"] = wait_converged(api, data_dir, pool_ids, dep_ids, CONVERGE_TIMEOUT_S)
        cpl.wait_for(lambda: all(_pool_deleted(api, p) for p in extra), 30, every=0.25, what="extra pools deleted")

        # the hosting: 2 PoolActor processes for 4 pools, no `pool:<id>` actor, every pool served by the API
        for pool_id in pool_ids:
            assert len(api.pool_nodes(pool_id)) == REPLICAS
            assert api.get_pool(pool_id)["nodes"] == REPLICAS
        probe = _check_hosting(cp_proc, api, by_host, extra)

        # scale every deployment 3 -> 5 and SIGKILL one host while its pools' new nodes are provisioning
        victim = max(by_host, key=lambda h: len(by_host[h]))
        victim_pid = int(probe["hosts"][victim]["pid"])
        victim_pools = by_host[victim]
        assert victim_pid in _pool_hosts(cp_proc)
        for dep_id in dep_ids:
            api.scale_deployment(dep_id, SCALED)
        cpl.wait_for(
            lambda: any(len(api.pool_nodes(p)) > REPLICAS for p in victim_pools), 30, every=0.05, what="new nodes"
        )
        time.sleep(LATENCY_S * 0.25)
        at_kill = sum(len(instant.instances(data_dir, p)) for p in victim_pools)
        t_kill = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
        assert at_kill < SCALED * len(victim_pools), "every node was up before the kill: nothing was in flight"

        wait_converged(api, data_dir, pool_ids, dep_ids, CONVERGE_TIMEOUT_S)
        figures["kill_to_converged_s"] = time.monotonic() - t_kill
        cpl.wait_for(lambda: len(_pool_hosts(cp_proc)) == HOSTS, 30, every=0.25, what="2 PoolActor processes")
        assert victim_pid not in _pool_hosts(cp_proc)
        probe = _check_hosting(cp_proc, api, by_host, extra)
        assert probe["hosts"][victim]["pid"] != victim_pid
        for pool_id in pool_ids:
            alive = [n for n in api.pool_nodes(pool_id) if n["state"] != "terminated"]
            assert len(alive) == SCALED, alive
            assert len(instant.instances(data_dir, pool_id)) == SCALED
            creates = Counter(n for op, n in instant.journal(data_dir, pool_id) if op == "create")
            assert len(creates) == SCALED and set(creates.values()) == {1}, creates

        # delete one of the restarted host's pools: its deployment, then the pool
        gone_pool = victim_pools[0]
        gone_dep = deps[gone_pool]
        api.delete_deployment(gone_dep)
        cpl.wait_for(
            lambda: not any(d["id"] == gone_dep for d in api.list_deployments()), 30, every=0.25, what="dep deleted"
        )
        api.delete_pool(gone_pool)
        cpl.wait_for(lambda: _pool_deleted(api, gone_pool), 30, every=0.25, what="pool deleted")
        assert instant.instances(data_dir, gone_pool) == {}
        # its host drops its runtime once the deletion settled: no loop left calling list_nodes (issue 10 #4)
        cpl.wait_for(
            lambda: gone_pool not in _probe(cp_proc)["hosts"][victim]["hosted"], 30, every=0.5, what="pool dropped"
        )
        assert gone_pool not in {p["id"] for p in api.list_pools() if p["state"] != "deleted"}
        journal = instant.journal(data_dir, gone_pool)
        assert Counter(n for op, n in journal if op == "create") == Counter(n for op, n in journal if op == "delete")
        rest = [p for p in pool_ids if p != gone_pool]
        wait_converged(api, data_dir, rest, [deps[p] for p in rest], CONVERGE_TIMEOUT_S)
        figures["scenario_s"] = time.monotonic() - t_test

    figures["down_s"] = cp_proc.stop()
    left = cp_proc.leftovers()
    assert not left, f"processes left after `down`: {describe(left)}"
    for pool_id in pool_ids:
        assert instant.instances(data_dir, pool_id) == {}, "`up` without --keep-nodes terminates the nodes on stop"
    print(
        f"\nFIGURES pool_hosts={HOSTS} pools={POOLS} extra_pools={len(extra)} nodes_up_at_kill={at_kill}/"
        f"{SCALED * len(victim_pools)} " + " ".join(f"{k}={v:.2f}" for k, v in figures.items())
    )
