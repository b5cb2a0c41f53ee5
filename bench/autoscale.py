"""Autoscaling (issue 11): how fast the control plane follows load, and what it saves.

    .venv/bin/python -m bench.autoscale [--phase-s 12] [--max 4] [--service-ms 200]

Boots a real control plane in this process with the instant provider (tests/support/instant.py: a node is
a JSON file that reports its own health, so no engine has to start and every second measured is the
control plane's) whose nodes all point at one in-process engine (tests/support/fast_engine.py behind a path
prefix, answering after --service-ms). One deployment with a policy (min 0, max --max, target 2 in flight
per replica, upscale 1 s, downscale 4 s, zero after 8 s idle). Measured:

- request at zero -> answered: a request for the deployment at zero replicas is held by the proxy, wakes the
  autoscaler, and is forwarded once the first replica is routed; with the instant provider all of it is the
  control plane's share (goal <= 100 ms beyond the engine's own readiness; here the engine is ready at once);
  also split: hold -> decision, decision -> routed, routed -> answered;
- load step -> scale-up decision (goal <= 1 s) and -> the new replicas routed;
- a ramp (0 -> 2 -> 8 -> 2 -> 0 clients, --phase-s each) with every request's status (goal: 0 failed) and
  the replica-seconds used, against a fixed deployment at max_replicas over the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

GOAL_DECISION_S = 1.0
GOAL_ZERO_SHARE_S = 0.100


def start_engine(service_s: float) -> tuple[int, Any]:
    """The fast engine in a thread of its own (its own event loop), behind /n/<node> prefixes; its port."""
    from tests.support import fast_engine

    engine = fast_engine.Engine("bench-model")
    engine.behaviour.delay_s = service_s

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if path.startswith("/n/"):
            rest = path.split("/", 3)
            scope = dict(scope, path="/" + (rest[3] if len(rest) > 3 else ""))
        await engine(scope, receive, send)

    ready: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        _server, port = loop.run_until_complete(fast_engine.serve(app))
        ready["port"], ready["loop"] = port, loop
        started.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True, name="bench-engine").start()
    started.wait(30)
    return int(ready["port"]), engine


class Clients:
    """n threads sending chat requests back to back; statuses and latencies kept."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.ok = 0
        self.failed: list[str] = []
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def _run(self, stop: threading.Event, ready: threading.Event, go: threading.Event) -> None:
        body = {"model": "bench-model", "messages": [{"role": "user", "content": "x"}]}
        with httpx.Client(timeout=180) as c:
            ready.set()
            go.wait()
            while not stop.is_set():
                try:
                    r = c.post(self.url, json=body, headers={"authorization": f"Bearer {self.key}"})
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failed.append(type(exc).__name__)

    def set(self, n: int) -> None:
        """n clients from now: new ones are made first (a client costs ~30 ms to make) and start together, so
        the load steps at the moment this returns."""
        while len(self._threads) > n:
            t, stop = self._threads.pop()
            stop.set()
            t.join(60)
        go = threading.Event()
        readies = []
        while len(self._threads) < n:
            stop, ready = threading.Event(), threading.Event()
            t = threading.Thread(target=self._run, args=(stop, ready, go), daemon=True)
            t.start()
            self._threads.append((t, stop))
            readies.append(ready)
        for ready in readies:
            ready.wait(30)
        go.set()


def routed(c: Any, model: str) -> int:
    return len((c.routing_table() or {}).get("models", {}).get(model, []))


