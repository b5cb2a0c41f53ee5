"""Scale: N pools x M nodes under management (10,000 nodes in 100 pools by default).

    .venv/bin/python -m bench.scale [--pools 100] [--nodes-per-pool 100] [--settle 10] [--pool-hosts 4]

1. InventoryCore alone (no Ray): register N x M nodes, then time sweep() and a routing rebuild whose
   content changed (one node leaves or rejoins the table), the snapshot the reconciler reads, and the
   table's JSON encoding; tracemalloc gives the core's bytes per node.
2. An idle Ray started the way controller/boot.py starts it (in a subprocess): the memory of all its
   processes is the baseline.
3. A real control plane in this process with the instant provider (tests/support/instant.py), its pools
   run by --pool-hosts pool-host actors (INFERIA_POOL_HOSTS; 0: one actor per pool, plus one
   empty pool as a control: the cost of a pool actor process without nodes), N pools of max M nodes,
   one model per pool and one deployment of M replicas per pool; time until every endpoint is in the
   routing table (long-poll) and every deployment is running; settle; then the memory of every
   process of the Ray session by actor class, CPU shares over the settle window, and the inventory's
   sweep / rebuild durations from /metrics (with a few forced routing changes at full size).

Memory metric: PSS (proportional set size: a page shared by k processes counts 1/k in each), so the
sum over processes is what they take together; RSS (counts shared pages in every process) and USS
(pages private to the process) are printed beside it. Postgres and Redis are not Ray processes and
are printed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.procs import (
    GiB,
    MiB,
    Proc,
    actor_labels,
    cpu_by_pid,
    cpu_delta,
    group,
    measure,
    postgres_redis,
    session_processes,
    totals,
)

TARGET_MEM_GIB = 2.0
TARGET_SWEEP_MS = 50.0
TARGET_REBUILD_MS = 50.0
TARGET_QUIET_MS = 10.0


# ---------------------------------------------------------------- 1. InventoryCore alone
def _fill_core(pools: int, per_pool: int) -> tuple[Any, list[str]]:
    from actors.inventory_core import Heartbeat, InventoryCore
    from actors.records import hash_secret

    core = InventoryCore(3.0)
    ids = []
    for p in range(pools):
        for n in range(per_pool):
            node_id = f"node-{p:03d}-{n:04d}"
            core.register(
                {
                    "id": node_id,
                    "pool_id": f"pool-{p:03d}",
                    "provider": "instant",
                    "state": "provisioning",
                    "token_hash": hash_secret(f"tok-{node_id}"),
                    "deployment_id": f"dep-{p:03d}",
                    "model_name": f"model-{p:03d}",
                    "endpoint": f"http://127.0.0.1:9/n/{node_id}",
                    "provider_instance_id": f"i-{node_id}",
                }
            )
            ids.append(node_id)
    core.heartbeat_batch(Heartbeat(token=f"tok-{i}", node_id=i, state="ready") for i in ids)
    core.refresh_routes()
    return core, ids


def _timed(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def core_figures(pools: int, per_pool: int, runs: int = 40) -> dict[str, Any]:
    from actors.inventory_core import Heartbeat
    from actors.states import NodeState

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    core, ids = _fill_core(pools, per_pool)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del core
    core, ids = _fill_core(pools, per_pool)  # again, without tracemalloc's overhead
    sweeps = _timed(core.sweep, runs)
    rebuilds: list[float] = []
    for k in range(runs):
        node = ids[(k * 7919) % len(ids)]
        assert core.transition(node, NodeState.UNHEALTHY, "bench")  # leaves the table
        rebuilds.append(_timed_change(core))
        core.heartbeat(Heartbeat(token=f"tok-{node}", node_id=node, state="ready"))  # rejoins it
        rebuilds.append(_timed_change(core))
    snapshot = _timed(lambda: core.snapshot(True), 10)
    reconciler = reconciler_figures(core, ids, pools)
    table = core.routing_table()
    encode = _timed(lambda: json.dumps(table), 10)
    return {
        "nodes": len(ids),
        "bytes_per_node": held / len(ids),
        "held_mib": held / MiB,
        "sweep": sweeps,
        "rebuild": rebuilds,
        "snapshot": snapshot,
        "reconciler": reconciler,
        "encode": encode,
        "table_bytes": len(json.dumps(table)),
        "endpoints": sum(len(v) for v in table["models"].values()),
    }


RECONCILER_CHANGES = 100  # nodes changed between two rounds for "a round after N changes"


def reconciler_figures(core: Any, ids: list[str], pools: int, runs: int = 20) -> dict[str, list[float]]:
    """The deployments actor's node reading (actors/node_feed.py) against the inventory's core, no Ray: a
    quiet round (the feed read, nothing changed), a round after RECONCILER_CHANGES node changes (the feed
    read, the mirror applied, the planner over all nodes), and for comparison what a round did before the
    feed (the whole snapshot, then the planner)."""
    from actors.deployment_core import DeploymentPlanner, DeploymentView
    from actors.node_feed import NodeMirror
    from actors.states import DeploymentState, NodeState

    per = len(ids) // max(1, pools)
    views = [DeploymentView(f"dep-{p:03d}", DeploymentState.RUNNING, per, 1, None) for p in range(pools)]
    planner = DeploymentPlanner(replace_grace_s=10.0, provision_timeout_s=600.0)
    mirror = NodeMirror()
    mirror.apply(core.node_changes(*mirror.position()))

    def quiet() -> None:
        assert mirror.apply(core.node_changes(*mirror.position())) == 0

    changed: list[float] = []
    for k in range(runs):
        for j in range(RECONCILER_CHANGES):
            node = ids[(k * RECONCILER_CHANGES + j) * 7919 % len(ids)]
            core.transition(node, NodeState.DRAINING if k % 2 == 0 else NodeState.READY, "bench")
        t0 = time.perf_counter()
        mirror.apply(core.node_changes(*mirror.position()))
        planner.plan(views, mirror.nodes())
        changed.append(time.perf_counter() - t0)
    for node in ids:  # back as they were
        core.transition(node, NodeState.READY)
    mirror.apply(core.node_changes(*mirror.position()))
    return {
        "quiet": _timed(quiet, runs),
        "changed": changed,
        "snapshot_and_plan": _timed(lambda: planner.plan(views, core.snapshot(True)), 5),
    }


def _timed_change(core: Any) -> float:
    t0 = time.perf_counter()
    changed = core.refresh_routes()
    took = time.perf_counter() - t0
    assert changed, "the rebuild must change the table's content"
    return float(took)


# ---------------------------------------------------------------- 2. idle Ray baseline
def start_ray_like_boot() -> None:
    """ray.init exactly as controller/boot.py's _start_ray does for a local instance."""
    import ray

    from actors.runtime import NAMESPACE
    from controller.boot import RAY_ENV

    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    ray.init(
        address="local",
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        namespace=NAMESPACE,
        log_to_driver=True,
    )


