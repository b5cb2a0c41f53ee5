"""The cost of /metrics' exposition at scale, without Ray: one snapshot of N nodes in P pools with D deployments
turned into metric families and rendered by prometheus_client, as a scrape does after its (cached) state read.

    .venv/bin/python -m bench.metrics [--nodes 10000] [--pools 100] [--deployments 200] [--rounds 20]

Prints the render time (median and max over the rounds), the size of the text and the number of series, with
the per-node series capped at NODE_SERIES_LIMIT.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from serve_app import metrics
from serve_app.metrics import NODE_SERIES_LIMIT, ReplicaMetrics, Snapshot


def snapshot(nodes: int, pools: int, deployments: int) -> Snapshot:
    states = ("ready",) * 8 + ("unhealthy", "provisioning")
    node_views = [
        {
            "id": f"node-{i:06d}",
            "pool_id": f"pool-{i % pools:03d}",
            "state": states[i % len(states)],
            "deployment_id": f"dep-{i % deployments:04d}",
            "engine_ready": states[i % len(states)] == "ready",
            "health_score": 100 - i % 7,
            "seconds_since_heartbeat": (i % 50) / 10,
        }
        for i in range(nodes)
    ]
    return Snapshot(
        inventory={"nodes_by_state": {"ready": nodes}, "heartbeats_total": 10**7, "routing_version": 1},
        deployments_actor={"reconciles": 100, "last_reconcile_ms": 264.0},
        nodes=node_views,
        deployments=[
            {"id": f"dep-{d:04d}", "model": f"m{d}", "pool": f"p{d % pools}", "state": "running", "desired": 50}
            for d in range(deployments)
        ],
        pools=[
            {
                "id": f"pool-{p:03d}",
                "name": f"p{p}",
                "provider": "instant",
                "state": "active",
                "min_nodes": 0,
                "target_nodes": 0,
                "max_nodes": 200,
                "max_cost_per_hour": None,
            }
            for p in range(pools)
        ],
        usage=[
            {"pool_id": f"pool-{p:03d}", "state": "ready", "nodes": nodes // pools, "cost": 1.0} for p in range(pools)
        ],
        provider_calls=[{"provider": "instant", "call": "provision_node", "calls": nodes, "errors": 3}],
        ongoing={f"node-{i:06d}": 1 for i in range(0, nodes, 3)},
    )


async def run(nodes: int, pools: int, deployments: int, rounds: int) -> None:
    snap = snapshot(nodes, pools, deployments)
    for d in range(deployments):  # request series as a busy replica has them
        for status in (200, 429, 503):
            metrics.observe_request(f"dep-{d:04d}", status, 0.2, 0.05)

    async def read() -> Snapshot:
        return snap

    rm = ReplicaMetrics(read, max_age_s=0.0)
    times: list[float] = []
    stalls: list[float] = []
    body = b""
    for _ in range(rounds):
        # a 1 ms ticker on the same event loop: its longest gap is how long the heartbeats and the proxy would wait
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker(gaps: list[float] = gaps, done: asyncio.Event = done) -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        body = await rm.render()
        times.append(time.perf_counter() - t0)
        done.set()
        await task
        stalls.append(max(gaps, default=0.0))
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    print(f"-- /metrics exposition: {nodes} nodes, {pools} pools, {deployments} deployments")
    print(f"   (per-node series capped at {NODE_SERIES_LIMIT} nodes; text rendered in a worker thread)")
    med, worst = statistics.median(times) * 1000, max(times) * 1000
    print(f"render wall time: median {med:.1f} ms, max {worst:.1f} ms over {rounds} rounds")
    print(f"longest event-loop stall during a render: median {statistics.median(stalls) * 1000:.1f} ms")
    print(f"text: {len(body) / 1024:.0f} KiB, {series} series")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--pools", type=int, default=100)
    ap.add_argument("--deployments", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    asyncio.run(run(a.nodes, a.pools, a.deployments, a.rounds))


if __name__ == "__main__":
    main()
