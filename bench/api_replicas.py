"""Several API replicas on one machine (issue 15): single heartbeats/s and routing reads/s on the data port with
1 and with N replicas (INFERIA_API_REPLICAS), and what SIGKILLing one replica under load costs.

    .venv/bin/python -m bench.api_replicas [--replicas 3] [--seconds 6] [--nodes 1000] [--concurrency 16]

Each replica count runs in its own process (one Ray per process): a real control plane (embedded PostgreSQL
+ Redis, local Ray, Serve) with that many API replicas, N nodes registered straight into the inventory
(bench/fake_nodes.py), then on the data port that the replicas share (SO_REUSEPORT), with wrk (an asyncio
httpx load generator in that process without it): single heartbeats rotating over the nodes, then
routing-table reads. With several replicas, one replica's process is SIGKILLed in the middle of a further
heartbeat run (the httpx driver): beats answered 200 after the kill, requests that failed (each is retried
once on a new connection, as the client and the agent do), and the seconds until Serve's replacement listens.

The load generator shares the machine's cores with the replicas, the inventory and Ray: on a 2-core machine
the ratio says what extra replicas cost or give when CPU is the limit, not what they give on more cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import fake_nodes
from bench.heartbeats import wrk_get, wrk_rotating
from bench.procs import session_processes

REPLICA_TITLE = "ray::ServeReplica:inferia:inferia-api"


def replica_pids() -> list[int]:
    """The API replica processes of the Ray session this process started (never another session's)."""
    out = []
    for p in session_processes():
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0].startswith(REPLICA_TITLE):
            out.append(p.pid)
    return sorted(out)


async def drive(
    url: str,
    conc: int,
    seconds: float,
    request: Any,
    kill_at: float | None = None,
) -> dict[str, Any]:
    """`conc` workers, each with its own connection, send `request(client, k)` until `seconds` pass; a failed
    request is retried once on a new connection. With kill_at: SIGKILL one replica that many seconds in."""
    ok = failed = retried = 0
    ok_after_kill = 0
    killed: dict[str, Any] = {}
    stop = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal ok, failed, retried, ok_after_kill
        c = httpx.AsyncClient(timeout=10, trust_env=False)
        k = i
        try:
            while time.monotonic() < stop:
                k += conc
                for attempt in (0, 1):
                    try:
                        r = await request(c, url, k)
                        good = r.status_code in (200, 304)
                    except httpx.HTTPError:
                        good = False
                    if good:
                        ok += 1
                        ok_after_kill += bool(killed)
                        break
                    if attempt == 0:
                        retried += 1
                        await c.aclose()
                        c = httpx.AsyncClient(timeout=10, trust_env=False)
                    else:
                        failed += 1
        finally:
            await c.aclose()

    async def killer() -> None:
        assert kill_at is not None
        await asyncio.sleep(kill_at)
        victims = replica_pids()
        os.kill(victims[0], signal.SIGKILL)
        killed.update(pid=victims[0], at=time.monotonic())
        while time.monotonic() < stop + 60:
            now = replica_pids()
            if len(now) == len(victims) and victims[0] not in now:
                killed["replaced_after_s"] = round(time.monotonic() - killed["at"], 1)
                return
            await asyncio.sleep(0.2)

    t0 = time.monotonic()
    kill = asyncio.create_task(killer()) if kill_at is not None else None
    await asyncio.gather(*(worker(i) for i in range(conc)))
    took = time.monotonic() - t0  # the load only (the killer may still wait for the replacement)
    if kill is not None:
        await kill
    out: dict[str, Any] = {"req_s": round(ok / took, 1), "ok": ok, "failed": failed, "retried_once": retried}
    if kill_at is not None:
        out["ok_after_kill"] = ok_after_kill
        out["replaced_after_s"] = killed.get("replaced_after_s")
    return out


def run_one(replicas: int, seconds: float, nodes: int, conc: int) -> dict[str, Any]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from actors.runtime import INVENTORY, get_actor
    from controller.boot import ControlPlane
    from controller.services import free_port
    from tests.support import controlplane as cpl

    result: dict[str, Any] = {"replicas": replicas}
    with tempfile.TemporaryDirectory() as d:
        s = cpl.settings_for(Path(d), free_port(), 5.0)
        s.api_replicas = replicas
        cp = ControlPlane(s, keep_nodes=False)
        cp.start()
        try:
            pool = cpl.client(cp).create_pool("bench")
            fake_nodes.register(get_actor(INVENTORY), pool["id"], nodes)
            tokens = [fake_nodes.token(i) for i in range(nodes)]
            beat_url = cp.data_url + "/inventory/heartbeat"
            read_url = cp.data_url + "/v1/routing-table"
            admin = {"authorization": f"Bearer {cp.api_token}"}

            async def beat(c: httpx.AsyncClient, url: str, k: int) -> httpx.Response:
                i = k % nodes
                hdrs = {"authorization": f"Bearer {tokens[i]}"}
                return await c.post(url, json={"node_id": fake_nodes.node_id(i), "state": "ready"}, headers=hdrs)

            async def read(c: httpx.AsyncClient, url: str, k: int) -> httpx.Response:
                return await c.get(url, headers=admin)

            result["live_replicas"] = len(replica_pids())
            pairs = list(zip([fake_nodes.node_id(i) for i in range(nodes)], tokens, strict=True))
            if shutil.which("wrk"):  # a C load generator: far less client CPU than the Python driver
                result["load_generator"] = "wrk"
                result["heartbeats"] = wrk_rotating(beat_url, pairs, seconds, conc)
                result["routing_reads"] = wrk_get(read_url, cp.api_token, None, seconds, conc)
            else:
                result["load_generator"] = "httpx (asyncio, this process)"
                result["heartbeats"] = asyncio.run(drive(beat_url, conc, seconds, beat))
                result["routing_reads"] = asyncio.run(drive(read_url, conc, seconds, read))
            if replicas > 1:
                result["heartbeats_kill_one"] = asyncio.run(drive(beat_url, conc, seconds, beat, seconds / 3))
        finally:
            cp.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--only", type=int, default=None, help=argparse.SUPPRESS)  # one count, in this process
    args = ap.parse_args(argv)
    if args.only is not None:
        print("RESULT " + json.dumps(run_one(args.only, args.seconds, args.nodes, args.concurrency)), flush=True)
        return 0
    results = []
    for n in (1, args.replicas):
        cmd = [sys.executable, "-m", "bench.api_replicas", "--only", str(n), "--seconds", str(args.seconds)]
        cmd += ["--nodes", str(args.nodes), "--concurrency", str(args.concurrency)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(out.stdout[-2000:], out.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(line.removeprefix("RESULT ")))
    one, many = results
    print(json.dumps({"load_average": os.getloadavg(), "runs": results}, indent=2))
    for what in ("heartbeats", "routing_reads"):
        print(
            f"{what}/s: 1 replica {one[what]['req_s']}, {many['replicas']} replicas {many[what]['req_s']} "
            f"(x{many[what]['req_s'] / max(one[what]['req_s'], 1e-9):.2f})"
        )
    k = many.get("heartbeats_kill_one")
    if k:
        print(
            f"one of {many['replicas']} replicas SIGKILLed under heartbeats: {k['ok_after_kill']} answered after "
            f"it, {k['failed']} failed after one retry ({k['retried_once']} retried), replacement listening after "
            f"{k['replaced_after_s']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