def wait(cond: Any, timeout: float, every: float = 0.01) -> float:
    """Seconds until cond() is true (nan past timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(every)
    return float("nan")


def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from tests.support import controlplane as cpl

    res: dict[str, Any] = {}
    port, _engine = start_engine(args.service_ms / 1000)
    cp = cpl.start(data_dir, interval_s=1.0)
    try:
        with cpl.client(cp) as c:
            c.create_pool(
                "bench", provider="instant", max_nodes=64, provider_config={"endpoint_base": f"http://127.0.0.1:{port}"}
            )
            c.register_model("bench-model", engine="custom", args=["x"])
            policy = {
                "min_replicas": 0,
                "max_replicas": args.max,
                "target_ongoing_requests": 2,
                "upscale_delay_s": 1,
                "downscale_delay_s": 4,
                "scale_to_zero_after_s": 8,
            }
            dep = c.deploy("bench-model", "bench", replicas=None, autoscaling=policy)
            dep_id, key = dep["id"], dep["inference_key"]
            url = cp.data_url + "/v1/chat/completions"  # the data port: what gateways use (docs/API.md)
            c.wait_deployment(dep_id, timeout=60)
            time.sleep(2)

            # 1. request at zero -> answered (several times: zero again after each)
            zero: list[tuple[float, float, float, float]] = []
            # one client made beforehand: a new httpx client costs ~30 ms of its own (its TLS context), which is
            # the gateway's, not the control plane's
            gateway = httpx.Client(timeout=120, trust_env=False)
            for _ in range(args.zero_trials):
                assert c.get_deployment(dep_id)["desired_replicas"] == 0
                t0 = time.time()
                r = gateway.post(
                    url,
                    json={"model": "bench-model", "messages": [{"role": "user", "content": "wake"}]},
                    headers={"authorization": f"Bearer {key}"},
                )
                t_answer = time.time()
                assert r.status_code == 200, r.text
                ev = c.events(entity_id=dep_id, kind="deployment.autoscaled", limit=1)["items"][0]
                decided = float(ev["data"]["at"])
                changed = float(c.routing_table()["changed_at"])
                zero.append((t_answer - t0, decided - t0, changed - decided, t_answer - changed))
                wait(lambda: c.get_deployment(dep_id)["desired_replicas"] == 0, 60, every=0.2)
                wait(lambda: routed(c, "bench-model") == 0, 30, every=0.1)
            gateway.close()
            res["zero"] = zero

            # 2. + 3. the ramp, with the load step measured at its big step
            clients = Clients(url, key)
            samples: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample() -> None:
                with cpl.client(cp) as s:
                    while not stop.is_set():
                        samples.append((time.monotonic(), routed(s, "bench-model")))
                        time.sleep(0.25)

            sampler = threading.Thread(target=sample, daemon=True)
            t_ramp = time.monotonic()
            sampler.start()
            step: dict[str, float] = {}
            for phase, n in enumerate((2, 8, 2, 0)):
                before = c.get_deployment(dep_id)["desired_replicas"]
                clients.set(n)
                t_step = time.monotonic()
                if phase == 1:
                    step["from"] = before
                    step["decision_s"] = wait(lambda b=before: c.get_deployment(dep_id)["desired_replicas"] > b, 30)
                    target = c.get_deployment(dep_id)["desired_replicas"]
                    step["to"] = target
                    step["routed_s"] = wait(lambda t=target: routed(c, "bench-model") >= t, 60)
                time.sleep(max(0.0, args.phase_s - (time.monotonic() - t_step)))
            wait(lambda: routed(c, "bench-model") == 0, 60, every=0.1)
            stop.set()
            sampler.join(5)
            ramp_s = time.monotonic() - t_ramp
            res["step"] = step
            res["ramp_s"] = ramp_s
            res["ok"], res["failed"] = clients.ok, clients.failed
            used = 0.0
            for (t1, n1), (t2, _) in itertools.pairwise(samples):
                used += n1 * (t2 - t1)
            res["replica_s"] = used
            res["fixed_replica_s"] = args.max * ramp_s
            c.delete_deployment(dep_id)
    finally:
        cp.stop()
    return res


def report(args: argparse.Namespace, res: dict[str, Any]) -> None:
    print(f"\n== autoscaling (instant provider, one engine answering after {args.service_ms:g} ms, interval 1 s)")
    z = res["zero"]
    best = min(z, key=lambda x: x[0])
    avg = [sum(x[i] for x in z) / len(z) for i in range(4)]
    ok = "PASS" if avg[0] - args.service_ms / 1000 <= GOAL_ZERO_SHARE_S else "MISS"
    print(
        f"request at zero -> answered       : {avg[0] * 1000:.0f} ms mean of {len(z)} (best {best[0] * 1000:.0f} ms), "
        f"of which the engine {args.service_ms:g} ms   {ok} (control plane's share goal <= "
        f"{GOAL_ZERO_SHARE_S * 1000:.0f} ms)"
    )
    print(
        f"   split (mean): held -> decision {avg[1] * 1000:.0f} ms, decision -> routed {avg[2] * 1000:.0f} ms, "
        f"routed -> answered {avg[3] * 1000:.0f} ms"
    )
    s = res["step"]
    ok = "PASS" if s["decision_s"] <= GOAL_DECISION_S else "MISS"
    print(
        f"load step 2 -> 8 clients ({s['from']:.0f} -> {s['to']:.0f} replicas): decision {s['decision_s']:.2f} s   "
        f"{ok} (goal <= {GOAL_DECISION_S:g} s); new replicas routed {s['routed_s']:.2f} s"
    )
    failed = res["failed"]
    print(
        f"ramp 0 -> 2 -> 8 -> 2 -> 0 clients over {res['ramp_s']:.0f} s: {res['ok']} requests answered, "
        f"{len(failed)} failed   {'PASS' if not failed else 'MISS'} (goal 0)"
    )
    for f in failed[:5]:
        print(f"   failed: {f}")
    used, fixed = res["replica_s"], res["fixed_replica_s"]
    print(
        f"replica-seconds: {used:.0f} autoscaled vs {fixed:.0f} fixed at max_replicas={args.max} "
        f"({used / fixed:.2f}x, saves {100 * (1 - used / fixed):.0f} %)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase-s", type=float, default=12.0, help="seconds of each ramp phase")
    ap.add_argument("--max", type=int, default=4, help="max_replicas")
    ap.add_argument("--service-ms", type=float, default=200.0, help="the engine's time per request")
    ap.add_argument("--zero-trials", type=int, default=3)
    args = ap.parse_args()
    from tests.support import instant

    os.environ["INFERIA_ADAPTERS"] = instant.ENV_ADAPTERS  # before Ray starts: its workers inherit it
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("INFERIA_DASHBOARD", "false")  # no Ray dashboard: less to start on a busy machine
    with tempfile.TemporaryDirectory() as d:
        res = run(args, Path(d))
    report(args, res)


if __name__ == "__main__":
    main()
