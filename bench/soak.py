"""A seeded, bounded chaos soak: nothing leaks, everything converges.

    .venv/bin/python -m bench.soak --seed 1 --seconds 120 [--restarts 2] [--instant-max 8] [--local-max 2]

Runs `inferia-orch up` as a separate process (own data dir and ports, the instant test provider registered)
with two pools: one on the instant provider (tests/support/instant.py) whose fault plan makes provider calls
fail (HTTP 429/500/503, timeouts, replies lost after the create, a failing `list_nodes`), and one on the real
local provider (agent + fake engine processes). For `--seconds` it picks, with a random generator seeded by
`--seed`, one operation after another: scale either deployment up or down, kill an instant instance behind
the control plane's back or make it report failed, SIGKILL a local node's agent or its engine, SIGKILL the
process of an actor (a pool actor, `inventory`, `deployments`), and `--restarts` times crash the whole
control plane (every process SIGKILLed at once, as a machine crash) and start it again. Then it waits until
the invariants of tests/support/invariants.py hold (no instance at a provider that PostgreSQL does not hold
alive, no alive row the provider lacks, no node created twice, every deployment at its desired replicas and
in the routing table), stops with `inferia-orch down` and looks for any process left.

Prints: operations, faults injected (by kind, the provider's own counted from its fault plan), leaks found
(the goal is 0), seconds to converge after the last fault, processes left after `down`. Exit status 1 when
anything leaked, did not converge or was left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import controlplane as cpl
from tests.support import instant
from tests.support.crash import ControlPlaneProcess, actor_processes, describe
from tests.support.invariants import local_instances, violations, wait_converged

# each new instant node: its first provision(s) fail, then it is created; deprovision and status likewise
PROVISION_FAULTS = ["503", "timeout", "lost_reply", "429", "500"]
DEPROVISION_FAULTS = ["503", "timeout", "lost_reply", "500"]
STATUS_FAULTS = ["500", "timeout"]
LIST_FAULTS = ["500", "timeout", "503"]
ACTORS = ("PoolActor", "InventoryActor", "DeploymentActor")


@dataclass
class Soak:
    seed: int
    seconds: float
    restarts: int = 1
    instant_max: int = 6
    local_max: int = 2
    interval_s: float = 1.0
    figures: dict[str, Any] = field(default_factory=dict)
    ops: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)

    def run(self, data_dir: Path) -> dict[str, Any]:
        rng = random.Random(self.seed)
        cp = ControlPlaneProcess(data_dir, interval_s=self.interval_s)
        t_start = time.monotonic()
        try:
            self.figures["up_s"] = round(cp.start(), 2)
            self._setup(cp, rng)
            restart_at = sorted(rng.uniform(0.25, 0.75) * self.seconds for _ in range(self.restarts))
            last_fault = self._chaos(cp, rng, restart_at)
            with cp.client() as api:
                self._scale(api, self.dep_instant, rng.randint(1, self.instant_max))
                self._scale(api, self.dep_local, rng.randint(1, self.local_max))
                t_last_op = time.monotonic()
                try:
                    self._converge(api, data_dir, 180)
                    self.figures["converge_after_last_fault_s"] = round(time.monotonic() - last_fault, 2)
                    self.figures["converge_after_last_op_s"] = round(time.monotonic() - t_last_op, 2)
                    self.figures["converged"] = True
                except AssertionError as exc:
                    self.figures["converged"] = False
                    self.figures["not_converged"] = str(exc)
                final = violations(api, data_dir, self.pools, self.deps, self.local) + self._broken(data_dir)
                self.figures["leaks"] = sum(1 for v in final if "leak" in v or "not at the provider" in v)
                self.figures["violations"] = final
                self.figures["provider_faults"] = dict(self._provider_faults(data_dir))
                self.figures["instant_creates"] = len(
                    [1 for op, _ in instant.journal(data_dir, self.pool_instant) if op == "create"]
                )
            self.figures["down_s"] = round(cp.stop(), 2)
            left = cp.leftovers()
            self.figures["left_after_down"] = describe(left)
            self.figures["instances_after_down"] = len(instant.instances(data_dir, self.pool_instant))
        finally:
            cp.kill_everything()
        self.figures["operations"] = sum(self.ops.values())
        self.figures["by_operation"] = dict(self.ops)
        injected = {k: v for k, v in self.ops.items() if k.startswith(("kill", "fail", "crash"))}
        injected.update({f"provider {k}": v for k, v in self.figures["provider_faults"].items()})
        self.figures["faults_injected"] = sum(injected.values())
        self.figures["faults_by_kind"] = injected
        self.figures["total_s"] = round(time.monotonic() - t_start, 1)
        return self.figures

    def _converge(self, api: Any, data_dir: Path, timeout: float) -> None:
        """The invariants hold and no fault is still unnoticed: an instance that reports failed or a local
        node without its engine looks "ready" to the invariants until the control plane notices it."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(1.0, deadline - time.monotonic())
            wait_converged(api, data_dir, self.pools, self.deps, left, self.local)
            broken = self._broken(data_dir)
            if not broken:
                return
            if time.monotonic() >= deadline:
                raise AssertionError("faults never noticed: " + "; ".join(broken))
            time.sleep(0.25)

    def _broken(self, data_dir: Path) -> list[str]:
        out = [
            f"instant instance {n} reports failed and is still there"
            for n, rec in instant.instances(data_dir, self.pool_instant).items()
            if rec.get("health") == "failed"
        ]
        for node in local_instances(data_dir, self.pool_local):
            agent, engines = cpl.node_pids(data_dir, node)
            if agent and not engines:
                out.append(f"local node {node}: agent {agent} runs without its engine")
        return out

    # ------------------------------------------------------------------ set-up
    def _setup(self, cp: ControlPlaneProcess, rng: random.Random) -> None:
        tag = uuid.uuid4().hex[:6]
        faults = {
            "provision": rng.sample(PROVISION_FAULTS, rng.randint(1, 3)),
            "deprovision": rng.sample(DEPROVISION_FAULTS, rng.randint(1, 2)),
            "status": rng.sample(STATUS_FAULTS, 1),
            "list": rng.sample(LIST_FAULTS, 2),
        }
        self.figures["fault_plan"] = faults
        with cp.client() as api:
            api.register_model(**cpl.fake_model(f"soak-{tag}"))
            pi = api.create_pool(
                f"soak-i-{tag}",
                provider="instant",
                max_nodes=self.instant_max + 4,
                provider_config={"latency_s": 0.2, "deprovision_latency_s": 0.1, "timeout_s": 0.5, "faults": faults},
            )
            pl = api.create_pool(f"soak-l-{tag}", provider="local", max_nodes=self.local_max + 2)
            self.pool_instant, self.pool_local = pi["id"], pl["id"]
            self.dep_instant = api.deploy(f"soak-{tag}", pi["name"], replicas=rng.randint(1, self.instant_max))["id"]
            self.dep_local = api.deploy(f"soak-{tag}", pl["name"], replicas=1)["id"]
        self.pools = [self.pool_instant, self.pool_local]
        self.deps = [self.dep_instant, self.dep_local]
        self.local = frozenset({self.pool_local})

    # ------------------------------------------------------------------ chaos
    def _chaos(self, cp: ControlPlaneProcess, rng: random.Random, restart_at: list[float]) -> float:
        t0 = time.monotonic()
        last_fault = t0
        ops = [
            ("scale instant", 4),
            ("scale local", 2),
            ("kill instant instance", 2),
            ("fail instant instance", 2),
            ("kill local agent", 1),
            ("kill local engine", 1),
            ("kill actor", 1),
        ]
        names, weights = zip(*ops, strict=True)
        while (now := time.monotonic()) - t0 < self.seconds:
            if restart_at and now - t0 >= restart_at[0]:
                restart_at.pop(0)
                cp.crash()
                self._note("crash control plane", "all processes SIGKILLed")
                cp.start()
                last_fault = time.monotonic()
                t0 += last_fault - now  # the restart's time is not chaos time: every restart happens
                continue
            op = rng.choices(names, weights)[0]
            try:
                done = self._do(cp, rng, op)
            except Exception as exc:  # the API may be between replicas; the op did not happen
                self._note("skipped " + op, repr(exc)[:120], count=False)
                done = False
            if done and not op.startswith("scale"):
                last_fault = time.monotonic()
            time.sleep(rng.uniform(0.2, 1.2))
        return last_fault

    def _do(self, cp: ControlPlaneProcess, rng: random.Random, op: str) -> bool:
        d = cp.data_dir
        if op.startswith("scale"):
            local = op == "scale local"
            dep, top = (self.dep_local, self.local_max) if local else (self.dep_instant, self.instant_max)
            with cp.client() as api:
                self._scale(api, dep, rng.randint(0, top))
            return True
        if op in ("kill instant instance", "fail instant instance"):
            nodes = sorted(instant.instances(d, self.pool_instant))
            if not nodes:
                return False
            node = rng.choice(nodes)
            with contextlib.suppress(KeyError):
                if op == "kill instant instance":
                    instant.kill(d, self.pool_instant, node)
                else:
                    instant.set_health(d, self.pool_instant, node, "failed")
            self._note(op, node)
            return True
        if op in ("kill local agent", "kill local engine"):
            nodes = sorted(p.name for p in (d / "nodes" / self.pool_local).glob("node-*"))
            rng.shuffle(nodes)
            for node in nodes:
                agent, engines = cpl.node_pids(d, node)
                victims = [agent] if op == "kill local agent" and agent else engines[:1]
                if victims and victims[0]:
                    cpl.kill_all([int(victims[0])])
                    self._note(op, node)
                    return True
            return False
        if op == "kill actor":
            cls = rng.choice(ACTORS)
            pids = sorted(actor_processes(cp.remember(), cls))
            if not pids:
                return False
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(pids), signal.SIGKILL)
            self._note(f"kill actor {cls}", "")
            return True
        raise ValueError(op)

    def _scale(self, api: Any, dep_id: str, n: int) -> None:
        api.scale_deployment(dep_id, n)
        self._note("scale", f"{dep_id} -> {n}")

    def _note(self, op: str, what: str, count: bool = True) -> None:
        if count:
            self.ops[op.split(" ->")[0]] += 1
        self.log.append(f"{time.strftime('%H:%M:%S')} {op} {what}")

    def _provider_faults(self, data_dir: Path) -> Counter[str]:
        """Faults the instant provider injected: per node and operation, the calls made that its plan failed
        (the plan is the k-th call fails with the k-th kind; the counts are persisted beside the instances)."""
        plan: dict[str, list[str]] = self.figures["fault_plan"]
        out: Counter[str] = Counter()
        for f in instant.pool_dir(data_dir, self.pool_instant).glob(".calls.*"):
            _, op, _key = f.name.split(".", 3)[1:]
            with contextlib.suppress(ValueError, OSError):
                calls = int(f.read_text())
                for kind in plan.get(op, [])[:calls]:
                    out[f"{op} {kind}"] += 1
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the chaos phase")
    ap.add_argument("--restarts", type=int, default=1, help="whole-control-plane crashes + restarts")
    ap.add_argument("--instant-max", type=int, default=8, help="most replicas on the instant pool")
    ap.add_argument("--local-max", type=int, default=2, help="most replicas on the local pool")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object too")
    args = ap.parse_args(argv)
    # a new temporary data dir, never named on this command line: the crash kills every process naming it
    data_dir = Path(tempfile.mkdtemp(prefix="inferia-soak-"))
    soak = Soak(args.seed, args.seconds, args.restarts, args.instant_max, args.local_max)
    figures = soak.run(data_dir)
    report(figures)
    if args.json:
        print(json.dumps(figures, default=str))
    return 0 if ok(figures) else 1


