"""Generations of a deployment and the state of its roll-out, in PostgreSQL (migration 006, issue 12).

A change of what a deployment runs (model, arguments, environment, image) is a new generation: its spec is a
row of `deployment_generations`; `model_deployments.generation` is the target generation and the replicas
carry the generation they were created with (`replicas.generation`). `deployment_rollouts` holds the current
generation (the last one that ran in full), the strategy and the phase, so an update resumes after a restart.
The route (the model name clients use) stays `model_deployments.model_id`'s name: a generation may run another
registered model under it, so clients never see the update.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from actors.records import DeploymentRecord, ModelRecord, workload_for
from actors.states import DeploymentState
from actors.storage import _DEP_COLS, Store, _dep

D = DeploymentState
ROLLING, ROLLING_BACK, DONE = "rolling", "rolling_back", "done"
# states in which a change of what runs is rolled out; in STOPPED/FAILED it only takes effect at the next start
ROLL_STATES = (D.RUNNING, D.DEGRADED, D.UPDATING)
SPEC_ONLY_STATES = (D.STOPPED, D.FAILED)
SPEC_FIELDS = ("model_id", "args", "env", "image")


class UpdateRefused(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


@dataclass
class GenerationSpec:
    deployment_id: str
    generation: int
    model_id: str
    args: list[str] | None = None
    env: dict[str, str] | None = None
    image: str | None = None
    previous_generation: int | None = None
    created_at: datetime | None = None

    def same_spec(self, other: GenerationSpec) -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in SPEC_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RolloutRecord:
    deployment_id: str
    current_generation: int
    target_generation: int
    phase: str
    max_surge: int
    max_unavailable: int
    deadline_s: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_failure: str | None = None
    last_failure_at: datetime | None = None
    failures: int = 0  # new replicas that failed in the last roll-out forward (actors/rollout_progress.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_GEN_COLS = "deployment_id, generation, model_id, args, env, image, previous_generation, created_at"
_ROLL_COLS = (
    "deployment_id, current_generation, target_generation, phase, max_surge, max_unavailable, deadline_s,"
    " started_at, finished_at, last_failure, last_failure_at, failures"
)


def _gen(r: asyncpg.Record) -> GenerationSpec:
    return GenerationSpec(**dict(r))


def _roll(r: asyncpg.Record) -> RolloutRecord:
    return RolloutRecord(**dict(r))


async def get_generation(store: Store, dep_id: str, generation: int) -> GenerationSpec | None:
    row = await store.pool.fetchrow(
        f"SELECT {_GEN_COLS} FROM deployment_generations WHERE deployment_id = $1 AND generation = $2",
        dep_id,
        generation,
    )
    return _gen(row) if row else None


async def get_rollout(store: Store, dep_id: str) -> RolloutRecord | None:
    row = await store.pool.fetchrow(f"SELECT {_ROLL_COLS} FROM deployment_rollouts WHERE deployment_id = $1", dep_id)
    return _roll(row) if row else None


async def list_rollouts(
    store: Store, dep_ids: list[str] | None = None, *, active_only: bool = False
) -> dict[str, RolloutRecord]:
    """deployment id -> its roll-out; active_only: only those rolling or rolling back."""
    if active_only:
        rows = await store.pool.fetch(f"SELECT {_ROLL_COLS} FROM deployment_rollouts WHERE phase <> $1", DONE)
    elif dep_ids is None:
        rows = await store.pool.fetch(f"SELECT {_ROLL_COLS} FROM deployment_rollouts")
    else:
        rows = await store.pool.fetch(
            f"SELECT {_ROLL_COLS} FROM deployment_rollouts WHERE deployment_id = ANY($1::text[])", dep_ids
        )
    return {r["deployment_id"]: _roll(r) for r in rows}


async def replica_generations(store: Store, dep_ids: list[str] | None = None) -> dict[str, int]:
    """node id -> the generation its replica was created with."""
    if dep_ids is None:
        rows = await store.pool.fetch("SELECT node_id, generation FROM replicas")
    else:
        rows = await store.pool.fetch(
            "SELECT node_id, generation FROM replicas WHERE deployment_id = ANY($1::text[])", dep_ids
        )
    return {r["node_id"]: int(r["generation"]) for r in rows}


async def _spec_of(conn: Any, dep_id: str, generation: int, model_id: str) -> GenerationSpec:
    row = await conn.fetchrow(
        f"SELECT {_GEN_COLS} FROM deployment_generations WHERE deployment_id = $1 AND generation = $2",
        dep_id,
        generation,
    )
    # a deployment created before any update has no row: its generation runs the route's model as registered
    return _gen(row) if row else GenerationSpec(dep_id, generation, model_id)


async def _insert_spec(conn: Any, s: GenerationSpec) -> None:
    await conn.execute(
        "INSERT INTO deployment_generations (deployment_id, generation, model_id, args, env, image,"
        " previous_generation) VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (deployment_id, generation) DO NOTHING",
        s.deployment_id,
        s.generation,
        s.model_id,
        s.args,
        s.env,
        s.image,
        s.previous_generation,
    )


async def start_generation(
    store: Store,
    dep_id: str,
    changes: dict[str, Any],
    *,
    max_surge: int = 1,
    max_unavailable: int = 0,
    deadline_s: float | None = None,
    copy_of: int | None = None,
    reason: str = "update",
) -> tuple[DeploymentRecord, bool]:
    """A new generation whose spec is the target's with `changes` (or generation `copy_of`'s spec), all in one
    transaction. Running deployments go `updating` and roll; stopped/failed ones take it at their next start.
    Returns (deployment, whether a new generation was made: False when nothing would change)."""
    async with store.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, generation, model_id FROM model_deployments WHERE id = $1 FOR UPDATE", dep_id
        )
        if row is None:
            raise UpdateRefused(404, "not_found", f"deployment {dep_id!r} not found")
        state, target = D(row["state"]), int(row["generation"])
        if state not in ROLL_STATES and state not in SPEC_ONLY_STATES:
            raise UpdateRefused(409, "invalid_state", f"deployment {dep_id} is {state}; update it once it runs")
        base = await _spec_of(conn, dep_id, target, row["model_id"])
        if copy_of is not None:
            src = await _spec_of(conn, dep_id, copy_of, row["model_id"])
            changes = {f: getattr(src, f) for f in SPEC_FIELDS}
        roll = await conn.fetchrow(
            f"SELECT {_ROLL_COLS} FROM deployment_rollouts WHERE deployment_id = $1 FOR UPDATE", dep_id
        )
        rolling = roll is not None and roll["phase"] in (ROLLING, ROLLING_BACK)
        current = int(roll["current_generation"]) if rolling and roll is not None else target
        top = await conn.fetchval("SELECT max(generation) FROM deployment_generations WHERE deployment_id = $1", dep_id)
        new_gen = max(int(top or 0), target) + 1
        spec = GenerationSpec(dep_id, new_gen, base.model_id, base.args, base.env, base.image, current)
        for f, v in changes.items():
            setattr(spec, f, v)
        if spec.same_spec(base):
            same = await conn.fetchrow(f"SELECT {_DEP_COLS} FROM model_deployments WHERE id = $1", dep_id)
            assert same is not None
            return _dep(same, store.box), False
        if base.generation == current:
            await _insert_spec(conn, base)  # so a later rollback can copy what runs now
        await _insert_spec(conn, spec)
        roll_now = state in ROLL_STATES
        new_state = D.UPDATING if roll_now else state
        rec = await conn.fetchrow(
            f"UPDATE model_deployments SET generation = $2, state = $3, updated_at = now() WHERE id = $1"
            f" RETURNING {_DEP_COLS}",
            dep_id,
            new_gen,
            str(new_state),
        )
        await conn.execute(
            "INSERT INTO deployment_rollouts (deployment_id, current_generation, target_generation, phase, max_surge,"
            " max_unavailable, deadline_s, started_at, finished_at) VALUES ($1,$2,$3,$4,$5,$6,$7, now(), $8)"
            " ON CONFLICT (deployment_id) DO UPDATE SET current_generation = EXCLUDED.current_generation,"
            " target_generation = EXCLUDED.target_generation, phase = EXCLUDED.phase,"
            " max_surge = EXCLUDED.max_surge, max_unavailable = EXCLUDED.max_unavailable,"
            " deadline_s = EXCLUDED.deadline_s, started_at = now(), finished_at = EXCLUDED.finished_at,"
            " failures = 0, progress_at = NULL, track = NULL",
            dep_id,
            current if roll_now else new_gen,
            new_gen,
            ROLLING if roll_now else DONE,
            max_surge,
            max_unavailable,
            deadline_s,
            None if roll_now else datetime.now().astimezone(),
        )
        data = {
            "from_generation": current,
            "to_generation": new_gen,
            "changed": sorted(changes),
            "max_surge": max_surge,
            "max_unavailable": max_unavailable,
            "rolling": roll_now,
        }
        await store.add_event(f"deployment.{reason}", "deployment", dep_id, data, conn)
        if new_state != state:
            await store.add_event(f"deployment.{new_state}", "deployment", dep_id, {}, conn)
    assert rec is not None
    return _dep(rec, store.box), True


async def roll_back(store: Store, dep_id: str, reason: str, *, automatic: bool) -> RolloutRecord | None:
    """Stop a roll-out: the target goes back to the current generation (whose replicas are kept), phase
    rolling_back, event `deployment.rollback`. None when no roll-out is rolling forward."""
    async with store.pool.acquire() as conn, conn.transaction():
        before = await conn.fetchval(
            "SELECT target_generation FROM deployment_rollouts WHERE deployment_id = $1 AND phase = $2 FOR UPDATE",
            dep_id,
            ROLLING,
        )
        if before is None:
            return None
        row = await conn.fetchrow(
            f"UPDATE deployment_rollouts SET phase = $2, target_generation = current_generation,"
            f" last_failure = CASE WHEN $4 THEN $3 ELSE last_failure END,"
            f" last_failure_at = CASE WHEN $4 THEN now() ELSE last_failure_at END"
            f" WHERE deployment_id = $1 RETURNING {_ROLL_COLS}",
            dep_id,
            ROLLING_BACK,
            reason,
            automatic,
        )
        assert row is not None
        rec = _roll(row)
        await conn.execute(
            "UPDATE model_deployments SET generation = $2, updated_at = now() WHERE id = $1",
            dep_id,
            rec.current_generation,
        )
        data = {"from_generation": before, "to_generation": rec.current_generation, "reason": reason}
        data["automatic"] = automatic
        await store.add_event("deployment.rollback", "deployment", dep_id, data, conn)
    return rec


async def finish(store: Store, dep_id: str, target: int) -> DeploymentRecord | None:
    """Every replica runs the target generation: it becomes the current one, the deployment `running`."""
    async with store.pool.acquire() as conn, conn.transaction():
        phase = await conn.fetchval(
            "SELECT phase FROM deployment_rollouts WHERE deployment_id = $1 AND target_generation = $2"
            " AND phase = ANY($3::text[]) FOR UPDATE",
            dep_id,
            target,
            [ROLLING, ROLLING_BACK],
        )
        if phase is None:
            return None
        await conn.execute(
            "UPDATE deployment_rollouts SET phase = $2, current_generation = target_generation, finished_at = now()"
            " WHERE deployment_id = $1",
            dep_id,
            DONE,
        )
        rolled_back = phase == ROLLING_BACK
        rec = await conn.fetchrow(
            f"UPDATE model_deployments SET state = $2, updated_at = now() WHERE id = $1 AND state = $3"
            f" RETURNING {_DEP_COLS}",
            dep_id,
            str(D.RUNNING),
            str(D.UPDATING),
        )
        kind = "deployment.rolled_back" if rolled_back else "deployment.updated"
        await store.add_event(kind, "deployment", dep_id, {"generation": target}, conn)
        if rec is not None:
            await store.add_event("deployment.running", "deployment", dep_id, {}, conn)
    return _dep(rec, store.box) if rec is not None else None


async def rollback(store: Store, dep_id: str, *, max_surge: int = 1, max_unavailable: int = 0) -> DeploymentRecord:
    """POST .../rollback: during a roll-out, stop it (the old replicas stay); otherwise roll to a new generation
    whose spec is the previous generation's."""
    if await roll_back(store, dep_id, "rollback requested", automatic=False) is not None:
        dep = await store.get_deployment(dep_id)
        assert dep is not None
        return dep
    dep = await store.get_deployment(dep_id)
    if dep is None:
        raise UpdateRefused(404, "not_found", f"deployment {dep_id!r} not found")
    spec = await get_generation(store, dep_id, dep.generation)
    if spec is None or spec.previous_generation is None:
        raise UpdateRefused(409, "no_previous_generation", f"deployment {dep_id} has no previous generation")
    dep, _made = await start_generation(
        store,
        dep_id,
        {},
        max_surge=max_surge,
        max_unavailable=max_unavailable,
        copy_of=spec.previous_generation,
        reason="rollback",
    )
    return dep


