"""Rolling update of one big deployment (issue 12): time to update N replicas, peak extra replicas, the fewest
endpoints routed meanwhile, control-plane CPU per replica.

    .venv/bin/python -m bench.rollout [--replicas 100] [--surges 1,10]

Boots a real control plane in this process with the instant provider (tests/support/instant.py: a node is a
JSON file that reports its health through its pool, so the figures are the control plane's own work), deploys
N replicas, then runs one update per surge value (PATCH with new args, max_unavailable 0), following the
routing table by long-poll (the fewest endpoints of the model: requests fail only when that drops below N,
the goal is N) and the deployment every 0.1 s (the most replicas alive at once). The instant provider has no
engine to send requests to: tests/integration/test_rollout.py counts failed requests under load with real
engine processes (0).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.procs import actor_labels, cpu_by_pid, cpu_delta, measure, postgres_redis, session_processes

ALIVE = ("provisioning", "ready", "unhealthy", "draining")


class Watch:
    """The most alive replicas (GET every 0.1 s) and the fewest routed endpoints (routing long-poll)."""

    def __init__(self, cp: Any, dep_id: str, model: str) -> None:
        self.cp, self.dep_id, self.model = cp, dep_id, model
        self.peak_alive = 0
        self.min_routed = 10**9
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._alive), threading.Thread(target=self._routes)]

    def _alive(self) -> None:
        from tests.support import controlplane as cpl

        with cpl.client(self.cp) as c:
            while not self.stop.is_set():
                reps = c.get_deployment(self.dep_id)["replicas"]
                self.peak_alive = max(self.peak_alive, sum(1 for r in reps if r["state"] in ALIVE))
                time.sleep(0.1)

    def _routes(self) -> None:
        from controller.client import Client

        with Client(self.cp.data_url, token=self.cp.api_token, timeout=60) as c:
            table = c.routing_table()
            while not self.stop.is_set():
                self.min_routed = min(self.min_routed, len(table["models"].get(self.model, [])))
                new = c.routing_table(version=table["version"], wait=True, timeout=1)
                if new is not None:
                    table = new

    def __enter__(self) -> Watch:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def run(args: argparse.Namespace, data_dir: Path) -> list[dict[str, Any]]:
    from tests.support import controlplane as cpl

    out: list[dict[str, Any]] = []
    n = args.replicas
    cp = cpl.start(data_dir, interval_s=1.0)
    try:
        with cpl.client(cp) as c:
            c.create_pool("bench", provider="instant", max_nodes=2 * n + 10)
            c.register_model("bench-model", engine="custom", args=["x"])
            dep = c.deploy("bench-model", "bench", replicas=n)
            c.wait_deployment(dep["id"], timeout=args.timeout, poll=0.2)
            for i, surge in enumerate(args.surges):
                cpu0 = cpu_by_pid(measure(session_processes(), actor_labels(), full=False))
                svc0 = postgres_redis(data_dir)
                with Watch(cp, dep["id"], "bench-model") as w:
                    t0 = time.monotonic()
                    upd = c.update_deployment(dep["id"], args=["x", f"v{i + 2}"], max_surge=surge, max_unavailable=0)
                    done = c.wait_update(dep["id"], upd["generation"], timeout=args.timeout, poll=0.1)
                    wall = time.monotonic() - t0
                    time.sleep(0.5)
                cpu = cpu_delta(cpu0, measure(session_processes(), actor_labels(), full=False))
                svc1 = postgres_redis(data_dir)
                ray_cpu = sum(cpu.values())
                pg_cpu = svc1["pg_cpu_s"] - svc0["pg_cpu_s"]
                out.append(
                    {
                        "surge": surge,
                        "wall_s": wall,
                        "peak_extra": w.peak_alive - n,
                        "min_routed": w.min_routed,
                        "ready": done["rollout"]["ready"],
                        "ray_cpu_s": ray_cpu,
                        "pg_cpu_s": pg_cpu,
                        "cpu": cpu,
                    }
                )
    finally:
        cp.stop()
    return out


def report(args: argparse.Namespace, res: list[dict[str, Any]]) -> None:
    n = args.replicas
    print(f"\n== rolling update of {n} replicas (instant provider, max_unavailable 0)")
    for r in res:
        per = (r["ray_cpu_s"] + r["pg_cpu_s"]) / n * 1000
        ok = "PASS" if r["min_routed"] >= n and r["peak_extra"] <= r["surge"] else "MISS"
        print(
            f"surge {r['surge']:>3}: {r['wall_s']:6.1f} s ({r['wall_s'] / n * 1000:.0f} ms per replica), "
            f"peak extra replicas {r['peak_extra']} (bound {r['surge']}), fewest routed {r['min_routed']} "
            f"(goal {n}) {ok}; control-plane CPU {r['ray_cpu_s']:.1f} s Ray + {r['pg_cpu_s']:.1f} s Postgres "
            f"= {per:.0f} ms per replica"
        )
    if len(res) >= 2:
        print(f"speed-up surge {res[-1]['surge']} vs {res[0]['surge']}: {res[0]['wall_s'] / res[-1]['wall_s']:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--surges", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10])
    ap.add_argument("--timeout", type=float, default=900.0)
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
