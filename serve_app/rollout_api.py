"""Rolling updates in the API (issue 12): PATCH /v1/deployments/{id} with model/args/env/image starts a new
generation, POST /v1/deployments/{id}/rollback goes back, GET shows the roll-out's progress."""

from __future__ import annotations

from typing import Any

from actors import generations as gen
from actors.records import DeploymentRecord
from actors.rollout import progress
from actors.storage import Store
from serve_app.errors import ApiError
from serve_app.schemas import SPEC_PATCH_FIELDS, DeploymentPatch, StrategyIn


def wants_update(body: DeploymentPatch) -> bool:
    return any(f in body.model_fields_set for f in SPEC_PATCH_FIELDS)


async def _changes(store: Store, d: DeploymentRecord, body: DeploymentPatch) -> dict[str, Any]:
    """The generation fields the body changes (model resolved to its id), checked against the engine."""
    fields = body.model_fields_set
    out: dict[str, Any] = {}
    target = await gen.get_generation(store, d.id, d.generation) or gen.GenerationSpec(d.id, d.generation, d.model_id)
    model_id = target.model_id
    if "model" in fields:
        assert body.model is not None
        found = await store.get_model(body.model)
        if found is None:
            raise ApiError(404, "model_not_found", f"model {body.model!r} is not in the registry", "model")
        if found.id != model_id:
            # another model: its own arguments, environment and image, unless given here too
            out.update(model_id=found.id, args=None, env=None, image=None)
            model_id = found.id
            target = gen.GenerationSpec(d.id, d.generation, found.id)
    model = await store.get_model(model_id)
    if model is None:
        raise ApiError(409, "model_not_found", f"the deployment's model {model_id} is gone", "model")
    # only what differs from what the target generation runs (the same values again are no change)
    if "args" in fields:
        if model.engine == "custom" and not body.args:
            raise ApiError(422, "invalid_request", "args: the command line is required for engine custom", "args")
        if body.args != (target.args if target.args is not None else model.args):
            out["args"] = body.args
    if "env" in fields and body.env is not None and any((target.env or {}).get(k) != v for k, v in body.env.items()):
        out["env"] = {**(target.env or {}), **body.env}
    if "image" in fields and body.image != (target.image or model.image):
        out["image"] = body.image
    return out


async def start_update(store: Store, d: DeploymentRecord, body: DeploymentPatch) -> DeploymentRecord:
    """A new generation with the changes; a running deployment goes `updating` and rolls (202)."""
    changes = await _changes(store, d, body)
    strategy = body.strategy or StrategyIn()
    try:
        rec, _made = await gen.start_generation(
            store,
            d.id,
            changes,
            max_surge=strategy.max_surge,
            max_unavailable=strategy.max_unavailable,
            deadline_s=body.progress_deadline_s,
        )
    except gen.UpdateRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.field) from exc
    return rec


async def rollback(store: Store, d: DeploymentRecord, strategy: StrategyIn | None) -> DeploymentRecord:
    s = strategy or StrategyIn()
    try:
        return await gen.rollback(store, d.id, max_surge=s.max_surge, max_unavailable=s.max_unavailable)
    except gen.UpdateRefused as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.field) from exc


async def preload(store: Store, dep_ids: list[str] | None) -> tuple[dict[str, gen.RolloutRecord], dict[str, int]]:
    """The roll-outs and replica generations of these deployments (None: all), two queries in all."""
    return await gen.list_rollouts(store, dep_ids), await gen.replica_generations(store, dep_ids)


def describe(
    out: dict[str, Any],
    d: DeploymentRecord,
    nodes: list[dict[str, Any]],
    loaded: tuple[dict[str, gen.RolloutRecord], dict[str, int]],
) -> None:
    """Adds to a deployment's answer: each replica's generation, `current_generation` and `rollout`."""
    rollouts, gens = loaded
    for r in out.get("replicas") or []:
        r["generation"] = gens.get(r["id"], d.generation)
    roll = rollouts.get(d.id)
    out["current_generation"] = roll.current_generation if roll is not None else d.generation
    if roll is None:
        out["rollout"] = None
        return
    mine = [{**n, "generation": gens.get(n["id"], d.generation)} for n in nodes if n.get("deployment_id") == d.id]
    counts = progress(mine, d.generation)
    out["rollout"] = {
        "phase": roll.phase,
        "target_generation": d.generation,
        "current_generation": roll.current_generation,
        "strategy": {"max_surge": roll.max_surge, "max_unavailable": roll.max_unavailable},
        "progress_deadline_s": roll.deadline_s,
        **counts.to_dict(),
        "started_at": roll.started_at,
        "finished_at": roll.finished_at,
        "failures": roll.failures,
        "last_failure": roll.last_failure,
        "last_failure_at": roll.last_failure_at,
    }