def baseline_child(settle: float) -> None:
    """Run in a subprocess: start an idle Ray, let it settle, print its memory as JSON, exit."""
    import ray

    start_ray_like_boot()
    time.sleep(settle)
    procs = measure(session_processes(), actor_labels())
    print("BASELINE " + json.dumps({"totals": totals(procs), "labels": sorted(p.label for p in procs)}), flush=True)
    ray.shutdown()


def idle_ray_baseline(settle: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scale", "--baseline-child", "--settle", str(settle)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    for line in out.stdout.splitlines():
        if line.startswith("BASELINE "):
            data: dict[str, Any] = json.loads(line[len("BASELINE ") :])
            return data
    raise RuntimeError(f"baseline run failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


# ---------------------------------------------------------------- 3. the control plane at scale
def metrics(cp: Any) -> dict[str, float]:
    r = httpx.get(
        cp.api_url + "/metrics", headers={"authorization": f"Bearer {cp.api_token}"}, timeout=30, trust_env=False
    )
    r.raise_for_status()
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


def create_pools(cp: Any, pools: int, per_pool: int, workers: int = 4) -> tuple[list[dict[str, Any]], float]:
    """Create the pools (each POST waits for its actor's ready()); returns them and the wall time."""
    from tests.support import controlplane as cpl

    def one(i: int) -> dict[str, Any]:
        with cpl.client(cp) as c:
            # the instant provider re-reads its instance files only every 30 s (nothing changes behind its
            # back here): its own file scanning is not what this bench measures
            pool: dict[str, Any] = c.create_pool(
                f"scale-{i:03d}", provider="instant", max_nodes=per_pool, provider_config={"rescan_s": 30}
            )
            return pool

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as ex:
        out = list(ex.map(one, range(pools)))
    return out, time.monotonic() - t0


def wait_endpoints(cp: Any, want: int, timeout: float, t0: float) -> tuple[float, float, int, int]:
    """Follow the routing table by long-poll until it holds `want` endpoints (progress every 30 s).

    Returns (seconds to the first endpoint, seconds to all or NaN at the timeout, routing versions seen,
    endpoints reached)."""
    from controller.client import Client

    first = float("nan")
    versions = n = 0
    shown = t0
    with Client(cp.data_url, token=cp.api_token, timeout=60) as c:
        table = c.routing_table()
        while time.monotonic() - t0 < timeout:
            n = sum(len(v) for v in table["models"].values())
            if n and first != first:
                first = time.monotonic() - t0
            if n >= want:
                return first, time.monotonic() - t0, versions, n
            if time.monotonic() - shown >= 30:
                shown = time.monotonic()
                print(f"  {shown - t0:6.0f} s: {n} endpoints routed", flush=True)
            new = c.routing_table(version=table["version"], wait=True, timeout=30)
            if new is not None:
                table, versions = new, versions + 1
    print(f"TIMEOUT: the routing table reached {n} of {want} endpoints in {timeout:.0f} s", flush=True)
    return first, float("nan"), versions, n


def wait_running(cp: Any, dep_ids: list[str], timeout: float, t0: float, every: float = 0.25) -> float:
    from tests.support import controlplane as cpl

    ids = set(dep_ids)
    with cpl.client(cp) as c:
        while time.monotonic() - t0 < timeout:
            deps = [d for d in c.list_deployments() if d["id"] in ids]
            if len(deps) == len(ids) and all(d["state"] == "running" for d in deps):
                return time.monotonic() - t0
            time.sleep(every)
    return float("nan")


def deploy_all(cp: Any, pools: list[dict[str, Any]], per_pool: int) -> list[str]:
    from tests.support import controlplane as cpl

    dep_ids = []
    with cpl.client(cp) as c:
        for i, pool in enumerate(pools):
            dep = c.deploy(f"model-{i:03d}", pool["name"], replicas=per_pool)
            dep_ids.append(dep["id"])
    return dep_ids


def register_models(cp: Any, count: int) -> None:
    from tests.support import controlplane as cpl

    with cpl.client(cp) as c:
        for i in range(count):
            c.register_model(f"model-{i:03d}", engine="custom", args=["x"])


def settle_and_sample(cp: Any, seconds: float) -> tuple[dict[str, float], list[dict[str, float]], float]:
    """Sleep `seconds` while reading /metrics every second; CPU seconds per label over the window."""
    actors = actor_labels()
    before = cpu_by_pid(measure(session_processes(), actors, full=False))
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < seconds:
        samples.append(metrics(cp))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
    took = time.monotonic() - t0
    after = measure(session_processes(), actor_labels(), full=False)
    return cpu_delta(before, after), samples, took


def forced_rebuilds(cp: Any, node_ids: list[str], rounds: int = 5) -> list[float]:
    """Take a node out of the table (inventory transition to unhealthy; its pool's next repeated health
    report brings it back): each is a rebuild whose content changed. Returns the rebuild durations seen."""
    import ray

    from actors.runtime import INVENTORY, get_actor

    inv = get_actor(INVENTORY)
    seen = []
    for k in range(rounds):
        before = metrics(cp).get("inferia_routing_rebuild_seconds", -1.0)
        ray.get(inv.transition.remote(node_ids[k % len(node_ids)], "unhealthy", "bench: forced routing change"))
        after = metrics(cp)["inferia_routing_rebuild_seconds"]
        if after != before:
            seen.append(after)
        time.sleep(1.5)  # the pool's repeat (every interval) brings the node back: another real rebuild
        seen.append(metrics(cp)["inferia_routing_rebuild_seconds"])
    return seen


@dataclass
class Run:
    pools_startup_s: float = 0.0
    first_endpoint_s: float = 0.0
    all_endpoints_s: float = 0.0
    reached: int = 0
    all_running_s: float = 0.0
    versions: int = 0
    settle_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    forced: list[float] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    control_pid: int = 0
    services: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    rounds_settled: dict[str, Any] = field(default_factory=dict)  # the deployments actor's stats()
    rounds_forced: dict[str, Any] = field(default_factory=dict)


def pg_connections(dsn: str) -> int:
    import asyncio

    import asyncpg

    async def count() -> int:
        con = await asyncpg.connect(dsn)
        try:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            return int(await con.fetchval(sql))
        finally:
            await con.close()

    return asyncio.run(count())


def control_plane_run(args: argparse.Namespace, data_dir: Path) -> Run:
    from tests.support import controlplane as cpl

    run = Run()
    want = args.pools * args.nodes_per_pool
    cp = cpl.start(data_dir, interval_s=1.0)
    try:
        control = None
        if str(args.pool_hosts) == "0":  # one actor per pool: measure an empty pool's actor beside the others
            with cpl.client(cp) as c:
                control = c.create_pool("empty-control", provider="instant", max_nodes=1)
        pools, run.pools_startup_s = create_pools(cp, args.pools, args.nodes_per_pool)
        print(f"{args.pools} pools created (their actors ready) in {run.pools_startup_s:.1f} s", flush=True)
        register_models(cp, args.pools)
        t0 = time.monotonic()
        dep_ids = deploy_all(cp, pools, args.nodes_per_pool)
        run.first_endpoint_s, run.all_endpoints_s, run.versions, run.reached = wait_endpoints(
            cp, want, args.timeout, t0
        )
        run.all_running_s = wait_running(cp, dep_ids, args.timeout, t0)
        print(f"{want} endpoints in {run.all_endpoints_s:.1f} s; all running in {run.all_running_s:.1f} s", flush=True)
        run.cpu, run.samples, run.settle_s = settle_and_sample(cp, args.settle)
        actors = actor_labels()
        run.procs = measure(session_processes(), actors)
        run.control_pid = _pid_of_actor(f"pool:{control['id']}") if control else 0
        run.services = postgres_redis(data_dir)
        assert cp.cfg is not None
        run.services["pg_connections"] = pg_connections(cp.cfg.dsn)
        table = cpl.client(cp).routing_table()
        node_ids = [eps[0]["node_id"] for eps in table["models"].values()]
        run.rounds_settled = deployment_rounds()
        run.forced = forced_rebuilds(cp, node_ids)
        run.final = metrics(cp)
        run.rounds_forced = deployment_rounds()
    finally:
        cp.stop()
    return run


def deployment_rounds() -> dict[str, Any]:
    """The deployments actor's last rounds: (ms, nodes its feed read changed) each, and its feed figures."""
    import ray

    from actors.runtime import DEPLOYMENTS, get_actor

    return dict(ray.get(get_actor(DEPLOYMENTS).stats.remote(), timeout=30))


def _pid_of_actor(name: str) -> int:
    import ray

    for info in ray._private.state.actors().values():
        if info.get("Name") == name and info.get("State") == "ALIVE":
            return int(info["Pid"])
    return 0


# ---------------------------------------------------------------- report
def _ms(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    return f"median {statistics.median(xs) * 1000:.2f} ms, max {max(xs) * 1000:.2f} ms"


def verdict(value: float, target: float, unit: str) -> str:
    return f"{'PASS' if value <= target else 'MISS'} (target <= {target:g} {unit}, ratio {value / target:.2f})"


def report_core(core: dict[str, Any]) -> None:
    print(f"\n== InventoryCore alone, {core['nodes']} nodes (no Ray, this process)")
    print(f"sweep()                       : {_ms(core['sweep'])}   {verdict(max(core['sweep']) * 1000, 50, 'ms')}")
    print(f"forced rebuild (content change): {_ms(core['rebuild'])}   {verdict(max(core['rebuild']) * 1000, 50, 'ms')}")
    print(f"snapshot(deployment_only)     : {_ms(core['snapshot'])}   (what the reconciler read every second)")
    r = core["reconciler"]
    print(
        f"reconciler, quiet round (feed): {_ms(r['quiet'])}   {verdict(max(r['quiet']) * 1000, TARGET_QUIET_MS, 'ms')}"
    )
    print(f"reconciler, {RECONCILER_CHANGES} changes + plan : {_ms(r['changed'])}   (feed read, mirror, planner)")
    print(f"reconciler before the feed    : {_ms(r['snapshot_and_plan'])}   (snapshot + planner)")
    print(f"json.dumps(routing table)     : {_ms(core['encode'])}   ({core['table_bytes'] / MiB:.2f} MiB)")
    print(f"memory held by the core       : {core['held_mib']:.1f} MiB = {core['bytes_per_node'] / 1024:.2f} KiB/node")


def report_run(args: argparse.Namespace, run: Run, base: dict[str, Any], core: dict[str, Any]) -> None:
    want = args.pools * args.nodes_per_pool
    print(f"\n== control plane: {args.pools} pools x {args.nodes_per_pool} nodes = {want} (instant provider)")
    print(
        f"{args.pools} pools created, actors ready (POST /v1/pools, 4 at a time): {run.pools_startup_s:.1f} s "
        f"= {run.pools_startup_s / args.pools:.2f} s/pool"
    )
    print(f"deploy -> first endpoint routed : {run.first_endpoint_s:.1f} s")
    print(
        f"deploy -> all {want} endpoints  : {run.all_endpoints_s:.1f} s ({run.reached} reached, "
        f"{run.versions} routing versions seen; {run.reached / run.all_endpoints_s:.1f} nodes/s)"
    )
    print(f"deploy -> all deployments running: {run.all_running_s:.1f} s")
    report_timings(run, want)
    report_memory(args, run, base, core)
    report_cpu(run)


def report_timings(run: Run, nodes: int) -> None:
    sweeps = [s["inferia_inventory_sweep_seconds"] for s in run.samples if "inferia_inventory_sweep_seconds" in s]
    f = run.final
    print(f"-- inventory actor, from /metrics ({nodes} nodes, heartbeats flowing)")
    print(f"health sweep, last value sampled each second over the settle: {_ms(sweeps)}")
    print(
        f"health sweep, max over the last 1-2 min: {f.get('inferia_inventory_sweep_seconds_max', 0) * 1000:.2f} ms   "
        f"{verdict(f.get('inferia_inventory_sweep_seconds_max', 0) * 1000, TARGET_SWEEP_MS, 'ms')}"
    )
    print(
        f"routing rebuild after a forced change (x{len(run.forced)}): {_ms(run.forced)}   "
        f"{verdict(max(run.forced or [0.0]) * 1000, TARGET_REBUILD_MS, 'ms')}"
    )
    print(
        f"routing rebuild, max over the last 1-2 min (includes the fill-up): "
        f"{f.get('inferia_routing_rebuild_seconds_max', 0) * 1000:.2f} ms"
    )
    print(f"deployment reconcile (last): {f.get('inferia_reconcile_ms', 0):.1f} ms")
    settled = run.rounds_settled.get("rounds") or []
    quiet = [r[0] / 1000 for r in settled if r[1] == 0]
    reads = [r[2] / 1000 for r in settled if r[1] == 0]
    print(
        f"deployment reconcile, quiet rounds over the settle (x{len(quiet)}): {_ms(quiet)}   "
        f"{verdict(statistics.median(quiet or [0.0]) * 1000, TARGET_QUIET_MS, 'ms')} (median)"
    )
    print(f"  of which the reads (deployments from Postgres | node feed, side by side): {_ms(reads)}")
    seen = {tuple(r) for r in settled}
    after = [r for r in run.rounds_forced.get("rounds") or [] if r[1] > 0 and tuple(r) not in seen]
    print(
        f"deployment reconcile, rounds after node changes (forced, x{len(after)}): "
        f"{_ms([r[0] / 1000 for r in after])}   changes per round: {[r[1] for r in after]}"
    )
    print(f"deployments actor's node feed: {run.rounds_forced.get('node_feed')}")


def report_memory(args: argparse.Namespace, run: Run, base: dict[str, Any], core: dict[str, Any]) -> None:
    control = [p for p in run.procs if p.pid == run.control_pid]
    procs = [p for p in run.procs if p.pid != run.control_pid]
    tot, b = totals(procs), base["totals"]
    print(f"-- memory: Ray session processes after {run.settle_s:.0f} s settle (the empty control pool excluded)")
    print(
        f"idle Ray baseline: {int(b['count'])} processes, PSS {b['pss'] / MiB:.0f} MiB, "
        f"USS {b['uss'] / MiB:.0f} MiB, RSS {b['rss'] / MiB:.0f} MiB"
    )
    print(
        f"control plane    : {int(tot['count'])} processes, PSS {tot['pss'] / MiB:.0f} MiB, "
        f"USS {tot['uss'] / MiB:.0f} MiB, RSS {tot['rss'] / MiB:.0f} MiB"
    )
    above = {k: tot[k] - b[k] for k in ("pss", "uss", "rss")}
    print(
        f"above idle Ray   : PSS {above['pss'] / GiB:.2f} GiB   {verdict(above['pss'] / GiB, TARGET_MEM_GIB, 'GiB')}"
        f"   (USS {above['uss'] / GiB:.2f} GiB, RSS {above['rss'] / GiB:.2f} GiB)"
    )
    print(f"{'process class':<22}{'n':>5}{'PSS MiB':>10}{'PSS each':>10}{'USS MiB':>10}{'RSS MiB':>10}")
    for g in sorted(group(procs).values(), key=lambda g: -g.pss):
        each = statistics.median(g.pss_each) / MiB
        print(f"{g.label:<22}{g.count:>5}{g.pss / MiB:>10.0f}{each:>10.1f}{g.uss / MiB:>10.0f}{g.rss / MiB:>10.0f}")
    s = run.services
    print(
        f"(not Ray) Postgres: {int(s.get('pg_connections', 0))} client connections, "
        f"{int(s.get('pg_procs', 0))} processes, "
        f"RSS {s.get('pg_rss', 0) / MiB:.0f} MiB; "
        f"Redis RSS {s.get('redis_rss', 0) / MiB:.0f} MiB"
    )
    report_breakdown(run.reached, procs, control, above, core)


def report_breakdown(
    nodes: int, procs: list[Proc], control: list[Proc], above: dict[str, float], core: dict[str, Any]
) -> None:
    """Split the memory above idle Ray into pool processes' overhead and per-node state (nodes: routed)."""
    pools = [p for p in procs if p.label == "PoolActor"]
    if pools and not control:  # pool hosts: no empty pool actor to compare with
        host = sum(p.pss for p in pools)
        print("-- where it goes (PSS)")
        print(
            f"pool-host processes: {len(pools)}, {host / MiB:.0f} MiB together "
            f"({host / max(nodes, 1) / 1024:.1f} KiB per node, process overhead included)"
        )
        print(
            f"per-node state in the inventory (tracemalloc, core alone): {core['bytes_per_node'] * nodes / MiB:.0f} MiB"
            f" ({core['bytes_per_node'] / 1024:.2f} KiB/node)"
        )
        print(f"everything else above idle Ray: {(above['pss'] - host) / MiB:.0f} MiB")
        return
    if not control or not pools:
        print("(no empty control pool measured: no per-process / per-node split)")
        return
    empty = control[0].pss
    loaded = statistics.mean(p.pss for p in pools)
    per_node_pool = (loaded - empty) * len(pools) / max(nodes, 1)
    overhead = len(pools) * empty
    node_state = len(pools) * (loaded - empty)
    inv_state = core["bytes_per_node"] * nodes
    rest = above["pss"] - overhead - node_state
    print("-- where it goes (PSS)")
    print(
        f"pool actor processes: {len(pools)} x {empty / MiB:.1f} MiB (an empty pool's actor) = "
        f"{overhead / GiB:.2f} GiB of per-process overhead"
    )
    print(
        f"per-node state in the pools: {len(pools)} x {(loaded - empty) / MiB:.1f} MiB = {node_state / MiB:.0f} MiB "
        f"({per_node_pool / 1024:.1f} KiB/node over {nodes} nodes)"
    )
    print(
        f"per-node state in the inventory (tracemalloc, core alone): {inv_state / MiB:.0f} MiB "
        f"({core['bytes_per_node'] / 1024:.2f} KiB/node)"
    )
    print(
        f"everything else above idle Ray (inventory, deployments, Serve controller/proxy/replica, workers): "
        f"{rest / MiB:.0f} MiB"
    )
    fixed = above["pss"] - overhead
    budget = TARGET_MEM_GIB * GiB - fixed
    fit = int(budget // empty) if budget > 0 else 0
    print(
        f"without the pool processes' overhead: {fixed / GiB:.2f} GiB; the 2 GiB target leaves room for {fit} "
        f"pool processes of {empty / MiB:.0f} MiB -> host ~{-(-len(pools) // max(fit, 1))} pools per process"
    )


def report_cpu(run: Run) -> None:
    print(f"-- CPU over the {run.settle_s:.0f} s settle window (% of one core; the machine has 200 %)")
    total = sum(run.cpu.values())
    for label, sec in sorted(run.cpu.items(), key=lambda kv: -kv[1])[:10]:
        print(f"{label:<22}{100 * sec / run.settle_s:>7.1f} %")
    print(f"{'all Ray processes':<22}{100 * total / run.settle_s:>7.1f} %")
    dep = run.cpu.get("DeploymentActor", 0.0)
    print(
        f"DeploymentActor share: {100 * dep / run.settle_s:.1f} % of a core ({100 * dep / max(total, 1e-9):.0f} % "
        "of the control plane's CPU)"
    )


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pools", type=int, default=100)
    ap.add_argument("--nodes-per-pool", type=int, default=100)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=1800.0, help="for the fill-up and for running")
    ap.add_argument(
        "--pool-hosts",
        default="auto",
        help="INFERIA_POOL_HOSTS: auto (the default: an actor each for the first pools, host actors beyond), "
        "N pool-host actors sharing the pools, 0: one Ray actor (process) per pool",
    )
    ap.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_child:
        baseline_child(args.settle)
        return
    from tests.support import instant

    os.environ["INFERIA_ADAPTERS"] = instant.ENV_ADAPTERS  # before Ray starts: its workers inherit it
    os.environ["INFERIA_POOL_HOSTS"] = str(args.pool_hosts)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    core = core_figures(args.pools, args.nodes_per_pool)
    base = idle_ray_baseline(args.settle)
    with tempfile.TemporaryDirectory() as d:
        run = control_plane_run(args, Path(d))
    report_core(core)
    report_run(args, run, base, core)


if __name__ == "__main__":
    main()
