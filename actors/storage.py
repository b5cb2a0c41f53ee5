"""PostgreSQL storage: asyncpg pool, versioned migrations, and the queries of the control plane.

State changes use compare-and-set (`WHERE state = ANY($expected)`) so a late writer cannot
overwrite a newer state. Heartbeat timestamps are written in one batched statement per flush.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import asyncpg

from actors.pool_settings import CHANGEABLE
from actors.records import DeploymentRecord, ModelRecord, NodeRecord, PoolRecord, ReplicaRecord
from actors.secretbox import PREFIX, SecretBox
from actors.states import DeploymentState, NodeState, PoolState

log = logging.getLogger(__name__)


class StorageError(Exception):
    pass


class DuplicateError(StorageError):
    def __init__(self, field: str, value: str) -> None:
        super().__init__(f"{field} {value!r} already exists")
        self.field, self.value = field, value


class ConflictError(StorageError):
    pass


def _migrations() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("actors.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            out.append((int(name[:3]), name, entry.read_text()))
    return sorted(out)


async def _init_conn(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


_POOL_COLS = (
    "id, name, provider, region, allowed_gpu_types, min_nodes, max_nodes, target_nodes, "
    "max_cost_per_hour, provider_config, credential_ref, state, created_at, updated_at"
)
_NODE_COLS = (
    "id, pool_id, provider, provider_instance_id, deployment_id, state, state_reason, gpu_type, "
    "gpu_count, vcpu, ram_mb, ip_address, endpoint, resources, price_per_hour, last_heartbeat, "
    "health_score, token_hash, created_at, updated_at"
)
_MODEL_COLS = "id, name, engine, image, source, args, env, port, health_path, gpus, gpu_memory_mb, created_at"
_DEP_COLS = (
    "id, model_id, pool_id, desired_replicas, state, generation, error, inference_key, "
    "inference_key_hash, delete_requested, rate_limit_rpm, autoscaling, autoscaler_state, created_at, updated_at"
)


def _pool(r: asyncpg.Record) -> PoolRecord:
    d = dict(r)
    d["allowed_gpu_types"] = list(d["allowed_gpu_types"] or [])
    d["state"] = PoolState(d["state"])
    return PoolRecord(**d)


def _node(r: asyncpg.Record) -> NodeRecord:
    d = dict(r)
    d["state"] = NodeState(d["state"])
    return NodeRecord(**d)


def _model(r: asyncpg.Record) -> ModelRecord:
    return ModelRecord(**dict(r))


def _dep(r: asyncpg.Record, box: SecretBox | None) -> DeploymentRecord:
    d = dict(r)
    d["state"] = DeploymentState(d["state"])
    if box is not None:  # without the master key the sealed value stays sealed (useless as a key)
        d["inference_key"] = box.open(d["inference_key"])
    return DeploymentRecord(**d)


class Store:
    """One asyncpg pool per process (each Ray actor and each Serve replica owns one)."""

    def __init__(self, pool: asyncpg.Pool, box: SecretBox | None = None) -> None:
        self.pool = pool
        self.box = box  # seals the engine keys on write, opens them on read (actors/secretbox.py)

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 5,
        migrate: bool = False,
        master_key: str | None = None,
    ) -> Store:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_conn)
        assert pool is not None
        store = cls(pool, SecretBox(master_key) if master_key else None)
        if migrate:
            await store.migrate()
        return store

    async def close(self) -> None:
        await self.pool.close()

    # ---------------------------------------------------------------- migrations
    async def migrate(self) -> list[str]:
        applied: list[str] = []
        async with self.pool.acquire() as conn, conn.transaction():
            # one migrator at a time, even with several control planes booting
            await conn.execute("SELECT pg_advisory_xact_lock(727274)")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in _migrations():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
                applied.append(name)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        return applied

    async def schema_version(self) -> int:
        v = await self.pool.fetchval("SELECT max(version) FROM schema_migrations")
        return int(v or 0)

    # ---------------------------------------------------------------- events
    async def add_event(
        self,
        kind: str,
        entity_type: str,
        entity_id: str,
        data: dict[str, Any] | None = None,
        conn: Any = None,
    ) -> None:
        q = "INSERT INTO events (kind, entity_type, entity_id, data) VALUES ($1, $2, $3, $4)"
        await (conn or self.pool).execute(q, kind, entity_type, entity_id, data or {})

    async def prune_events(self, older_than_s: float, limit: int) -> int:
        """Delete at most `limit` events older than `older_than_s` seconds (retention); the number deleted."""
        r = await self.pool.execute(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < now() - make_interval(secs => $1)"
            " ORDER BY id LIMIT $2)",
            float(older_than_s),
            limit,
        )
        return int(r.split()[-1])

    async def list_events(
        self,
        entity_id: str | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
        entity_type: str | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; `before` (an event id) pages back, `kind` matches a prefix (`node.` or `node.ready`)."""
        conds: list[str] = []
        args: list[Any] = []
        for cond, value in (
            ("entity_id = ${}", entity_id),
            ("id < ${}", before),
            ("entity_type = ${}", entity_type),
            ("starts_with(kind, ${})", kind),
        ):
            if value is not None:
                args.append(value)
                conds.append(cond.format(len(args)))
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        args.append(limit)
        rows = await self.pool.fetch(f"SELECT * FROM events{where} ORDER BY id DESC LIMIT ${len(args)}", *args)
        return [dict(r) for r in rows]

    # ---------------------------------------------------------------- pools
    async def insert_pool(self, p: PoolRecord) -> PoolRecord:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    f"INSERT INTO compute_pools (id, name, provider, region, allowed_gpu_types, min_nodes,"
                    f" max_nodes, target_nodes, max_cost_per_hour, provider_config, credential_ref, state)"
                    f" VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) RETURNING {_POOL_COLS}",
                    p.id,
                    p.name,
                    p.provider,
                    p.region,
                    p.allowed_gpu_types,
                    p.min_nodes,
                    p.max_nodes,
                    p.target_nodes,
                    p.max_cost_per_hour,
                    p.provider_config,
                    p.credential_ref,
                    str(p.state),
                )
                await self.add_event("pool.created", "pool", p.id, {"name": p.name}, conn)
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateError("name", p.name) from exc
        assert row is not None
        return _pool(row)

    async def get_pool(self, ref: str) -> PoolRecord | None:
        row = await self.pool.fetchrow(
            f"SELECT {_POOL_COLS} FROM compute_pools WHERE (id = $1 OR name = $1) AND state <> 'deleted'", ref
        )
        return _pool(row) if row else None

    async def list_pools(self, include_deleted: bool = False) -> list[PoolRecord]:
        q = f"SELECT {_POOL_COLS} FROM compute_pools"
        if not include_deleted:
            q += " WHERE state <> 'deleted'"
        return [_pool(r) for r in await self.pool.fetch(q + " ORDER BY created_at")]

    async def set_pool_target(self, pool_id: str, target: int) -> PoolRecord | None:
        row = await self.pool.fetchrow(
            f"UPDATE compute_pools SET target_nodes = $2, updated_at = now() WHERE id = $1 AND state = 'active'"
            f" RETURNING {_POOL_COLS}",
            pool_id,
            target,
        )
        return _pool(row) if row else None

    async def update_pool(self, pool_id: str, fields: dict[str, Any]) -> PoolRecord | None:
        """Change the settings of an active pool (PATCH /v1/pools); None when it is not active."""
        keys = [k for k in CHANGEABLE if k in fields]
        if not keys:
            return await self.get_pool(pool_id)
        sets = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(keys))
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE compute_pools SET {sets}, updated_at = now() WHERE id = $1 AND state = 'active'"
                f" RETURNING {_POOL_COLS}",
                pool_id,
                *[fields[k] for k in keys],
            )
            if row is not None:
                await self.add_event("pool.updated", "pool", pool_id, {"fields": keys}, conn)
        return _pool(row) if row else None

    async def pool_usage(self) -> list[dict[str, Any]]:
        """Nodes and their summed price per pool and state (alive states only), for /metrics and PATCH checks."""
        rows = await self.pool.fetch(
            "SELECT pool_id, state, count(*) AS nodes, COALESCE(sum(price_per_hour), 0) AS cost"
            " FROM inventory_nodes WHERE state = ANY($1::text[]) GROUP BY pool_id, state",
            ["provisioning", "ready", "unhealthy", "draining"],
        )
        return [dict(r) for r in rows]

    async def start_pool_delete(self, pool_id: str, busy: Iterable[DeploymentState]) -> int:
        """Mark the pool `deleting` unless a deployment in a `busy` state uses it, in one transaction that locks
        the pool's row (insert_deployment takes the same lock): 0 when marked (or already deleting), else
        the number of such deployments (nothing changed)."""
        async with self.pool.acquire() as conn, conn.transaction():
            state = await conn.fetchval("SELECT state FROM compute_pools WHERE id = $1 FOR UPDATE", pool_id)
            if state != str(PoolState.ACTIVE):
                return 0
            n = await conn.fetchval(
                "SELECT count(*) FROM model_deployments WHERE pool_id = $1 AND state = ANY($2::text[])",
                pool_id,
                [str(s) for s in busy],
            )
            if n:
                return int(n)
            await conn.execute("UPDATE compute_pools SET state = 'deleting', updated_at = now() WHERE id = $1", pool_id)
            await self.add_event("pool.deleting", "pool", pool_id, {}, conn)
        return 0

    async def set_pool_state(self, pool_id: str, state: PoolState, expected: Iterable[PoolState]) -> bool:
        r = await self.pool.execute(
            "UPDATE compute_pools SET state = $2, updated_at = now() WHERE id = $1 AND state = ANY($3::text[])",
            pool_id,
            str(state),
            [str(s) for s in expected],
        )
        return r.endswith(" 1")

    # ---------------------------------------------------------------- nodes
    async def insert_node(self, n: NodeRecord) -> NodeRecord:
        """Idempotent by id: a retried insert returns the existing row."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"INSERT INTO inventory_nodes (id, pool_id, provider, deployment_id, state, token_hash, resources)"
                f" VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (id) DO NOTHING RETURNING {_NODE_COLS}",
                n.id,
                n.pool_id,
                n.provider,
                n.deployment_id,
                str(n.state),
                n.token_hash,
                n.resources,
            )
            if row is None:
                row = await conn.fetchrow(f"SELECT {_NODE_COLS} FROM inventory_nodes WHERE id = $1", n.id)
            else:
                await self.add_event("node.created", "node", n.id, {"pool_id": n.pool_id}, conn)
        assert row is not None
        return _node(row)

    async def update_node_provisioned(self, node_id: str, fields: dict[str, Any]) -> NodeRecord | None:
        allowed = {
            "provider_instance_id",
            "gpu_type",
            "gpu_count",
            "vcpu",
            "ram_mb",
            "ip_address",
            "endpoint",
            "resources",
            "price_per_hour",
            "token_hash",
        }
        keys = [k for k in fields if k in allowed]
        if not keys:
            return await self.get_node(node_id)
        sets = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(keys))
        row = await self.pool.fetchrow(
            f"UPDATE inventory_nodes SET {sets}, updated_at = now() WHERE id = $1 RETURNING {_NODE_COLS}",
            node_id,
            *[fields[k] for k in keys],
        )
        return _node(row) if row else None

    async def get_node(self, node_id: str) -> NodeRecord | None:
        row = await self.pool.fetchrow(f"SELECT {_NODE_COLS} FROM inventory_nodes WHERE id = $1", node_id)
        return _node(row) if row else None

    async def list_nodes(
        self, pool_id: str | None = None, states: Iterable[NodeState] | None = None
    ) -> list[NodeRecord]:
        conds: list[str] = []
        args: list[Any] = []
        if pool_id is not None:
            args.append(pool_id)
            conds.append(f"pool_id = ${len(args)}")
        if states is not None:
            args.append([str(s) for s in states])
            conds.append(f"state = ANY(${len(args)}::text[])")
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        rows = await self.pool.fetch(f"SELECT {_NODE_COLS} FROM inventory_nodes{where} ORDER BY created_at", *args)
        return [_node(r) for r in rows]

    async def prune_terminated_nodes(self, older_than_s: float, limit: int) -> int:
        """Delete at most `limit` rows of nodes terminated more than `older_than_s` seconds ago (that no
        replicas row names); the number deleted."""
        r = await self.pool.execute(
            "DELETE FROM inventory_nodes WHERE id IN (SELECT n.id FROM inventory_nodes n"
            " WHERE n.state = 'terminated' AND n.updated_at < now() - make_interval(secs => $1)"
            " AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.node_id = n.id) LIMIT $2)",
            float(older_than_s),
            limit,
        )
        return int(r.split()[-1])

    async def page_nodes(
        self,
        *,
        pool_id: str | None = None,
        states: Iterable[NodeState] | None = None,
        deployment_id: str | None = None,
        search: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[NodeRecord], int]:
        """One page of nodes (oldest first) and the number of nodes that match the filters."""
        conds: list[str] = []
        args: list[Any] = []
        if pool_id is not None:
            args.append(pool_id)
            conds.append(f"pool_id = ${len(args)}")
        if states is not None:
            args.append([str(s) for s in states])
            conds.append(f"state = ANY(${len(args)}::text[])")
        if deployment_id is not None:
            args.append(deployment_id)
            conds.append(f"deployment_id = ${len(args)}")
        if search:
            args.append(search)
            n = len(args)
            conds.append(f"(strpos(id, ${n}) > 0 OR strpos(COALESCE(endpoint, ''), ${n}) > 0)")
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        async with self.pool.acquire() as conn:
            total = await conn.fetchval(f"SELECT count(*) FROM inventory_nodes{where}", *args)
            rows = await conn.fetch(
                f"SELECT {_NODE_COLS} FROM inventory_nodes{where} ORDER BY created_at, id"
                f" LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
                *args,
                limit,
                offset,
            )
        return [_node(r) for r in rows], int(total or 0)

    async def apply_node_transitions(
        self, changes: Sequence[tuple[str, Sequence[NodeState], NodeState, str | None]]
    ) -> list[str]:
        """Compare-and-set many node states in one transaction; returns the ids that changed."""
        if not changes:
            return []
        changed: list[str] = []
        async with self.pool.acquire() as conn, conn.transaction():
            for node_id, expected, new, reason in changes:
                r = await conn.fetchval(
                    "UPDATE inventory_nodes SET state = $2, state_reason = $3, updated_at = now()"
                    " WHERE id = $1 AND state = ANY($4::text[]) RETURNING id",
                    node_id,
                    str(new),
                    reason,
                    [str(s) for s in expected],
                )
                if r is not None:
                    changed.append(node_id)
            if changed:
                await conn.executemany(
                    "INSERT INTO events (kind, entity_type, entity_id, data) VALUES ($1, 'node', $2, $3)",
                    [
                        (f"node.{new}", node_id, {"reason": reason} if reason else {})
                        for node_id, _, new, reason in changes
                        if node_id in changed
                    ],
                )
        return changed

    async def flush_heartbeats(self, beats: Sequence[tuple[str, datetime, int | None]]) -> None:
        """One statement for the whole batch (at most one row per node per flush)."""
        if not beats:
            return
        await self.pool.execute(
            "UPDATE inventory_nodes AS n SET last_heartbeat = b.at, health_score = b.score"
            " FROM unnest($1::text[], $2::timestamptz[], $3::int[]) AS b(id, at, score)"
            " WHERE n.id = b.id AND (n.last_heartbeat IS NULL OR n.last_heartbeat < b.at)",
            [b[0] for b in beats],
            [b[1] for b in beats],
            [b[2] for b in beats],
        )

    # ---------------------------------------------------------------- models
    async def insert_model(self, m: ModelRecord) -> ModelRecord:
        try:
            row = await self.pool.fetchrow(
                f"INSERT INTO model_registry (id, name, engine, image, source, args, env, port, health_path,"
                f" gpus, gpu_memory_mb) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) RETURNING {_MODEL_COLS}",
                m.id,
                m.name,
                m.engine,
                m.image,
                m.source,
                m.args,
                m.env,
                m.port,
                m.health_path,
                m.gpus,
                m.gpu_memory_mb,
            )
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateError("name", m.name) from exc
        assert row is not None
        return _model(row)

    async def get_model(self, ref: str) -> ModelRecord | None:
        row = await self.pool.fetchrow(f"SELECT {_MODEL_COLS} FROM model_registry WHERE id = $1 OR name = $1", ref)
        return _model(row) if row else None

    async def list_models(self) -> list[ModelRecord]:
        return [_model(r) for r in await self.pool.fetch(f"SELECT {_MODEL_COLS} FROM model_registry ORDER BY name")]

    async def delete_model(self, model_id: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            used = await conn.fetchval(
                "SELECT count(*) FROM model_deployments d WHERE d.model_id = $1 OR EXISTS (SELECT 1 FROM"
                " deployment_generations g WHERE g.deployment_id = d.id AND g.model_id = $1)",  # issue 12
                model_id,
            )
            if used:
                raise ConflictError(f"model is used by {used} deployment(s); delete them first")
            r = await conn.execute("DELETE FROM model_registry WHERE id = $1", model_id)
        return r.endswith(" 1")

    # ---------------------------------------------------------------- deployments
    async def insert_deployment(self, d: DeploymentRecord) -> DeploymentRecord:
        """Insert, only while its pool is active: the pool's row is locked (start_pool_delete takes the same
        lock), so a deployment never lands on a pool being deleted. ConflictError otherwise."""
        async with self.pool.acquire() as conn, conn.transaction():
            pool_state = await conn.fetchval("SELECT state FROM compute_pools WHERE id = $1 FOR SHARE", d.pool_id)
            if pool_state != str(PoolState.ACTIVE):
                raise ConflictError(f"pool {d.pool_id} is {pool_state or 'gone'}")
            row = await conn.fetchrow(
                f"INSERT INTO model_deployments (id, model_id, pool_id, desired_replicas, state, generation,"
                f" inference_key, inference_key_hash, rate_limit_rpm, autoscaling)"
                f" VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING {_DEP_COLS}",
                d.id,
                d.model_id,
                d.pool_id,
                d.desired_replicas,
                str(d.state),
                d.generation,
                self.box.seal(d.inference_key) if self.box else d.inference_key,
                d.inference_key_hash,
                d.rate_limit_rpm,
                d.autoscaling,
            )
            created: dict[str, Any] = {"replicas": d.desired_replicas}
            if d.autoscaling:
                created["autoscaling"] = d.autoscaling
            await self.add_event("deployment.created", "deployment", d.id, created, conn)
        assert row is not None
        return _dep(row, self.box)

    async def get_deployment(self, dep_id: str) -> DeploymentRecord | None:
        row = await self.pool.fetchrow(f"SELECT {_DEP_COLS} FROM model_deployments WHERE id = $1", dep_id)
        return _dep(row, self.box) if row else None

    async def list_deployments(
        self, states: Iterable[DeploymentState] | None = None, pool_id: str | None = None
    ) -> list[DeploymentRecord]:
        conds: list[str] = []
        args: list[Any] = []
        if states is not None:
            args.append([str(s) for s in states])
            conds.append(f"state = ANY(${len(args)}::text[])")
        if pool_id is not None:
            args.append(pool_id)
            conds.append(f"pool_id = ${len(args)}")
        where = (" WHERE " + " AND ".join(conds)) if conds else ""
        rows = await self.pool.fetch(f"SELECT {_DEP_COLS} FROM model_deployments{where} ORDER BY created_at", *args)
        return [_dep(r, self.box) for r in rows]

    async def cas_deployment(
        self,
        dep_id: str,
        expected: Iterable[DeploymentState],
        new: DeploymentState,
        *,
        error: str | None = None,
        desired_replicas: int | None = None,
        bump_generation: bool = False,
    ) -> DeploymentRecord | None:
        """Compare-and-set the state (and optionally the replica count); None when the CAS lost."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE model_deployments SET state = $2, error = $3,"
                f" desired_replicas = COALESCE($4, desired_replicas),"
                f" generation = generation + CASE WHEN $5 THEN 1 ELSE 0 END, updated_at = now()"
                f" WHERE id = $1 AND state = ANY($6::text[]) RETURNING {_DEP_COLS}",
                dep_id,
                str(new),
                error,
                desired_replicas,
                bump_generation,
                [str(s) for s in expected],
            )
            if row is not None:
                await self.add_event(f"deployment.{new}", "deployment", dep_id, {"error": error} if error else {}, conn)
        return _dep(row, self.box) if row else None

    async def request_delete(self, dep_id: str) -> None:
        await self.pool.execute("UPDATE model_deployments SET delete_requested = true WHERE id = $1", dep_id)

    async def set_desired(self, dep_id: str, replicas: int) -> DeploymentRecord | None:
        row = await self.pool.fetchrow(
            f"UPDATE model_deployments SET desired_replicas = $2, updated_at = now() WHERE id = $1"
            f" AND state <> ALL($3::text[]) RETURNING {_DEP_COLS}",
            dep_id,
            replicas,
            ["stopping", "stopped"],
        )
        return _dep(row, self.box) if row else None

    async def delete_deployment(self, dep_id: str, deletable: Iterable[DeploymentState]) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            r = await conn.execute(
                "DELETE FROM model_deployments WHERE id = $1 AND state = ANY($2::text[])",
                dep_id,
                [str(s) for s in deletable],
            )
            ok = r.endswith(" 1")
            if ok:
                await self.add_event("deployment.deleted", "deployment", dep_id, {}, conn)
        return ok

    # ---------------------------------------------------------------- replicas
    async def upsert_replica(self, r: ReplicaRecord) -> None:
        await self.pool.execute(
            "INSERT INTO replicas (deployment_id, node_id, generation, state, endpoint) VALUES ($1,$2,$3,$4,$5)"
            " ON CONFLICT (deployment_id, node_id) DO UPDATE SET state = EXCLUDED.state,"
            " endpoint = COALESCE(EXCLUDED.endpoint, replicas.endpoint), updated_at = now()",
            r.deployment_id,
            r.node_id,
            r.generation,
            r.state,
            r.endpoint,
        )

    async def insert_replicas(self, rs: list[ReplicaRecord]) -> None:
        """New replicas in one round trip (an existing row is left as it is)."""
        if not rs:
            return
        await self.pool.executemany(
            "INSERT INTO replicas (deployment_id, node_id, generation, state, endpoint) VALUES ($1,$2,$3,$4,$5)"
            " ON CONFLICT (deployment_id, node_id) DO NOTHING",
            [(r.deployment_id, r.node_id, r.generation, r.state, r.endpoint) for r in rs],
        )

    async def delete_replica(self, deployment_id: str, node_id: str) -> None:
        await self.pool.execute(
            "DELETE FROM replicas WHERE deployment_id = $1 AND node_id = $2", deployment_id, node_id
        )

    async def list_replicas(self, deployment_id: str | None = None) -> list[ReplicaRecord]:
        q = "SELECT deployment_id, node_id, generation, state, endpoint, created_at FROM replicas"
        rows = await (
            self.pool.fetch(q + " WHERE deployment_id = $1 ORDER BY created_at", deployment_id)
            if deployment_id
            else self.pool.fetch(q + " ORDER BY created_at")
        )
        return [ReplicaRecord(**dict(r)) for r in rows]

    # ---------------------------------------------------------------- secrets
    async def get_or_create_secret(self, name: str, factory: Any) -> str:
        value = await self.pool.fetchval(
            "INSERT INTO cluster_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING value",
            name,
            factory(),
        )
        if value is None:
            value = await self.pool.fetchval("SELECT value FROM cluster_secrets WHERE name = $1", name)
        return str(value)

    # ---------------------------------------------------------------- deployment keys (issue 13)
    async def seal_plain_keys(self) -> int:
        """Encrypt in place the engine keys stored in clear before encryption existed; returns how many."""
        if self.box is None:
            return 0
        n = 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, inference_key FROM model_deployments WHERE NOT starts_with(inference_key, $1) FOR UPDATE",
                PREFIX,
            )
            for r in rows:
                sealed = self.box.seal(r["inference_key"])
                await conn.execute("UPDATE model_deployments SET inference_key = $2 WHERE id = $1", r["id"], sealed)
                n += 1
            if n:
                await self.add_event("deployment.keys_sealed", "deployment", "*", {"count": n}, conn)
        return n

    async def set_inference_key_hash(self, dep_id: str, key_hash: str) -> DeploymentRecord | None:
        """A new inference key (rotate-key): the old one is refused from now on; the engine key is unchanged."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE model_deployments SET inference_key_hash = $2, updated_at = now() WHERE id = $1"
                f" RETURNING {_DEP_COLS}",
                dep_id,
                key_hash,
            )
            if row is not None:
                await self.add_event("deployment.key_rotated", "deployment", dep_id, {}, conn)
        return _dep(row, self.box) if row else None

    async def set_rate_limit(self, dep_id: str, rpm: int | None) -> DeploymentRecord | None:
        row = await self.pool.fetchrow(
            f"UPDATE model_deployments SET rate_limit_rpm = $2, updated_at = now() WHERE id = $1 RETURNING {_DEP_COLS}",
            dep_id,
            rpm,
        )
        return _dep(row, self.box) if row else None

    # ---------------------------------------------------------------- autoscaling (issue 11)
    async def set_autoscaling(
        self, dep_id: str, policy: dict[str, Any] | None, desired_replicas: int | None = None
    ) -> DeploymentRecord | None:
        """Set (or, with None, remove) a deployment's autoscaling policy, optionally with a new target in the
        same write; the autoscaler's saved state is reset with it. None when there is no such deployment."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE model_deployments SET autoscaling = $2, autoscaler_state = NULL,"
                f" desired_replicas = COALESCE($3, desired_replicas), updated_at = now() WHERE id = $1"
                f" RETURNING {_DEP_COLS}",
                dep_id,
                policy,
                desired_replicas,
            )
            if row is not None:
                await self.add_event(
                    "deployment.autoscaling_set" if policy else "deployment.autoscaling_removed",
                    "deployment",
                    dep_id,
                    {"autoscaling": policy, "replicas": row["desired_replicas"]},
                    conn,
                )
        return _dep(row, self.box) if row else None

    async def save_autoscaler(
        self,
        dep_id: str,
        state: dict[str, Any],
        *,
        from_replicas: int | None = None,
        to_replicas: int | None = None,
        event: dict[str, Any] | None = None,
    ) -> DeploymentRecord | None:
        """Keep the autoscaler's state; with to_replicas, also move the target, only while it still is
        `from_replicas` and the deployment still has a policy (a manual scale or a removed policy in between wins),
        with a `deployment.autoscaled` event carrying the decision's inputs. None when the CAS lost."""
        async with self.pool.acquire() as conn, conn.transaction():
            if to_replicas is None:
                row = await conn.fetchrow(
                    f"UPDATE model_deployments SET autoscaler_state = $2 WHERE id = $1 AND autoscaling IS NOT NULL"
                    f" RETURNING {_DEP_COLS}",
                    dep_id,
                    state,
                )
                return _dep(row, self.box) if row else None
            row = await conn.fetchrow(
                f"UPDATE model_deployments SET autoscaler_state = $2, desired_replicas = $3, updated_at = now()"
                f" WHERE id = $1 AND desired_replicas = $4 AND autoscaling IS NOT NULL"
                f" AND state <> ALL($5::text[]) RETURNING {_DEP_COLS}",
                dep_id,
                state,
                to_replicas,
                from_replicas,
                ["stopping", "stopped", "failed"],
            )
            if row is not None:
                await self.add_event("deployment.autoscaled", "deployment", dep_id, event or {}, conn)
        return _dep(row, self.box) if row else None
