"""Applies the autoscaler (actors/autoscaler.py) inside the DeploymentActor's reconcile round.

Each round, for each active deployment with a policy: gather its signals (the proxy's requests in flight and
held, summed over the API replicas by the inventory's `load()`; the engines' own running/waiting counts from
the heartbeats), `Autoscaler.decide()`, and when the target changes write it as a manual scale does, with a
`deployment.autoscaled` event carrying the inputs, in one compare-and-set (a manual scale or a removed policy in
between wins). The autoscaler's timers and last decision are kept in `model_deployments.autoscaler_state`, so
a restarted actor continues where it was. Times are wall-clock seconds (they outlive the process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from actors.autoscaler import Autoscaler, AutoscalingPolicy, Decision, Signals
from actors.records import DeploymentRecord
from actors.states import DEPLOYMENT_ACTIVE
from actors.storage import Store

log = logging.getLogger(__name__)

# an unchanged decision's state is written at most this often (its reason names a growing wait)
SAVE_EVERY_S = 5.0
# between reconcile rounds the proxies' load is looked at this often for what must not wait for the next
# round (a request at zero, a panic); `urgent()` then wakes the round
URGENT_POLL_S = 0.1
ENGINE_COUNTED = frozenset({"ready"})  # nodes whose engine queue counts (draining ones are leaving)


def engine_load(node: dict[str, Any]) -> tuple[float, float]:
    """(running, waiting) the node's engine reported in its last heartbeat (0, 0 without metrics)."""
    m = node.get("metrics") or {}
    return float(m.get("engine_running") or 0.0), float(m.get("engine_waiting") or 0.0)


def annotate_load(nodes: list[dict[str, Any]], node_ongoing: dict[str, int]) -> None:
    """Put each node's load (proxy in flight + engine running + waiting) in `load`: the planner drains the
    least-loaded replica when it scales down."""
    for n in nodes:
        running, waiting = engine_load(n)
        n["load"] = max(float(node_ongoing.get(n["id"], 0)), running + waiting)


class AutoscaleRunner:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._scalers: dict[str, Autoscaler] = {}
        self._saved: dict[str, tuple[dict[str, Any], str, float]] = {}  # dep -> (timers, reason, when)
        self._targets: dict[str, int] = {}  # dep -> its target after the last round (what urgent() compares)
        self.decisions = 0

    def signals(self, dep_id: str, nodes: list[dict[str, Any]], deployment_load: dict[str, Any]) -> Signals:
        proxy = deployment_load.get(dep_id) or {}
        running = waiting = 0.0
        for n in nodes:
            if n.get("deployment_id") == dep_id and n.get("state") in ENGINE_COUNTED:
                r, w = engine_load(n)
                running, waiting = running + r, waiting + w
        return Signals(
            proxy_ongoing=float(proxy.get("ongoing") or 0),
            proxy_queued=float(proxy.get("queued") or 0),
            engine_running=running,
            engine_waiting=waiting,
            last_request_at=proxy.get("last_request_at"),
        )

    def scaler(self, dep: DeploymentRecord, now: float) -> Autoscaler | None:
        if not dep.autoscaling:
            self.forget(dep.id)
            return None
        policy = AutoscalingPolicy.from_dict(dep.autoscaling)
        a = self._scalers.get(dep.id)
        if a is None:
            a = self._scalers[dep.id] = Autoscaler(policy)
            a.restore((dep.autoscaler_state or {}).get("timers"), now)
        elif a.policy != policy:
            a.set_policy(policy)
            if dep.autoscaler_state is None:  # the policy was set again: its timers start over
                a.restore(None, now)
        return a

    def forget(self, dep_id: str) -> None:
        self._scalers.pop(dep_id, None)
        self._saved.pop(dep_id, None)
        self._targets.pop(dep_id, None)

    def watching(self) -> bool:
        return bool(self._targets)

    def urgent(self, load: dict[str, Any]) -> list[str]:
        """The deployments whose proxy load cannot wait for the next round: a request waiting at zero, or a
        load of panic_factor x their capacity. Pure (no timer moves): the round decides and writes."""
        out: list[str] = []
        dep_load = load.get("deployments") or {}
        for dep_id, current in self._targets.items():
            a = self._scalers.get(dep_id)
            proxy = dep_load.get(dep_id)
            if a is None or not proxy:
                continue
            demand = float(proxy.get("ongoing") or 0) + float(proxy.get("queued") or 0)
            if a.wanted(demand) <= current or demand <= 0:
                continue
            if current == 0 or demand >= a.policy.panic_factor * current * a.policy.target_ongoing_requests:
                out.append(dep_id)
        return out

    async def run(
        self,
        store: Store,
        deps: dict[str, DeploymentRecord],
        nodes: list[dict[str, Any]],
        load: dict[str, Any],
    ) -> None:
        """Decide for every autoscaled deployment; moved targets are written and replaced in `deps`."""
        now = self.clock()
        dep_load = load.get("deployments") or {}
        for dep_id in [d for d in self._scalers if d not in deps]:
            self.forget(dep_id)
        for dep in list(deps.values()):
            if dep.state not in DEPLOYMENT_ACTIVE or dep.delete_requested:
                continue
            a = self.scaler(dep, now)
            if a is None:
                continue
            try:
                d = a.decide(dep.desired_replicas, self.signals(dep.id, nodes, dep_load), now)
                updated = await self._record(store, dep, a, d, now)
            except Exception:
                log.exception("deployment %s: autoscaling failed", dep.id)
                continue
            if updated is not None:
                deps[dep.id] = updated
            self._targets[dep.id] = deps[dep.id].desired_replicas
        for dep_id in [d for d in self._targets if d not in self._scalers]:
            self._targets.pop(dep_id, None)

    async def _record(
        self, store: Store, dep: DeploymentRecord, a: Autoscaler, d: Decision, now: float
    ) -> DeploymentRecord | None:
        timers = a.state()
        state = {"timers": timers, "last": d.to_dict()}
        if d.changed:
            event = {**d.to_dict(), "policy": dep.autoscaling}
            updated = await store.save_autoscaler(
                dep.id, state, from_replicas=d.previous, to_replicas=d.desired, event=event
            )
            if updated is None:  # a manual scale or a policy change came first: decide again next round
                self._scalers.pop(dep.id, None)
                return None
            self.decisions += 1
            log.info("deployment %s autoscaled %d -> %d: %s", dep.id, d.previous, d.desired, d.reason)
            self._saved[dep.id] = (timers, d.reason, now)
            return updated
        saved = self._saved.get(dep.id)
        if saved is not None and saved[0] == timers and (saved[1] == d.reason or now - saved[2] < SAVE_EVERY_S):
            return None
        if saved is None and dep.autoscaler_state and dep.autoscaler_state.get("timers") == timers:
            last = dep.autoscaler_state.get("last") or {}
            if last.get("reason") == d.reason:
                self._saved[dep.id] = (timers, d.reason, now)
                return None
        self._saved[dep.id] = (timers, d.reason, now)
        return await store.save_autoscaler(dep.id, state)
