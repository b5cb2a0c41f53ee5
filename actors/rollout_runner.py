"""Runs the rolling-update planner inside the DeploymentActor's reconcile (issue 12).

Each round: the roll-outs that are not done (one query), the generation of every replica of the deployments in
`updating` (one query), their saved failure counts and progress times (one query, actors/rollout_progress.py),
then `RolloutPlanner.plan()` per deployment; a track the round changed is written back before its actions run.
RollBack and Finish are executed here (actors/generations.py, one transaction each); CreateReplicas /
RemoveReplica / SetState go back to the reconciler, which executes them like its own (a new replica gets its
target generation's workload).
"""

from __future__ import annotations

import logging
from typing import Any

from actors import generations as gen
from actors import rollout_progress
from actors.deployment_core import Action, SetState
from actors.records import DeploymentRecord
from actors.rollout import Finish, RollBack, RolloutPlanner, RolloutView, Strategy
from actors.states import DeploymentState
from actors.storage import Store

log = logging.getLogger(__name__)
D = DeploymentState


class RolloutRunner:
    def __init__(self, planner: RolloutPlanner) -> None:
        self.planner = planner

    async def run(self, store: Store, deps: dict[str, DeploymentRecord], nodes: list[dict[str, Any]]) -> list[Action]:
        """The actions for the deployments in `updating`; `nodes` get their replica's `generation`."""
        updating = [d for d in deps.values() if d.state == D.UPDATING]
        active = await gen.list_rollouts(store, active_only=True)
        for dep_id in active:  # stopped (or otherwise left `updating`) mid roll-out
            dep = deps.get(dep_id)
            if dep is not None and dep.state != D.UPDATING:
                if await gen.settle(store, dep_id):
                    log.info("deployment %s left updating (%s): roll-out settled", dep_id, dep.state)
                self.planner.forget(dep_id)
        if not updating:
            return []
        gens = await gen.replica_generations(store, [d.id for d in updating])
        saved = await rollout_progress.load(store, [d.id for d in updating])
        by_dep: dict[str, list[dict[str, Any]]] = {d.id: [] for d in updating}
        for n in nodes:
            lst = by_dep.get(n.get("deployment_id") or "")
            if lst is not None:
                n["generation"] = gens.get(n["id"])
                lst.append(n)
        out: list[Action] = []
        for d in updating:
            roll = active.get(d.id)
            if roll is None:  # `updating` without a roll-out to run: nothing to roll
                out.append(SetState(d.id, D.RUNNING))
                continue
            view = RolloutView(
                deployment_id=d.id,
                desired=d.desired_replicas,
                target_generation=d.generation,
                phase=roll.phase,
                strategy=Strategy(roll.max_surge, roll.max_unavailable),
                started_at=roll.started_at.timestamp() if roll.started_at else 0.0,
                deadline_s=roll.deadline_s,
                saved=saved.get(d.id),
            )
            actions = self.planner.plan(view, by_dep[d.id])
            track = self.planner.track(d.id)
            if roll.phase == gen.ROLLING and rollout_progress.changed(saved.get(d.id), track):
                assert track is not None
                await rollout_progress.save(store, d.id, track)  # before a RollBack: it records the count
            for a in actions:
                if isinstance(a, RollBack):
                    log.warning("deployment %s: rolling back generation %d: %s", d.id, d.generation, a.reason)
                    await gen.roll_back(store, d.id, a.reason, automatic=True)
                    self.planner.forget(d.id)
                elif isinstance(a, Finish):
                    new = await gen.finish(store, d.id, a.generation)
                    self.planner.forget(d.id)
                    if new is not None:
                        log.info("deployment %s: generation %d rolled out (%s)", d.id, a.generation, roll.phase)
                        deps[d.id] = new
                else:
                    out.append(a)
        return out
