"""Failure detection: from a node's last heartbeat to its removal from the routing table, and from that
routing change to a long-poll watcher and to a Redis subscriber.

    .venv/bin/python -m bench.detection [--intervals 1,5] [--trials 3] [--nodes 100]

For each heartbeat interval a fresh control plane is started in a child process (the interval is a
start-up setting) with `misses` = 3. The bench registers N nodes of one model with the inventory and
heartbeats them itself, batched, through the API replica's data port every interval, as node agents
would. Each trial silences one node right after a heartbeat was sent for it, and records when a
long-poll watcher (`GET /v1/routing-table?wait=1`) and a Redis subscriber (channel `routing`) see a
table without it; `changed_at` in the table stamps the change itself.
Targets: last heartbeat -> removal <= 3 intervals + 0.5 s; routing change -> watcher <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

MISSES = 3


def _child(interval: float, trials: int, n_nodes: int) -> dict[str, Any]:
    import ray

    from tests.support import controlplane as cpl

    with tempfile.TemporaryDirectory() as d:
        cp = cpl.start(Path(d), interval_s=interval)
        try:
            return asyncio.run(_measure(cp, interval, trials, n_nodes))
        finally:
            cp.stop()
            ray.shutdown()


async def _measure(cp: Any, interval: float, trials: int, n_nodes: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from actors.runtime import INVENTORY, get_actor
    from bench import fake_nodes
    from tests.support import controlplane as cpl

    assert cp.cfg is not None
    inv = get_actor(INVENTORY)
    pool = cpl.client(cp).create_pool("detect")
    ids = await asyncio.to_thread(fake_nodes.register, inv, pool["id"], n_nodes, lambda _i: "detect")
    tokens = {node: fake_nodes.token(i) for i, node in enumerate(ids)}
    alive = dict(tokens)
    last_sent: dict[str, float] = {}
    hb_url = cp.data_url + "/inventory/heartbeat"
    rt_url = cp.data_url + "/v1/routing-table"
    hdrs = {"authorization": f"Bearer {cp.api_token}"}
    seen_poll: list[tuple[float, dict[str, Any]]] = []
    seen_redis: list[tuple[float, dict[str, Any]]] = []
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:

        async def beat_loop() -> None:
            while True:
                now = time.time()
                batch = [{"node_id": n, "token": t, "state": "ready"} for n, t in list(alive.items())]
                for b in batch:
                    last_sent[b["node_id"]] = now
                (await http.post(hb_url, json={"heartbeats": batch})).raise_for_status()
                await asyncio.sleep(max(0.0, interval - (time.time() - now)))

        async def poll_loop() -> None:
            version = None
            while True:
                params: dict[str, Any] = {"wait": 1, "timeout": 30}
                h = dict(hdrs)
                if version is not None:
                    h["if-none-match"] = f'"{version}"'
                r = await http.get(rt_url, params=params, headers=h)
                if r.status_code == 200:
                    table = r.json()
                    seen_poll.append((time.time(), table))
                    version = table["version"]

        async def redis_loop() -> None:
            client = aioredis.Redis.from_url(cp.cfg.redis_url)  # type: ignore[union-attr]
            sub = client.pubsub()
            await sub.subscribe("routing")
            try:
                while True:
                    msg = await sub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg and msg["type"] == "message":
                        seen_redis.append((time.time(), json.loads(msg["data"])))
            finally:
                await sub.aclose()
                await client.aclose()

        tasks = [asyncio.create_task(f()) for f in (beat_loop, poll_loop, redis_loop)]

        def routed(table: dict[str, Any]) -> set[str]:
            return {e["node_id"] for e in table["models"].get("detect", [])}

        async def until(cond: Any, timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while not cond():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out waiting for {what}")
                await asyncio.sleep(0.01)

        await until(lambda: seen_poll and len(routed(seen_poll[-1][1])) == n_nodes, 30, "all nodes routed")
        results = []
        for k in range(trials):
            victim = fake_nodes.node_id(k)
            sent = last_sent[victim]
            await until(lambda v=victim, s=sent: last_sent[v] > s, interval * 2 + 5, "a fresh beat")  # type: ignore[misc]
            alive.pop(victim)  # silenced right after a heartbeat was sent for it
            t_last = last_sent[victim]

            def gone(
                seen: list[tuple[float, dict[str, Any]]], v: str = victim, after: float = t_last
            ) -> tuple[float, Any] | None:
                for t, table in seen:
                    if t > after and v not in routed(table):
                        return t, table
                return None

            await until(lambda: gone(seen_poll) and gone(seen_redis), 3 * interval + 30, "removal")
            tp, table = gone(seen_poll)  # type: ignore[misc]
            tr, _ = gone(seen_redis)  # type: ignore[misc]
            results.append(
                {
                    "detect_s": tp - t_last,
                    "change_after_last_beat_s": table["changed_at"] - t_last,
                    "poll_ms": (tp - table["changed_at"]) * 1000,
                    "redis_ms": (tr - table["changed_at"]) * 1000,
                }
            )
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"interval_s": interval, "nodes": n_nodes, "trials": results}


def run_interval(interval: float, trials: int, nodes: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.detection",
            "--child",
            str(interval),
            "--trials",
            str(trials),
            "--nodes",
            str(nodes),
        ],
        capture_output=True,
        text=True,
        timeout=300 + trials * (3 * interval + 10),
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
    raise SystemExit(f"detection child for interval {interval}s failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def report(res: dict[str, Any]) -> list[bool]:
    iv = res["interval_s"]
    target = MISSES * iv + 0.5
    ok: list[bool] = []
    print(f"\n== failure detection at {iv:g} s interval x {MISSES} misses ({res['nodes']} nodes heartbeating)")
    for i, t in enumerate(res["trials"]):
        good = t["detect_s"] <= target and t["poll_ms"] <= 100 and t["redis_ms"] <= 100
        ok.append(good)
        print(
            f"trial {i + 1}: last beat -> out of the table {t['detect_s']:.2f} s (target <= {target:.1f} s); "
            f"routing change -> long-poll {t['poll_ms']:.1f} ms, -> Redis {t['redis_ms']:.1f} ms "
            f"(target <= 100 ms)  {'PASS' if good else 'MISS'}"
        )
    worst = max(t["detect_s"] for t in res["trials"])
    print(f"worst {worst:.2f} s = {worst / iv:.2f} intervals; bound = misses x interval + sweep period (<= 0.25 s)")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--intervals", default="1,5")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.child is not None:
        res = _child(args.child, args.trials, args.nodes)
        print("RESULT " + json.dumps(res), flush=True)
        return
    ok: list[bool] = []
    for iv in (float(x) for x in args.intervals.split(",")):
        ok += report(run_interval(iv, args.trials, args.nodes))
    print(f"\ndetection: {sum(ok)}/{len(ok)} trials within targets")


if __name__ == "__main__":
    main()
