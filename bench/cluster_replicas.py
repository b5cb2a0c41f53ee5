"""API replicas on a local multi-node Ray cluster (issue 15, part 5): single heartbeats/s and routing reads/s
with 3 API replicas spread over 3 Ray nodes against 1 replica on 1 node, CPU per 1,000 heartbeats, and what
the loss of a Ray node that runs a replica costs.

    .venv/bin/python -m bench.cluster_replicas [--ray-nodes 3] [--replicas 3] [--pools 100] [--seconds 5]

Each configuration runs in its own process (one Ray per process). The cluster is built as
tests/support/ray_cluster_scenario.py builds it (ray.cluster_utils.Cluster: a head with fast node-death
detection, workers of 1 CPU each, all on this machine); Serve's HTTP proxy runs on the head only
(proxy_location="HeadOnly": no proxy per node, each binding api_port on one machine; the default is not
tried here, and the data port that is measured has no proxy on it). The control
plane joins the cluster; its API replicas are placed by Serve's scheduler (the placement is printed), and
each binds the shared data port with SO_REUSEPORT, so the kernel spreads the load generator's connections
over them. `--pools` instant pools (tests/support/instant.py), `--nodes` nodes registered straight into the
inventory, spread over the pools (bench/fake_nodes.py tokens). Then, on the data port, with wrk: rotating
single heartbeats, then routing-table reads; CPU seconds of every process of the session (and of the embedded
Postgres and Redis) per 1,000 heartbeats. With more than one Ray node: a worker node that runs a replica (and
neither the inventory nor the deployments actor) dies (SIGKILL of its raylet and every process under it)
while an httpx driver sends heartbeats and routing reads (a failed request retried once on a new
connection); the seconds until Ray marks the node dead and until Serve runs the replica count again (on the
surviving nodes); then the wrk figures once more, with the replacement.

Three Ray nodes on one 2-core machine show the mechanics (placement, shared port, failover), not capacity:
every node, replica and the load generator share the same two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench import fake_nodes, procs
from bench.api_replicas import replica_pids
from bench.heartbeats import wrk_get, wrk_rotating

ROOT = Path(__file__).resolve().parents[1]
REPLICA_CLASS = "ServeReplica:inferia:"


def replica_placement() -> dict[int, str]:
    """pid -> Ray node id of every live API replica (GCS actor table)."""
    import ray

    out: dict[int, str] = {}
    for info in ray._private.state.actors().values():
        if REPLICA_CLASS in str(info.get("ActorClassName")) and info.get("State") == "ALIVE" and info.get("Pid"):
            out[int(info["Pid"])] = str(info["Address"]["NodeID"])
    return out


def actor_node(name: str) -> str:
    import ray

    for info in ray._private.state.actors().values():
        if info.get("Name") == name and info.get("State") == "ALIVE":
            return str(info["Address"]["NodeID"])
    return ""


def register_spread(inv: Any, pools: list[str], count: int) -> None:
    """`count` bare ready nodes, node i in pool i % len(pools) (token fake_nodes.token(i))."""
    import ray

    from actors.records import hash_secret

    infos = [
        {
            "id": fake_nodes.node_id(i),
            "pool_id": pools[i % len(pools)],
            "provider": "bench",
            "state": "ready",
            "token_hash": hash_secret(fake_nodes.token(i)),
        }
        for i in range(count)
    ]
    ray.get(inv.register_many.remote(infos), timeout=120)


def cpu_now(data_dir: Path) -> tuple[dict[int, float], float]:
    """CPU seconds per process of this session, and of the embedded Postgres + Redis together."""
    per_pid = procs.cpu_by_pid(procs.measure(procs.session_processes(), {}, full=False))
    pr = procs.postgres_redis(data_dir)
    return per_pid, pr["pg_cpu_s"] + pr["redis_cpu_s"]


def cpu_spent(data_dir: Path, before: tuple[dict[int, float], float], labels: dict[int, str]) -> dict[str, float]:
    after = procs.measure(procs.session_processes(), labels, full=False)
    by_label = procs.cpu_delta(before[0], after)
    pg_redis = procs.postgres_redis(data_dir)
    by_label["postgres+redis"] = pg_redis["pg_cpu_s"] + pg_redis["redis_cpu_s"] - before[1]
    return {k: round(v, 2) for k, v in sorted(by_label.items(), key=lambda kv: -kv[1]) if v >= 0.05}


async def drive_timed(url: str, conc: int, seconds: float, request: Any) -> tuple[list[float], int, int]:
    """`conc` workers on their own connections until `seconds` pass; the monotonic time of every answered
    request (200/304); a failed request is retried once on a new connection. -> (ok times, failed, retried)."""
    oks: list[float] = []
    failed = retried = 0
    stop = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal failed, retried
        c = httpx.AsyncClient(timeout=10, trust_env=False)
        k = i
        try:
            while time.monotonic() < stop:
                k += conc
                for attempt in (0, 1):
                    try:
                        good = (await request(c, url, k)).status_code in (200, 304)
                    except httpx.HTTPError:
                        good = False
                    if good:
                        oks.append(time.monotonic())
                        break
                    if attempt == 0:
                        retried += 1
                        await c.aclose()
                        c = httpx.AsyncClient(timeout=10, trust_env=False)
                    else:
                        failed += 1
        finally:
            await c.aclose()

    await asyncio.gather(*(worker(i) for i in range(conc)))
    return oks, failed, retried


def summarize(oks: list[float], failed: int, retried: int, t0: float, t_kill: float, t_end: float) -> dict[str, Any]:
    oks = sorted(oks)
    gaps = [b - a for a, b in zip([t0, *oks], [*oks, t_end], strict=True)]
    after = [t for t in oks if t > t_kill]
    return {
        "ok": len(oks),
        "ok_after_kill": len(after),
        "req_s_after_kill": round(len(after) / max(t_end - t_kill, 1e-9), 1),
        "failed_after_retry": failed,
        "retried_once": retried,
        "longest_gap_s": round(max(gaps), 2),
    }


def run_one(ray_nodes: int, replicas: int, n_pools: int, nodes: int, seconds: float, conc: int) -> dict[str, Any]:
    import ray
    from ray import serve

    from actors.runtime import DEPLOYMENTS, INVENTORY, NAMESPACE, get_actor
    from controller.boot import ControlPlane
    from controller.services import free_port
    from tests.support import controlplane as cpl
    from tests.support.ray_cluster_scenario import OBJECT_STORE_BYTES, _env, node_alive, start_head

    _env()  # the instant provider (INFERIA_ADAPTERS), before any Ray node starts
    result: dict[str, Any] = {"ray_nodes": ray_nodes, "replicas": replicas, "pools": n_pools, "nodes": nodes}
    cluster = None
    cp: ControlPlane | None = None
    with tempfile.TemporaryDirectory() as d:
        data_dir = Path(d)
        try:
            t = time.monotonic()
            cluster = start_head()
            assert cluster.head_node is not None
            head_id = cluster.head_node.node_id
            workers = [
                cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES) for _ in range(ray_nodes - 1)
            ]
            cluster.wait_for_nodes()
            result["cluster_start_s"] = round(time.monotonic() - t, 1)
            role = {head_id: "head", **{w.node_id: f"worker{i + 1}" for i, w in enumerate(workers)}}
            by_node = {w.node_id: w for w in workers}

            s = cpl.settings_for(data_dir, free_port(), 5.0)
            s.api_replicas = replicas
            s.ray_address = cluster.address
            ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
            # one HTTP proxy, on the head: the default (one per node) would bind api_port once per node
            serve.start(proxy_location="HeadOnly", http_options={"host": s.api_host, "port": s.api_port})
            cp = ControlPlane(s, keep_nodes=True)  # the fake nodes run nothing; teardown removes the data dir
            t = time.monotonic()
            cp.start()
            result["control_plane_start_s"] = round(time.monotonic() - t, 1)

            t = time.monotonic()
            with cpl.client(cp) as api:
                pools = [api.create_pool(f"cr-{i}", provider="instant", max_nodes=64)["id"] for i in range(n_pools)]
            result["pools_create_s"] = round(time.monotonic() - t, 1)
            register_spread(get_actor(INVENTORY), pools, nodes)

            placement = replica_placement()
            result["replica_nodes"] = sorted(role.get(n, n[:8]) for n in placement.values())
            core = {name: role.get(actor_node(name), "?") for name in (INVENTORY, DEPLOYMENTS)}
            result["core_actor_nodes"] = core
            print(f"replicas (pid -> node): { {p: role.get(n, n[:8]) for p, n in placement.items()} }", flush=True)

            tokens = [fake_nodes.token(i) for i in range(nodes)]
            pairs = list(zip([fake_nodes.node_id(i) for i in range(nodes)], tokens, strict=True))
            beat_url = cp.data_url + "/inventory/heartbeat"
            read_url = cp.data_url + "/v1/routing-table"

            def measure(tag: str) -> None:
                labels = procs.actor_labels()
                before = cpu_now(data_dir)
                hb = wrk_rotating(beat_url, pairs, seconds, conc)
                if hb is None:
                    raise SystemExit("this benchmark needs wrk (apt-get install wrk)")
                cpu = cpu_spent(data_dir, before, labels)
                beats = hb["req_s"] * seconds
                hb["cpu_s_per_1000"] = round(sum(cpu.values()) / max(beats / 1000, 1e-9), 3)
                result[f"heartbeats{tag}"] = hb
                result[f"heartbeat_cpu_s{tag}"] = cpu
                result[f"routing_reads{tag}"] = wrk_get(read_url, cp.api_token, None, seconds, conc)
                result[f"load_average{tag}"] = [round(x, 2) for x in os.getloadavg()]

            measure("")
            if ray_nodes > 1:
                core_nodes = {actor_node(INVENTORY), actor_node(DEPLOYMENTS)}
                count = {n: list(placement.values()).count(n) for n in set(placement.values())}
                # the worker with the fewest replicas: others keep serving, unless Serve put them all on one node
                on_workers = sorted((c, n) for n, c in count.items() if n in by_node and n not in core_nodes)
                if not on_workers:
                    result["kill"] = "no worker node runs a replica without a core actor: nothing killed"
                else:
                    victim = on_workers[0][1]
                    result["replicas_on_victim"] = count[victim]
                    result["replicas_elsewhere"] = len(placement) - count[victim]
                    result["kill"] = kill_phase(
                        cluster,
                        by_node[victim],
                        role,
                        replicas,
                        beat_url,
                        read_url,
                        tokens,
                        cp.api_token,
                        seconds,
                        conc,
                        node_alive,
                    )
                    measure("_after_replacement")
                    result["kill"]["replicas_after"] = sorted(role.get(n, n[:8]) for n in replica_placement().values())
        finally:
            if cp is not None:
                try:
                    cp.stop()
                except Exception as exc:
                    print(f"teardown: cp.stop failed: {exc!r}", file=sys.stderr)
            if ray.is_initialized():
                ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
    return result


def kill_phase(
    cluster: Any,
    victim: Any,
    role: dict[str, str],
    replicas: int,
    beat_url: str,
    read_url: str,
    tokens: list[str],
    admin_token: str,
    seconds: float,
    conc: int,
    node_alive: Any,
) -> dict[str, Any]:
    """Heartbeats and routing reads (httpx, half the connections each) while `victim` dies a third of the way in;
    a thread watches for Ray marking it dead and for Serve's replacement replica (a new replica process)."""
    from tests.support.ray_cluster_scenario import kill_node

    nodes = len(tokens)
    admin = {"authorization": f"Bearer {admin_token}"}
    out: dict[str, Any] = {"victim": role[victim.node_id]}
    before = set(replica_pids())
    marks: dict[str, float] = {}

    async def beat(c: httpx.AsyncClient, url: str, k: int) -> httpx.Response:
        i = k % nodes
        body = {"node_id": fake_nodes.node_id(i), "state": "ready"}
        return await c.post(url, json=body, headers={"authorization": f"Bearer {tokens[i]}"})

    async def read(c: httpx.AsyncClient, url: str, k: int) -> httpx.Response:
        return await c.get(url, headers=admin)

    def watch() -> None:
        while time.monotonic() < marks["kill"] + 120:
            if "dead" not in marks and not node_alive(victim.node_id):
                marks["dead"] = time.monotonic()
            now = set(replica_pids())
            if len(now) >= replicas and now - before:
                marks["replaced"] = time.monotonic()
                return
            time.sleep(0.2)

    async def killer() -> None:
        await asyncio.sleep(seconds / 3)
        marks["kill"] = time.monotonic()
        out["killed_processes"] = await asyncio.to_thread(kill_node, cluster, victim)
        watcher.start()

    async def phase() -> tuple[Any, ...]:
        return await asyncio.gather(
            drive_timed(beat_url, max(1, conc // 2), seconds, beat),
            drive_timed(read_url, max(1, conc // 2), seconds, read),
            killer(),
        )

    watcher = threading.Thread(target=watch, daemon=True)  # from the kill on, off the load's event loop
    t0 = time.monotonic()
    (b_ok, b_failed, b_retried), (r_ok, r_failed, r_retried), _ = asyncio.run(phase())
    t_end = time.monotonic()
    out["heartbeats"] = summarize(b_ok, b_failed, b_retried, t0, marks["kill"], t_end)
    out["routing_reads"] = summarize(r_ok, r_failed, r_retried, t0, marks["kill"], t_end)
    watcher.join(130)
    out["node_dead_after_s"] = round(marks["dead"] - marks["kill"], 1) if "dead" in marks else None
    out["replaced_after_s"] = round(marks["replaced"] - marks["kill"], 1) if "replaced" in marks else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ray-nodes", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--pools", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)  # "RAY_NODES,REPLICAS", in this process
    args = ap.parse_args(argv)
    if args.only is not None:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        n, r = (int(x) for x in args.only.split(","))
        res = run_one(n, r, args.pools, args.nodes, args.seconds, args.concurrency)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    results = []
    for n, r in ((1, 1), (args.ray_nodes, args.replicas)):
        cmd = [sys.executable, "-m", "bench.cluster_replicas", "--only", f"{n},{r}", "--pools", str(args.pools)]
        cmd += ["--nodes", str(args.nodes), "--seconds", str(args.seconds), "--concurrency", str(args.concurrency)]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(out[-5000:], file=sys.stderr)
            return 1
        results.append(json.loads(line.removeprefix("RESULT ")))
    one, many = results
    print(f"== API replicas on {args.ray_nodes} Ray nodes (cluster_utils, one machine), {args.pools} pools")
    print(json.dumps({"load_average": os.getloadavg(), "runs": results}, indent=2))
    for what in ("heartbeats", "routing_reads"):
        print(
            f"{what}/s: 1 replica on 1 Ray node {one[what]['req_s']}, {many['replicas']} replicas on "
            f"{many['ray_nodes']} Ray nodes {many[what]['req_s']} "
            f"(x{many[what]['req_s'] / max(one[what]['req_s'], 1e-9):.2f})"
        )
    for run in results:
        print(f"CPU s per 1,000 heartbeats, {run['replicas']} replica(s): {run['heartbeats']['cpu_s_per_1000']}")
    k = many.get("kill")
    if isinstance(k, str):
        print(f"{k} (replicas on {many['replica_nodes']})")
    if isinstance(k, dict) and not many.get("replicas_elsewhere"):
        print(f"Serve placed all {many['replicas']} replicas on {k['victim']}: its loss stops every replica")
    if isinstance(k, dict):
        hb = k["heartbeats"]
        print(
            f"{k['victim']} killed: heartbeats {hb['ok_after_kill']} answered after it "
            f"({hb['failed_after_retry']} failed after a retry, longest gap {hb['longest_gap_s']} s), "
            f"routing reads {k['routing_reads']['ok_after_kill']} ({k['routing_reads']['failed_after_retry']} failed); "
            f"node dead after {k['node_dead_after_s']} s, replica replaced after {k['replaced_after_s']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
