"""Routing-table reads and watchers: plain reads, 304s, and many concurrent long-polls.

    .venv/bin/python -m bench.routing [--seconds 8] [--models 20] [--endpoints 5] [--watchers 1000]

Boots a real control plane in this process, fills the routing table with M models x E endpoints
(nodes registered straight into the inventory and marked ready), then measures with wrk (Debian's
`wrk`; required here) GET /v1/routing-table on the API replica's data port: full bodies (200) and
If-None-Match (304). Then holds N long-poll watchers (`?wait=1`) open at once, measures the replica's
memory before/after and the time for all of them to see one routing change. Last, the path for gateways
that need more: the Redis snapshot (`GET routing:latest`) read by 16 connections, and the fan-out of one
change to S subscribers of the `routing` channel.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import ray

from bench import fake_nodes
from bench.heartbeats import wrk_get


def replica_rss_mib() -> float:
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "ServeReplica:inferia" in " ".join(p.info["cmdline"] or []):
                return float(p.memory_info().rss) / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return float("nan")


async def watchers(url: str, token: str, n: int, version: int, trigger: object) -> tuple[float, float, int]:
    """Open n long-polls, fire the change, return (seconds until all saw it, RSS delta MiB, how many saw it)."""
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as c:
        hdrs = {"authorization": f"Bearer {token}", "if-none-match": f'"{version}"'}
        seen: list[float] = []

        async def one() -> None:
            r = await c.get(url, params={"wait": 1, "timeout": 30}, headers=hdrs)
            if r.status_code == 200:
                seen.append(time.monotonic())

        before = replica_rss_mib()
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(3.0)  # let them all be held
        held = replica_rss_mib() - before
        t0 = time.monotonic()
        await asyncio.to_thread(trigger)  # type: ignore[arg-type]
        await asyncio.gather(*tasks)
        return (max(seen) - t0 if seen else float("nan")), held, len(seen)


async def redis_reads(url: str, seconds: float, conc: int = 16) -> dict[str, float]:
    """GET routing:latest from `conc` connections for `seconds`: reads/s and p99 (ms)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, max_connections=conc)
    lat: list[float] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            raw = await client.get("routing:latest")
            lat.append(time.perf_counter() - t0)
            assert raw

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conc)))
    took = time.monotonic() - t0
    await client.aclose()
    lat.sort()
    return {"req_s": len(lat) / took, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}


async def redis_fanout(url: str, n: int, trigger: object) -> tuple[float, float, int]:
    """n subscribers on `routing`; fire one change: (median ms, max ms after changed_at, how many got it)."""
    import json

    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, max_connections=n + 4)
    subs = []
    for _ in range(n):
        sub = client.pubsub()
        await sub.subscribe("routing")
        subs.append(sub)
    got: list[float] = []

    async def one(sub: object) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = await sub.get_message(ignore_subscribe_messages=True, timeout=1.0)  # type: ignore[attr-defined]
            if msg and msg["type"] == "message":
                got.append(time.time() - json.loads(msg["data"])["changed_at"])
                return

    tasks = [asyncio.create_task(one(s)) for s in subs]
    await asyncio.sleep(0.5)
    await asyncio.to_thread(trigger)  # type: ignore[arg-type]
    await asyncio.gather(*tasks)
    for sub in subs:
        await sub.aclose()
    await client.aclose()
    got.sort()
    if not got:
        return float("nan"), float("nan"), 0
    return got[len(got) // 2] * 1000, got[-1] * 1000, len(got)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--subscribers", type=int, default=200)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from actors.runtime import INVENTORY, get_actor
    from tests.support import controlplane as cpl

    with tempfile.TemporaryDirectory() as d:
        cp = cpl.start(Path(d), interval_s=5.0)
        try:
            inv = get_actor(INVENTORY)
            pool = cpl.client(cp).create_pool("bench")
            n = args.models * args.endpoints
            fake_nodes.register(inv, pool["id"], n, model_of=lambda i: f"model-{i // args.endpoints}")
            beats = [
                {"token": fake_nodes.token(i), "node_id": fake_nodes.node_id(i), "state": "ready"} for i in range(n)
            ]
            ray.get(inv.heartbeats.remote(beats))
            # keep them alive for the whole run (interval 5 s x 3 misses: silent nodes would leave the table)
            beating = threading.Event()

            def beat() -> None:
                while not beating.wait(2.0):
                    ray.get(inv.heartbeats.remote(beats))

            threading.Thread(target=beat, daemon=True).start()
            c = cpl.client(cp)
            table = cpl.wait_for(
                lambda: (t := c.routing_table()) and len(t["models"]) == args.models and t,
                10,
                what="routing table filled",
            )
            url = cp.data_url + "/v1/routing-table"
            full = wrk_get(url, cp.api_token, None, args.seconds)
            cached = wrk_get(url, cp.api_token, str(table["version"]), args.seconds)

            def change() -> None:
                ray.get(inv.transition.remote("node-00000", "draining", "bench"))

            took, held, seen = asyncio.run(watchers(url, cp.api_token, args.watchers, table["version"], change))
            assert cp.cfg is not None
            rreads = asyncio.run(redis_reads(cp.cfg.redis_url, args.seconds))

            def change_back() -> None:
                ray.get(inv.transition.remote("node-00001", "draining", "bench"))

            fan_med, fan_max, fan_n = asyncio.run(redis_fanout(cp.cfg.redis_url, args.subscribers, change_back))
            beating.set()
        finally:
            cp.stop()

    print(f"\n== routing-table reads ({args.models} models x {args.endpoints} endpoints, data port, wrk 16 conn.)")
    print(f"200 full table : {full['req_s']:8.0f} req/s p99 {full['p99_ms']:.1f} ms (target >= 800 req/s, p99 <= 50ms)")
    print(
        f"304 unchanged  : {cached['req_s']:8.0f} req/s  p99 {cached['p99_ms']:.1f} ms   (non-304: {cached['errors']})"
    )
    print(f"== {args.watchers} concurrent long-poll watchers")
    print(f"held with {held:.1f} MiB more replica RSS   (target < 100 MiB)")
    print(f"{seen}/{args.watchers} saw the change; the last one {took * 1000:.0f} ms after it")
    print("== gateways on Redis (16 connections, asyncio redis client in this process)")
    print(
        f"GET routing:latest : {rreads['req_s']:8.0f} reads/s  p99 {rreads['p99_ms']:.1f} ms"
        f"   (ratio to HTTP 200 reads: {rreads['req_s'] / full['req_s']:.1f}x)"
    )
    print(
        f"{fan_n}/{args.subscribers} subscribers got one change: median {fan_med:.1f} ms, "
        f"last {fan_max:.1f} ms after changed_at (target <= 100 ms)"
    )


if __name__ == "__main__":
    main()
