"""A roll-out's failure count and progress time in PostgreSQL (issue 12, migration 007).

The planner's `Track` (actors/rollout.py) is the only part of a roll-out that cannot be rebuilt from the
replicas: how many new replicas failed (and which), and since when no new replica became ready. The runner
loads it for the deployments in `updating` and writes it back when a round changed it, so a restarted
deployments actor resumes with the same failure count and progress deadline. A write names the roll-out's
target generation and phase: it never lands on a newer roll-out (which starts from zero, see
generations.start_generation).
"""

from __future__ import annotations

from datetime import UTC, datetime

from actors.rollout import Track
from actors.storage import Store


async def load(store: Store, dep_ids: list[str]) -> dict[str, Track]:
    """deployment id -> the track last saved for its roll-out (only roll-outs that saved one)."""
    rows = await store.pool.fetch(
        "SELECT deployment_id, failures, progress_at, track FROM deployment_rollouts"
        " WHERE deployment_id = ANY($1::text[]) AND track IS NOT NULL",
        dep_ids,
    )
    out = {}
    for r in rows:
        at = r["progress_at"].timestamp() if r["progress_at"] is not None else 0.0
        out[r["deployment_id"]] = Track.from_json(int(r["failures"]), at, r["track"])
    return out


async def save(store: Store, dep_id: str, t: Track) -> bool:
    """Persist the track of the roll-out to generation t.generation in phase t.phase; False when that roll-out
    is no longer the deployment's (finished, rolled back or replaced meanwhile)."""
    r = await store.pool.execute(
        "UPDATE deployment_rollouts SET failures = $4, progress_at = $5, track = $6"
        " WHERE deployment_id = $1 AND target_generation = $2 AND phase = $3",
        dep_id,
        t.generation,
        t.phase,
        t.failures,
        datetime.fromtimestamp(t.progress_at, UTC),
        t.to_json(),
    )
    return bool(r.endswith(" 1"))


def _us(t: float) -> int:
    return round(t * 1e6)


def changed(before: Track | None, after: Track | None) -> bool:
    """Whether `after` (the planner's track) differs from `before` (as loaded): progress_at is compared to the
    microsecond, the precision of the column, so an unchanged track read back is not written every round."""
    if after is None:
        return False
    if before is None:
        return True
    old = (before.failures, _us(before.progress_at), before.to_json())
    return old != (after.failures, _us(after.progress_at), after.to_json())