async def workload(store: Store, dep: DeploymentRecord, route: ModelRecord | None = None) -> dict[str, Any] | None:
    """What a new replica of the deployment's target generation runs (adapters.base.WorkloadSpec fields): the
    generation's model, arguments, environment and image, under the route's model name."""
    route = route if route is not None and route.id == dep.model_id else await store.get_model(dep.model_id)
    if route is None:
        return None
    spec = await get_generation(store, dep.id, dep.generation)
    model = route
    if spec is not None and spec.model_id != route.id:
        found = await store.get_model(spec.model_id)
        if found is None:
            return None
        model = found
    w = workload_for(dep, model)
    w["model_name"] = route.name
    if spec is not None:
        if spec.args is not None:
            w["args"] = list(spec.args)
        if spec.env is not None:
            w["env"] = {**w["env"], **spec.env}
        if spec.image is not None:
            w["image"] = spec.image
    return w


async def settle(store: Store, dep_id: str) -> bool:
    """A roll-out whose deployment left `updating` another way (stopped, deleted): nothing rolls any more; the
    deployment's target generation is what its next start runs."""
    # judged on the row as it is now, not on the caller's snapshot: an update may have started since
    r = await store.pool.execute(
        "UPDATE deployment_rollouts r SET phase = $2, current_generation = d.generation,"
        " target_generation = d.generation, finished_at = now() FROM model_deployments d"
        " WHERE r.deployment_id = $1 AND d.id = r.deployment_id AND d.state <> $4 AND r.phase = ANY($3::text[])",
        dep_id,
        DONE,
        [ROLLING, ROLLING_BACK],
        str(D.UPDATING),
    )
    return bool(r.endswith(" 1"))
