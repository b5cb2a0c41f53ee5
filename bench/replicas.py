"""Control-plane overhead of one big deployment: POST /v1/deployments (N replicas) to all N routed.

    .venv/bin/python -m bench.replicas [--replicas 1000]

Boots a real control plane in this process with the instant provider (tests/support/instant.py: a
node is a JSON file and reports its health through its pool, so the figure is the control plane's own
work: reconciler, pool actor, inventory, Postgres, routing publication), creates one pool and one
model, then deploys N replicas and follows the routing table by long-poll until it holds N endpoints,
and the deployment's state until it is `running`. Meanwhile a thread samples the RSS of every process
of this Ray session (peak), and the CPU seconds they spent over the run are summed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.procs import (
    MiB,
    PeakSampler,
    actor_labels,
    cpu_by_pid,
    cpu_delta,
    measure,
    postgres_redis,
    session_processes,
)
from bench.scale import wait_endpoints

TARGET_S = 20.0


def wait_state(cp: Any, dep_id: str, state: str, t0: float, timeout: float, out: dict[str, float]) -> None:
    """In a thread: poll the deployment until it is `state`; store the seconds since t0 in out[state]."""
    from tests.support import controlplane as cpl

    with cpl.client(cp) as c:
        while time.monotonic() - t0 < timeout:
            if c.get_deployment(dep_id)["state"] == state:
                out[state] = time.monotonic() - t0
                return
            time.sleep(0.1)


def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from tests.support import controlplane as cpl

    res: dict[str, Any] = {}
    cp = cpl.start(data_dir, interval_s=1.0)
    try:
        with cpl.client(cp) as c:
            c.create_pool("bench", provider="instant", max_nodes=max(1000, args.replicas))
            c.register_model("bench-model", engine="custom", args=["x"])
            cpu0 = cpu_by_pid(measure(session_processes(), actor_labels(), full=False))
            svc0 = postgres_redis(data_dir)
            with PeakSampler(actor_labels) as peak:
                t0 = time.monotonic()
                dep = c.deploy("bench-model", "bench", replicas=args.replicas)
                res["post_s"] = time.monotonic() - t0
                times: dict[str, float] = {}
                watcher = threading.Thread(target=wait_state, args=(cp, dep["id"], "running", t0, args.timeout, times))
                watcher.start()
                got = wait_endpoints(cp, args.replicas, args.timeout, t0)
                res["first_s"], res["all_s"], res["versions"], res["reached"] = got
                watcher.join()
                res["running_s"] = times.get("running", float("nan"))
                res["wall_s"] = time.monotonic() - t0
            after = measure(session_processes(), actor_labels(), full=False)
            res["cpu"] = cpu_delta(cpu0, after)
            svc1 = postgres_redis(data_dir)
            res["pg_cpu_s"] = svc1["pg_cpu_s"] - svc0["pg_cpu_s"]
            res["redis_cpu_s"] = svc1["redis_cpu_s"] - svc0["redis_cpu_s"]
            res["pg_rss"] = svc1["pg_rss"]
            res["peak_rss"], res["peak_groups"] = peak.peak, peak.peak_groups
    finally:
        cp.stop()
    return res


def report(args: argparse.Namespace, res: dict[str, Any]) -> None:
    n = args.replicas
    print(f"\n== one deployment of {n} replicas (instant provider, one pool, interval 1 s)")
    print(f"POST /v1/deployments answered     : {res['post_s'] * 1000:.0f} ms")
    print(f"-> first endpoint routed           : {res['first_s']:.2f} s")
    ok = "PASS" if res["all_s"] <= TARGET_S else "MISS"
    print(
        f"-> all {n} endpoints routed       : {res['all_s']:.2f} s   {ok} (target <= {TARGET_S:g} s, "
        f"ratio {res['all_s'] / TARGET_S:.2f}; {res['reached']} reached, {res['versions']} routing versions "
        "seen by the long-poll)"
    )
    ok = "PASS" if res["running_s"] <= TARGET_S else "MISS"
    print(f"-> deployment `running`            : {res['running_s']:.2f} s   {ok} (target <= {TARGET_S:g} s)")
    print(f"   per replica: {res['all_s'] / n * 1000:.1f} ms to routed")
    wall = res["wall_s"]
    total = sum(res["cpu"].values())
    print(f"-- CPU over the run ({wall:.1f} s; % of one core, the machine has 200 %)")
    for label, sec in sorted(res["cpu"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"{label:<22}{sec:>7.1f} s {100 * sec / wall:>7.1f} %")
    print(f"{'all Ray processes':<22}{total:>7.1f} s {100 * total / wall:>7.1f} %")
    print(f"{'Postgres (not Ray)':<22}{res['pg_cpu_s']:>7.1f} s {100 * res['pg_cpu_s'] / wall:>7.1f} %")
    print(f"{'Redis (not Ray)':<22}{res['redis_cpu_s']:>7.1f} s {100 * res['redis_cpu_s'] / wall:>7.1f} %")
    print(f"-- peak RSS of the Ray session's processes (sampled every 0.5 s): {res['peak_rss'] / MiB:.0f} MiB")
    for g in sorted(res["peak_groups"].values(), key=lambda g: -g.rss)[:8]:
        print(f"{g.label:<22}{g.count:>3} x {g.rss / g.count / MiB:>6.0f} MiB")
    print(f"Postgres (not Ray), RSS at the end: {res['pg_rss'] / MiB:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    from tests.support import instant

    os.environ["INFERIA_ADAPTERS"] = instant.ENV_ADAPTERS  # before Ray starts: its workers inherit it
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as d:
        res = run(args, Path(d))
    report(args, res)


if __name__ == "__main__":
    main()
