"""Where last-seen lives: in memory with batched flushes (what the inventory does) vs a database write per
heartbeat (what it avoids).

    .venv/bin/python -m bench.storage [--nodes 10000] [--seconds 5]

Starts an embedded PostgreSQL (no Ray), applies the migrations, inserts N nodes, then measures on the
same machine:
- in memory: the inventory's per-beat work on last-seen (a dict update with a timestamp), beats/s;
- one UPDATE per heartbeat (asyncpg, 16 concurrent connections), beats/s and p99;
- the inventory's batched flush (`Store.flush_heartbeats`: one `UPDATE ... FROM unnest` for all N
  nodes), the time per flush and the beats/s it stands for.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

TARGET_BEATS_S = 10_000.0


async def measure(dsn: str, nodes: int, seconds: float) -> dict[str, float]:
    from actors.records import PoolRecord, hash_secret
    from actors.states import NodeState
    from actors.storage import Store

    store = await Store.connect(dsn, max_size=17, migrate=True)
    try:
        await store.insert_pool(PoolRecord(id="pool-bench", name="bench", provider="bench"))
        ids = [f"node-{i:06d}" for i in range(nodes)]
        async with store.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO inventory_nodes (id, pool_id, provider, state, token_hash) VALUES ($1,$2,$3,$4,$5)",
                [(i, "pool-bench", "bench", str(NodeState.READY), hash_secret(i)) for i in ids],
            )

        # 1. in memory
        last_seen: dict[str, float] = {}
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < min(seconds, 1.0):
            for i in ids:
                last_seen[i] = time.monotonic()
            n += len(ids)
        mem_rate = n / (time.perf_counter() - t0)

        # 2. one UPDATE per heartbeat, 16 connections
        lat: list[float] = []
        stop = time.monotonic() + seconds

        async def writer(k: int) -> None:
            j = k
            async with store.pool.acquire() as conn:
                while time.monotonic() < stop:
                    t = time.perf_counter()
                    await conn.execute(
                        "UPDATE inventory_nodes SET last_heartbeat = $2, health_score = 100 WHERE id = $1",
                        ids[j % nodes],
                        datetime.now(UTC),
                    )
                    lat.append(time.perf_counter() - t)
                    j += 16

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(k) for k in range(16)))
        per_beat_rate = len(lat) / (time.perf_counter() - t0)
        lat.sort()
        p99 = lat[int(len(lat) * 0.99)] * 1000

        # 3. the batched flush of every node at once (what the inventory does every 0.5 s)
        flushes: list[float] = []
        for _ in range(5):
            now = datetime.now(UTC)
            beats = [(i, now, 100) for i in ids]
            t = time.perf_counter()
            await store.flush_heartbeats(beats)
            flushes.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)
        flush_s = sorted(flushes)[len(flushes) // 2]
        return {
            "memory_beats_s": mem_rate,
            "per_beat_update_s": per_beat_rate,
            "per_beat_p99_ms": p99,
            "flush_ms": flush_s * 1000,
            "flush_beats_s": nodes / flush_s,
        }
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    from controller.services import EmbeddedPostgres

    with tempfile.TemporaryDirectory() as d:
        pg = EmbeddedPostgres(Path(d) / "pgdata")
        dsn = pg.start()
        try:
            r = asyncio.run(measure(dsn, args.nodes, args.seconds))
        finally:
            pg.stop()
    print(f"\n== last-seen storage ({args.nodes} nodes, embedded PostgreSQL on this machine)")
    print(f"in memory (dict update)          : {r['memory_beats_s']:12,.0f} beats/s")
    print(
        f"one UPDATE per heartbeat (16 conn.): {r['per_beat_update_s']:10,.0f} beats/s  "
        f"p99 {r['per_beat_p99_ms']:.1f} ms"
        f" ({'meets' if r['per_beat_update_s'] >= TARGET_BEATS_S else 'short of'} 10,000 beats/s; database saturated)"
    )
    print(
        f"batched flush of all {args.nodes} nodes: {r['flush_ms']:.1f} ms per flush = {r['flush_beats_s']:,.0f} beats/s"
        f" (the inventory flushes every 0.5 s: {r['flush_ms'] / 500 * 100:.1f} % of one connection's time)"
    )
    print(
        f"ratios: batched flush / UPDATE per beat = {r['flush_beats_s'] / r['per_beat_update_s']:.0f}x; "
        f"in memory / UPDATE per beat = {r['memory_beats_s'] / r['per_beat_update_s']:.0f}x"
    )


if __name__ == "__main__":
    main()