def ok(figures: dict[str, Any]) -> bool:
    return bool(
        figures.get("converged")
        and figures.get("leaks") == 0
        and not figures.get("violations")
        and not figures.get("left_after_down")
        and figures.get("instances_after_down") == 0
    )


def report(f: dict[str, Any]) -> None:
    print("\nchaos soak")
    print(f"  operations                     {f['operations']}  {f['by_operation']}")
    print(f"  faults injected                {f['faults_injected']}  {f['faults_by_kind']}")
    print(f"  leaks found                    {f.get('leaks')}  (goal 0)")
    print(f"  converged                      {f.get('converged')}  {f.get('not_converged', '')}")
    print(f"  converge after last fault (s)  {f.get('converge_after_last_fault_s')}")
    print(f"  converge after last op (s)     {f.get('converge_after_last_op_s')}")
    print(f"  instant creates                {f.get('instant_creates')}")
    print(f"  processes left after down      {len(f.get('left_after_down') or [])}  {f.get('left_after_down') or ''}")
    print(f"  instances left after down      {f.get('instances_after_down')}")
    print(f"  up / down / total (s)          {f.get('up_s')} / {f.get('down_s')} / {f.get('total_s')}")
    print(f"  result                         {'OK' if ok(f) else 'FAILED'}")


if __name__ == "__main__":
    sys.exit(main())
