"""The control plane on a Ray cluster of three nodes (a head and two workers, all on this machine), and the
loss of a worker while work is in flight.

Run as its own process (a test process already owns a Ray session):

    .venv/bin/python -m tests.support.ray_cluster_scenario [--data-dir DIR] [--pools 4]

1. Ray's `cluster_utils.Cluster` starts the head (fast node-death detection through `_system_config`, the
   only test-specific setting); the control plane joins it through `ray_address`, so the inventory, the
   deployments actor and Serve come up on the head. Two worker nodes join afterwards.
2. Instant pools (provisioning takes `latency_s`) with one deployment each; the pool actors spread over the
   nodes (`actors.runtime.POOL_SCHEDULING_STRATEGY`), at least one per worker.
3. Every deployment scales up; while provider calls of a worker's pools are in flight (a node provisioning
   in Postgres, no instance at the provider yet), that worker dies: SIGKILL of its raylet and every process
   under it, the pool actors included, like a machine that dies.
4. Waits for: Ray marking the node dead, every affected pool actor alive on a surviving node and answering
   (rebuilt from Postgres), and `invariants.wait_converged` over all pools and deployments (nothing lost,
   nothing leaked, no node created twice).

Prints one line `FIGURES {json}`; exits 1 with `SCENARIO FAILED: ...` on a failed check. Always tears down
the control plane and the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
OBJECT_STORE_BYTES = 80 * MIB
# the head only: a killed node is declared dead after ~3 missed checks 0.5 s apart (default: 5 x 3 s)
HEAD_SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}
LATENCY_S = 1.0  # each provision: long enough to lose the worker in the middle of one
REPLICAS_BEFORE = 2
REPLICAS_AFTER = 4


class ScenarioFailed(Exception):
    pass


def _env() -> None:
    """Set before Ray starts: every node's raylet, and so every actor, inherits it."""
    from tests.support import instant

    os.environ["INFERIA_ADAPTERS"] = instant.ENV_ADAPTERS
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_DEDUP_LOGS"] = "0"
    paths = [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def wait_until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as exc:  # the API or an actor may be restarting
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise ScenarioFailed(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def pool_actor_nodes() -> dict[str, tuple[str, str]]:
    """pool id -> (actor state, node id) of every pool actor, from the GCS actor table."""
    import ray

    out: dict[str, tuple[str, str]] = {}
    for info in ray._private.state.actors().values():  # no dashboard, so no ray.util.state
        name = str(info.get("Name") or "")
        if info.get("ActorClassName") == "PoolActor" and name.startswith("pool:"):
            out[name.removeprefix("pool:")] = (str(info["State"]), str(info["Address"]["NodeID"]))
    return out


def start_head() -> Any:
    """The head node; a second try when it does not register in time (Ray allows 30 s; a loaded machine)."""
    import psutil
    from ray.cluster_utils import Cluster

    for attempt in (1, 2):
        cluster = Cluster(initialize_head=False)
        try:
            cluster.add_node(
                num_cpus=1,
                object_store_memory=OBJECT_STORE_BYTES,
                include_dashboard=False,
                _system_config=HEAD_SYSTEM_CONFIG,
            )
            return cluster
        except Exception as exc:
            if attempt == 2:
                raise
            print(f"head node did not start ({exc}); stopping what it started, trying again", flush=True)
            # nothing else runs yet: every child of this process belongs to the failed head
            kids = psutil.Process().children(recursive=True)
            for kid in kids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    kid.kill()
            psutil.wait_procs(kids, timeout=10)
    raise AssertionError("unreachable")


def kill_node(cluster: Any, node: Any) -> int:
    """The machine dies: SIGKILL its raylet and, in the same instant, every process under it (the pool actors
    with their in-flight provider calls), then let cluster_utils reap the rest. `remove_node` alone kills only
    the raylet and its agents, and an actor process lingers long enough to finish what it was doing."""
    import psutil
    from ray._private import ray_constants

    procs: list[psutil.Process] = []
    for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []):
        try:
            raylet = psutil.Process(info.process.pid)
            procs += [raylet, *raylet.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    cluster.remove_node(node, allow_graceful=False)
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


def node_alive(node_id: str) -> bool:
    import ray

    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


def run(data_dir: Path, n_pools: int, figures: dict[str, Any]) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from actors.runtime import get_pool_actor
    from controller.boot import ControlPlane
    from controller.client import Client
    from controller.services import free_port
    from tests.support import instant, invariants
    from tests.support.controlplane import fake_model, settings_for

    t0 = time.monotonic()
    cluster: Cluster | None = None
    cp: ControlPlane | None = None
    try:
        cluster = start_head()
        assert cluster.head_node is not None
        head_id = cluster.head_node.node_id
        figures["head_start_s"] = round(time.monotonic() - t0, 2)

        settings = settings_for(data_dir, free_port())
        settings.ray_address = cluster.address
        cp = ControlPlane(settings, keep_nodes=False)
        t = time.monotonic()
        cp.start()
        figures["control_plane_start_s"] = round(time.monotonic() - t, 2)

        t = time.monotonic()
        workers = [cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE_BYTES) for _ in range(2)]
        cluster.wait_for_nodes()
        by_node = {w.node_id: w for w in workers}
        figures["workers_join_s"] = round(time.monotonic() - t, 2)
        role = {head_id: "head", **{w.node_id: f"worker{i + 1}" for i, w in enumerate(workers)}}

        with Client(cp.api_url, token=cp.api_token, timeout=60) as api:
            # ---------------------------------------------------------------- pools and deployments
            t = time.monotonic()
            tag = uuid.uuid4().hex[:6]
            model = f"rc-{tag}"
            api.register_model(**fake_model(model))
            pools = [
                api.create_pool(
                    f"rc-{tag}-{i}", provider="instant", max_nodes=16, provider_config={"latency_s": LATENCY_S}
                )["id"]
                for i in range(n_pools)
            ]
            deps = [api.deploy(model, pool_id, replicas=REPLICAS_BEFORE)["id"] for pool_id in pools]
            for dep_id in deps:
                api.wait_deployment(dep_id, timeout=60)
            figures["setup_s"] = round(time.monotonic() - t, 2)

            # ---------------------------------------------------------------- placement
            placed = pool_actor_nodes()
            before = {p: placed[p][1] for p in pools}
            figures["placement_before"] = {role.get(n, n[:8]): sum(1 for v in before.values() if v == n) for n in role}
            core = {name: _actor_node(name) for name in ("inventory", "deployments")}
            if any(n != head_id for n in core.values()):
                raise ScenarioFailed(
                    f"inventory/deployments not on the head: { {k: role.get(v) for k, v in core.items()} }"
                )
            on_workers = {n: [p for p, pn in before.items() if pn == n] for n in by_node}
            if not all(on_workers.values()):
                raise ScenarioFailed(
                    f"pool actors did not spread over the workers: {figures['placement_before']} "
                    "(actors.runtime.POOL_SCHEDULING_STRATEGY)"
                )
            victim_id = max(on_workers, key=lambda n: len(on_workers[n]))
            affected = on_workers[victim_id]
            figures["victim"] = role[victim_id]
            figures["affected_pools"] = len(affected)

            # ---------------------------------------------------------------- scale up, then lose the worker
            for dep_id in deps:
                api.scale_deployment(dep_id, REPLICAS_AFTER)

            def provisioning_in_affected() -> list[str]:
                """Nodes whose provider call is still running: provisioning, no instance at the provider yet."""
                out = []
                for p in affected:
                    provisioning = [n["id"] for n in api.pool_nodes(p) if n["state"] == "provisioning"]
                    if provisioning:
                        created = instant.instances(data_dir, p)
                        out += [n for n in provisioning if n not in created]
                return out

            in_flight = wait_until(
                provisioning_in_affected, 20, "a provider call in flight in an affected pool", every=0.01
            )
            figures["in_flight_at_kill"] = len(in_flight)
            t_kill = time.monotonic()
            figures["killed_processes"] = kill_node(cluster, by_node[victim_id])
            figures["remove_node_s"] = round(time.monotonic() - t_kill, 2)

            wait_until(lambda: not node_alive(victim_id), 30, "Ray to mark the removed node dead")
            figures["node_dead_after_s"] = round(time.monotonic() - t_kill, 2)

            def affected_alive_elsewhere() -> bool:
                now = pool_actor_nodes()
                return all(now[p][0] == "ALIVE" and now[p][1] != victim_id for p in affected)

            wait_until(affected_alive_elsewhere, 60, "the affected pool actors alive on a surviving node")
            figures["actors_alive_after_s"] = round(time.monotonic() - t_kill, 2)
            ray.get([get_pool_actor(p).ready.remote() for p in affected], timeout=60)
            figures["actors_ready_after_s"] = round(time.monotonic() - t_kill, 2)

            after = pool_actor_nodes()
            figures["placement_after"] = {
                role.get(n, n[:8]): sum(1 for p in pools if after[p][1] == n) for n in role if n != victim_id
            }
            figures["affected_restarted_on"] = sorted(role.get(after[p][1], "?") for p in affected)
            # rebuilt from Postgres: each restarted pool actor knows the nodes that were ready before the loss
            rebuilt = {p: ray.get(get_pool_actor(p).summary.remote(), timeout=30)["nodes"] for p in affected}
            figures["rebuilt_nodes"] = sum(len(n) for n in rebuilt.values())
            short = {p: len(n) for p, n in rebuilt.items() if len(n) < REPLICAS_BEFORE}
            if short:
                raise ScenarioFailed(f"restarted pool actors lost nodes (nodes known per pool): {short}")

            # ---------------------------------------------------------------- nothing lost, nothing twice
            invariants.wait_converged(api, data_dir, pools, deps, timeout=60)
            figures["converged_after_s"] = round(time.monotonic() - t_kill, 2)
            # what became of the nodes whose provisioning the lost worker was running: finished and adopted
            # by the restarted actor (ready), or never created and replaced (terminated: "vanished")
            final = {n["id"]: n for p in affected for n in api.pool_nodes(p, include_terminated=True)}
            outcome: dict[str, int] = {}
            for node_id in in_flight:
                state = str(final.get(node_id, {}).get("state", "unknown"))
                outcome[state] = outcome.get(state, 0) + 1
            figures["in_flight_outcome"] = outcome
            figures["terminated_nodes"] = sum(
                1 for p in pools for n in api.pool_nodes(p, include_terminated=True) if n["state"] == "terminated"
            )
            totals = [invariants.provider_summary(data_dir, p) for p in pools]
            figures["instances"] = sum(s["instances"] for s in totals)
            figures["creates"] = sum(s["creates"] for s in totals)
            figures["deletes"] = sum(s["deletes"] for s in totals)
            want = REPLICAS_AFTER * len(pools)
            if figures["instances"] != want:
                raise ScenarioFailed(f"{figures['instances']} instances at the provider, expected {want}")
            for p in pools:
                creates = [n for op, n in instant.journal(data_dir, p) if op == "create"]
                if len(creates) != len(set(creates)):
                    raise ScenarioFailed(f"pool {p}: a node was created twice: {creates}")
        figures["scenario_s"] = round(time.monotonic() - t0, 2)
    finally:
        t = time.monotonic()
        if cp is not None:
            try:
                cp.stop()
            except Exception as exc:  # keep tearing down
                print(f"teardown: cp.stop failed: {exc!r}", file=sys.stderr)
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        figures["teardown_s"] = round(time.monotonic() - t, 2)


def _actor_node(name: str) -> str:
    import ray

    for info in ray._private.state.actors().values():
        if info.get("Name") == name and info.get("State") == "ALIVE":
            return str(info["Address"]["NodeID"])
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory, removed after")
    parser.add_argument("--pools", type=int, default=4)
    args = parser.parse_args(argv)
    _env()
    signal.signal(signal.SIGTERM, _on_sigterm)
    own_dir = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="inferia-raycluster-")) if own_dir else args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"pools": args.pools}
    code = 0
    try:
        run(data_dir, args.pools, figures)
    except (ScenarioFailed, AssertionError) as exc:
        print(f"SCENARIO FAILED: {exc}", flush=True)
        code = 1
    except BaseException as exc:
        print(f"SCENARIO FAILED: {type(exc).__name__}: {exc}", flush=True)
        code = 1
    finally:
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    figures["ok"] = code == 0
    print("FIGURES " + json.dumps(figures, sort_keys=True), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
