"""Admin API: pools, nodes, providers, model registry, deployments (bearer INFERIA_API_TOKEN)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from actors import placement
from actors.autoscaler import AutoscalingPolicy
from actors.records import (
    DeploymentRecord,
    ModelRecord,
    PoolRecord,
    hash_secret,
    new_id,
    new_secret,
)
from actors.runtime import call
from actors.states import DEPLOYMENT_ACTIVE, DEPLOYMENT_DELETABLE, NODE_ALIVE, DeploymentState, NodeState, PoolState
from actors.storage import ConflictError, DuplicateError, Store
from adapters.base import PermanentProviderError, ProviderError
from adapters.registry import available, get_adapter_class
from serve_app import autoscaling as autoscaling_api
from serve_app import rollout_api
from serve_app.context import AppContext, require_admin
from serve_app.errors import ApiError, not_found
from serve_app.schemas import (
    DeploymentCreate,
    DeploymentPatch,
    ModelCreate,
    PoolCreate,
    PoolPatch,
    PoolScale,
    RollbackIn,
)

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)])
D = DeploymentState


def ctx_of(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def store_of(request: Request) -> Store:
    store = ctx_of(request).store
    assert store is not None
    return store


async def _pool(store: Store, ref: str) -> PoolRecord:
    pool = await store.get_pool(ref)
    if pool is None:
        raise not_found("pool", ref)
    return pool


def _pool_out(p: PoolRecord) -> dict[str, Any]:
    d = p.to_dict()
    d["provider_config"] = _mask_config(d["provider_config"])
    return d


def _mask_config(cfg: dict[str, Any]) -> dict[str, Any]:
    secretish = ("key", "token", "secret", "password", "credential", "wallet", "mnemonic")
    return {k: ("***" if any(s in k.lower() for s in secretish) else v) for k, v in cfg.items()}


# ---------------------------------------------------------------- pools
@router.post("/pools", status_code=201)
async def create_pool(body: PoolCreate, request: Request) -> dict[str, Any]:
    store = store_of(request)
    try:
        cls = get_adapter_class(body.provider)
    except PermanentProviderError as exc:
        raise ApiError(422, "invalid_request", str(exc), "provider") from exc
    try:
        config = cls.validate_config(dict(body.provider_config))
    except (ValueError, TypeError) as exc:
        raise ApiError(422, "invalid_request", f"provider_config: {exc}", "provider_config") from exc
    # where the pool runs is decided now and kept in its id (actors/placement.py): stable for its lifetime
    hosts = ctx_of(request).cfg.pool_hosts
    existing = [p.id for p in await store.list_pools()] if hosts == placement.AUTO else []
    crowded = len(existing) >= placement.AUTO_OWN_ACTORS
    pool_id = placement.new_pool_id(existing, hosts, placement.host_slots(placement.cluster_cpus()) if crowded else 0)
    rec = PoolRecord(id=pool_id, **body.model_dump(exclude={"provider_config"}), provider_config=config)
    try:
        rec = await store.insert_pool(rec)
    except DuplicateError as exc:
        raise ApiError(409, "duplicate", f"a pool named {body.name!r} already exists", "name") from exc
    actor = ctx_of(request).pool_actor(rec.id)
    await call(actor.ready.remote(), 60)
    return _pool_out(rec)


@router.get("/pools")
async def list_pools(request: Request) -> list[dict[str, Any]]:
    """Every pool with `nodes` (alive) and `cost_per_hour` (their summed price), from one grouped query."""
    store = store_of(request)
    nodes: dict[str, int] = {}
    cost: dict[str, float] = {}
    for u in await store.pool_usage():
        nodes[u["pool_id"]] = nodes.get(u["pool_id"], 0) + int(u["nodes"])
        cost[u["pool_id"]] = cost.get(u["pool_id"], 0.0) + float(u["cost"] or 0.0)
    return [
        _pool_out(p) | {"nodes": nodes.get(p.id, 0), "cost_per_hour": round(cost.get(p.id, 0.0), 6)}
        for p in await store.list_pools()
    ]


@router.get("/pools/{ref}")
async def get_pool(ref: str, request: Request) -> dict[str, Any]:
    store = store_of(request)
    pool = await _pool(store, ref)
    out = _pool_out(pool)
    out["nodes"] = len(await store.list_nodes(pool.id, NODE_ALIVE))
    return out


@router.delete("/pools/{ref}", status_code=202)
async def delete_pool(ref: str, request: Request) -> dict[str, Any]:
    store = store_of(request)
    pool = await _pool(store, ref)
    # the check and the mark in one transaction on the pool's row (POST /v1/deployments locks it too)
    active = await store.start_pool_delete(pool.id, set(DEPLOYMENT_ACTIVE) | {D.STOPPING})
    if active:
        raise ApiError(409, "pool_in_use", f"pool {pool.name!r} has {active} active deployment(s); stop them first")
    actor = ctx_of(request).pool_actor(pool.id)
    actor.delete_pool.remote()  # runs in the background; the pool goes 'deleting' -> 'deleted'
    return {"id": pool.id, "state": str(PoolState.DELETING)}


# provider_config entries every pool can change while it runs (the pool reads them at each use); an adapter
# class may name more in `live_config_keys`
LIVE_CONFIG_KEYS = frozenset({"cleanup_orphans"})


@router.patch("/pools/{ref}")
async def patch_pool(ref: str, body: PoolPatch, request: Request) -> dict[str, Any]:
    """Change a running pool's limits and live provider settings; checked against the nodes it runs."""
    store = store_of(request)
    pool = await _pool(store, ref)
    if pool.state != PoolState.ACTIVE:
        raise ApiError(409, "pool_not_active", f"pool {pool.name!r} is {pool.state}")
    given = body.model_dump(exclude_unset=True)
    for key, value in given.items():
        if value is None and key != "max_cost_per_hour":  # null: no cost limit; elsewhere meaningless
            raise ApiError(422, "invalid_request", f"{key}: must not be null", key)
    changes: dict[str, Any] = {k: v for k, v in given.items() if k != "provider_config"}
    lo = changes.get("min_nodes", pool.min_nodes)
    hi = changes.get("max_nodes", pool.max_nodes)
    if lo > hi:
        field = "min_nodes" if "min_nodes" in changes else "max_nodes"
        raise ApiError(422, "invalid_request", f"{field}: min_nodes ({lo}) must be <= max_nodes ({hi})", field)
    if changes.get("target_nodes", pool.target_nodes) > hi:
        field = "target_nodes" if "target_nodes" in changes else "max_nodes"
        target = changes.get("target_nodes", pool.target_nodes)
        raise ApiError(422, "invalid_request", f"{field}: target_nodes ({target}) must be <= max_nodes ({hi})", field)
    if "provider_config" in given:
        cls = get_adapter_class(pool.provider)
        live = LIVE_CONFIG_KEYS | frozenset(getattr(cls, "live_config_keys", ()))
        merged = dict(pool.provider_config)
        for key, value in given["provider_config"].items():
            if key not in live:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"provider_config.{key}: cannot change on a running pool (changeable: {', '.join(sorted(live))})",
                    f"provider_config.{key}",
                )
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        try:
            changes["provider_config"] = cls.validate_config(merged)
        except (ValueError, TypeError) as exc:
            raise ApiError(422, "invalid_request", f"provider_config: {exc}", "provider_config") from exc
    if not changes:
        return _pool_out(pool)
    # the pool checks the change against the nodes it runs (under its lock) and applies it; then the row
    answer = await call(ctx_of(request).pool_actor(pool.id).update_config.remote(changes), 60)
    if not answer["ok"]:
        raise ApiError(409, "pool_conflict", answer["message"], answer["field"])
    updated = await store.update_pool(pool.id, changes)
    if updated is None:  # deleted meanwhile; the pool's next tick takes its settings from the row again
        raise ApiError(409, "pool_not_active", f"pool {pool.name!r} is no longer active")
    return _pool_out(updated)


@router.post("/pools/{ref}/scale", status_code=202)
async def scale_pool(ref: str, body: PoolScale, request: Request) -> dict[str, Any]:
    store = store_of(request)
    pool = await _pool(store, ref)
    if body.target_nodes > pool.max_nodes:
        raise ApiError(422, "invalid_request", f"target_nodes must be <= max_nodes ({pool.max_nodes})", "target_nodes")
    updated = await store.set_pool_target(pool.id, body.target_nodes)
    if updated is None:
        raise ApiError(409, "pool_not_active", f"pool {pool.name!r} is {pool.state}")
    created = await call(ctx_of(request).pool_actor(pool.id).scale.remote(body.target_nodes), 60)
    return _pool_out(updated) | {"created_nodes": created}


@router.get("/pools/{ref}/nodes")
async def pool_nodes(
    ref: str,
    request: Request,
    response: Response,
    all: bool = False,
    limit: int | None = Query(None, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
) -> list[dict[str, Any]]:
    """The pool's nodes, oldest first; `limit`/`offset` page through them (X-Total-Count: how many match)."""
    store = store_of(request)
    pool = await _pool(store, ref)
    live = {n["id"]: n for n in await call(ctx_of(request).inventory().nodes.remote(), 30)}
    states = None if all else NODE_ALIVE
    if limit is None and offset == 0:
        recs = await store.list_nodes(pool.id, states)
        total = len(recs)
    else:
        recs, total = await store.page_nodes(pool_id=pool.id, states=states, limit=limit or 10_000, offset=offset)
    response.headers["X-Total-Count"] = str(total)
    out = []
    for rec in recs:
        d = rec.public()
        if rec.id in live:
            d.update({k: live[rec.id][k] for k in ("state", "health_score", "seconds_since_heartbeat", "reason")})
        out.append(d)
    return out


# ---------------------------------------------------------------- nodes
_LIVE_FIELDS = ("state", "health_score", "seconds_since_heartbeat", "reason", "engine_ready")


@router.get("/nodes")
async def list_nodes(
    request: Request,
    state: str | None = Query(None, max_length=200, description="comma-separated states, or `all`"),
    pool: str | None = Query(None, max_length=128, description="pool name or id"),
    deployment: str | None = Query(None, max_length=128),
    q: str | None = Query(None, max_length=128, description="substring of the node id or endpoint"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=10_000_000),
) -> dict[str, Any]:
    """One page of nodes (oldest first) with the inventory's live state; `total` counts every match."""
    store = store_of(request)
    states: list[NodeState] | None = list(NODE_ALIVE)
    if state:
        if state == "all":
            states = None
        else:
            try:
                states = [NodeState(s.strip()) for s in state.split(",") if s.strip()]
            except ValueError as exc:
                names = ", ".join(str(s) for s in NodeState)
                raise ApiError(422, "invalid_request", f"state: must be `all` or some of {names}", "state") from exc
    pool_id = None
    if pool is not None:
        p = await store.get_pool(pool)
        if p is None:
            raise ApiError(404, "pool_not_found", f"pool {pool!r} not found", "pool")
        pool_id = p.id
    recs, total = await store.page_nodes(
        pool_id=pool_id, states=states, deployment_id=deployment, search=q, limit=limit, offset=offset
    )
    cache = ctx_of(request).live_nodes
    live = await cache.get()
    if any(r.id not in live and r.state in NODE_ALIVE for r in recs):  # created since the cached copy
        cache.invalidate()
        live = await cache.get()
    items = []
    for rec in recs:
        d = rec.public() | {"seconds_since_heartbeat": None, "reason": rec.state_reason, "engine_ready": None}
        view = live.get(rec.id)
        if view:
            d.update({k: view.get(k) for k in _LIVE_FIELDS})
        items.append(d)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


async def _node(request: Request, node_id: str) -> dict[str, Any]:
    rec = await store_of(request).get_node(node_id)
    if rec is None:
        raise not_found("node", node_id)
    d = rec.public()
    live = await call(ctx_of(request).inventory().node.remote(node_id), 30)
    if live:
        d.update({k: live[k] for k in ("state", "health_score", "seconds_since_heartbeat", "reason", "metrics")})
    return d


@router.get("/nodes/{node_id}")
async def get_node(node_id: str, request: Request) -> dict[str, Any]:
    return await _node(request, node_id)


@router.post("/nodes/{node_id}/drain", status_code=202)
async def drain_node(node_id: str, request: Request) -> dict[str, Any]:
    node = await _node(request, node_id)
    if node["state"] in ("terminated", "failed"):
        raise ApiError(409, "node_not_alive", f"node {node_id} is {node['state']}")
    await call(ctx_of(request).pool_actor(node["pool_id"]).drain_node.remote(node_id, "drained by request"), 30)
    ctx_of(request).live_nodes.invalidate()
    return {"id": node_id, "state": "draining"}


@router.delete("/nodes/{node_id}", status_code=202)
async def delete_node(node_id: str, request: Request) -> dict[str, Any]:
    node = await _node(request, node_id)
    if node["state"] == "terminated":
        return {"id": node_id, "state": "terminated"}
    await call(ctx_of(request).pool_actor(node["pool_id"]).terminate_node.remote(node_id, "deleted by request"), 30)
    ctx_of(request).live_nodes.invalidate()
    return {"id": node_id, "state": "draining"}


@router.get("/nodes/{node_id}/logs")
async def node_logs(node_id: str, request: Request, tail: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
    node = await _node(request, node_id)
    lines = await call(ctx_of(request).pool_actor(node["pool_id"]).get_logs.remote(node_id, tail), 30)
    return {"node_id": node_id, "lines": lines}


# ---------------------------------------------------------------- events
@router.get("/events")
async def list_events(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = Query(None, ge=1, le=2**63 - 1, description="page back: events with a smaller id"),
    entity_id: str | None = Query(None, max_length=128),
    entity_type: str | None = Query(None, pattern="^(pool|node|deployment)$"),
    kind: str | None = Query(None, max_length=64, description="prefix of the kind, e.g. `node.`"),
) -> dict[str, Any]:
    """Recent lifecycle events, newest first; `next_before` pages back (null at the oldest)."""
    rows = await store_of(request).list_events(entity_id, limit, before=before, entity_type=entity_type, kind=kind)
    items = [
        {
            "id": r["id"],
            "at": r["at"].isoformat() if r["at"] else None,
            "kind": r["kind"],
            "entity_type": r["entity_type"],
            "entity_id": r["entity_id"],
            "data": r["data"],
        }
        for r in rows
    ]
    return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}


# ---------------------------------------------------------------- providers
@router.get("/providers")
async def providers() -> list[dict[str, Any]]:
    out = []
    for name in available():
        try:
            cls = get_adapter_class(name)
            out.append({"name": name, "installed": True, "capabilities": asdict(cls.capabilities)})
        except PermanentProviderError as exc:
            out.append({"name": name, "installed": False, "error": str(exc)})
    return out


@router.get("/providers/{name}/resources")
async def provider_resources(name: str, request: Request, pool: str | None = None) -> list[dict[str, Any]]:
    store = store_of(request)
    if pool is not None:
        p = await _pool(store, pool)
        if p.provider != name:
            raise ApiError(422, "invalid_request", f"pool {p.name!r} uses provider {p.provider!r}", "pool")
        return await call(ctx_of(request).pool_actor(p.id).discover.remote(), 60)  # type: ignore[no-any-return]
    try:
        cls = get_adapter_class(name)
    except PermanentProviderError as exc:
        raise ApiError(404, "provider_not_found", str(exc)) from exc
    adapter = cls("discover", {}, ctx_of(request).cfg.data_dir)
    try:
        offers = await asyncio.wait_for(adapter.discover_resources(), 60)
    except (ProviderError, TimeoutError) as exc:
        raise ApiError(502, "provider_error", f"{name}: {exc}") from exc
    finally:
        await adapter.close()
    return [asdict(o) for o in offers]


# ---------------------------------------------------------------- model registry
@router.post("/model-registry", status_code=201)
async def register_model(body: ModelCreate, request: Request) -> dict[str, Any]:
    rec = ModelRecord(id=new_id("model"), **body.model_dump())
    try:
        rec = await store_of(request).insert_model(rec)
    except DuplicateError as exc:
        raise ApiError(409, "duplicate", f"a model named {body.name!r} already exists", "name") from exc
    return rec.to_dict()


@router.get("/model-registry")
async def list_models(request: Request) -> list[dict[str, Any]]:
    return [m.to_dict() for m in await store_of(request).list_models()]


@router.get("/model-registry/{name}")
async def get_model(name: str, request: Request) -> dict[str, Any]:
    m = await store_of(request).get_model(name)
    if m is None:
        raise not_found("model", name)
    return m.to_dict()


@router.delete("/model-registry/{name}")
async def delete_model(name: str, request: Request) -> dict[str, Any]:
    store = store_of(request)
    m = await store.get_model(name)
    if m is None:
        raise not_found("model", name)
    try:
        await store.delete_model(m.id)
    except ConflictError as exc:
        raise ApiError(409, "model_in_use", str(exc)) from exc
    return {"id": m.id, "deleted": True}


# ---------------------------------------------------------------- deployments
async def _dep(store: Store, dep_id: str) -> DeploymentRecord:
    d = await store.get_deployment(dep_id)
    if d is None:
        raise not_found("deployment", dep_id)
    return d


async def _names(store: Store) -> dict[str, str]:
    """id -> name of every model and pool (one query each, not two per deployment)."""
    out = {m.id: m.name for m in await store.list_models()}
    out.update({p.id: p.name for p in await store.list_pools(include_deleted=True)})
    return out


async def _dep_out(
    request: Request,
    d: DeploymentRecord,
    nodes: list[dict[str, Any]] | None = None,
    names: dict[str, str] | None = None,
    rollouts: tuple[dict[str, Any], dict[str, int]] | None = None,
) -> dict[str, Any]:
    out = d.public()
    if names is None:
        names = await _names(store_of(request))
    out["model"] = names.get(d.model_id)
    out["pool"] = names.get(d.pool_id)
    if nodes is None:
        nodes = await call(ctx_of(request).inventory().nodes.remote(True), 30)
    reps = [
        {k: n[k] for k in ("id", "state", "endpoint", "health_score", "reason", "engine_ready")}
        # the engine's own queue from its last heartbeat (engine_running, engine_waiting, engine_kv_cache)
        | {"engine": {k: v for k, v in (n.get("metrics") or {}).items() if k.startswith("engine_")} or None}
        for n in nodes
        if n.get("deployment_id") == d.id and n["state"] != "terminated"
    ]
    out["replicas"] = reps
    out["ready_replicas"] = sum(1 for r in reps if r["state"] == "ready" and r["engine_ready"])
    # issue 12: replica generations, current generation, the roll-out's progress and last failure
    rollout_api.describe(out, d, nodes, rollouts or await rollout_api.preload(store_of(request), [d.id]))
    return out


@router.post("/deployments", status_code=202)
async def create_deployment(body: DeploymentCreate, request: Request) -> dict[str, Any]:
    store = store_of(request)
    model = await store.get_model(body.model)
    if model is None:
        raise ApiError(404, "model_not_found", f"model {body.model!r} is not in the registry", "model")
    pool = await store.get_pool(body.pool)
    if pool is None:
        raise ApiError(404, "pool_not_found", f"pool {body.pool!r} not found", "pool")
    if pool.state != PoolState.ACTIVE:
        raise ApiError(409, "pool_not_active", f"pool {pool.name!r} is {pool.state}", "pool")
    replicas, policy = body.replicas, None
    if body.autoscaling is not None:
        policy = autoscaling_api.merged_policy(body.autoscaling)
        # the initial target: the one given, else min_replicas (0 waits for the first request)
        given = "replicas" in body.model_fields_set
        replicas = autoscaling_api.check_target(replicas, policy) if given else policy.min_replicas
    key = new_secret("ik")  # the client's key: only its hash is stored
    rec = DeploymentRecord(
        id=new_id("dep"),
        model_id=model.id,
        pool_id=pool.id,
        desired_replicas=replicas,
        state=D.PENDING,
        inference_key=new_secret("ek"),  # the engines' key, never shown (sealed at rest)
        inference_key_hash=hash_secret(key),
        rate_limit_rpm=body.rate_limit_rpm,
        autoscaling=policy.to_dict() if policy else None,
    )
    try:
        rec = await store.insert_deployment(rec)  # refused when the pool stopped being active meanwhile
    except ConflictError as exc:
        raise ApiError(409, "pool_not_active", f"pool {pool.name!r} is being deleted", "pool") from exc
    await call(ctx_of(request).deployments().notify.remote(), 30)
    out = await _dep_out(request, rec, [])
    out["inference_key"] = key  # shown once, never again
    return out


@router.get("/deployments")
async def list_deployments(request: Request) -> list[dict[str, Any]]:
    nodes = await call(ctx_of(request).inventory().nodes.remote(True), 30)
    names = await _names(store_of(request))
    rollouts = await rollout_api.preload(store_of(request), None)
    return [await _dep_out(request, d, nodes, names, rollouts) for d in await store_of(request).list_deployments()]


@router.get("/deployments/{dep_id}")
async def get_deployment(dep_id: str, request: Request) -> dict[str, Any]:
    return await _dep_out(request, await _dep(store_of(request), dep_id))


@router.patch("/deployments/{dep_id}", status_code=202)
async def patch_deployment(dep_id: str, body: DeploymentPatch, request: Request) -> dict[str, Any]:
    store = store_of(request)
    d = await _dep(store, dep_id)
    updated: DeploymentRecord | None = d
    if "rate_limit_rpm" in body.model_fields_set:
        updated = await store.set_rate_limit(d.id, body.rate_limit_rpm)
        ctx_of(request).limiter.set_limit(d.id, body.rate_limit_rpm)
        ctx_of(request).keys.invalidate()  # the key index carries the limit: read it again
    if "autoscaling" in body.model_fields_set:
        # set, change (merged with the current policy) or, with null, remove; the target moves into the bounds
        policy = None if body.autoscaling is None else autoscaling_api.merged_policy(body.autoscaling, d.autoscaling)
        target = body.replicas
        if policy is not None:
            target = (
                autoscaling_api.check_target(body.replicas, policy)
                if body.replicas is not None
                else autoscaling_api.clamp(d.desired_replicas, policy)
            )
        updated = await store.set_autoscaling(d.id, policy.to_dict() if policy else None, target)
        if updated is None:
            raise not_found("deployment", dep_id)
        await call(ctx_of(request).deployments().notify.remote(), 30)
    elif body.replicas is not None:
        if d.autoscaling:
            autoscaling_api.check_target(body.replicas, AutoscalingPolicy.from_dict(d.autoscaling))
        updated = await store.set_desired(d.id, body.replicas)
        if updated is None:
            raise ApiError(409, "deployment_not_active", f"deployment {dep_id} is {d.state}; start it first")
        await call(ctx_of(request).deployments().notify.remote(), 30)
    if rollout_api.wants_update(body):  # model/args/env/image: a new generation, rolled out (issue 12)
        updated = await rollout_api.start_update(store, updated or d, body)
        await call(ctx_of(request).deployments().notify.remote(), 30)
    return await _dep_out(request, updated or d)


@router.post("/deployments/{dep_id}/rollback", status_code=202)
async def rollback_deployment(dep_id: str, request: Request, body: RollbackIn | None = None) -> dict[str, Any]:
    """Back to the previous generation: a roll-out in progress stops (its new replicas go, the old ones stay);
    otherwise a new generation with the previous one's spec is rolled out."""
    store = store_of(request)
    d = await rollout_api.rollback(store, await _dep(store, dep_id), body.strategy if body else None)
    await call(ctx_of(request).deployments().notify.remote(), 30)
    return await _dep_out(request, d)


@router.post("/deployments/{dep_id}/rotate-key")
async def rotate_key(dep_id: str, request: Request) -> dict[str, Any]:
    """A new inference key, shown this once; the old one is refused from now on. The engines keep their own
    key (the engine key, which clients never see), so no replica restarts and no request fails."""
    store = store_of(request)
    d = await _dep(store, dep_id)
    key = new_secret("ik")
    updated = await store.set_inference_key_hash(d.id, hash_secret(key))
    if updated is None:
        raise not_found("deployment", dep_id)
    ctx_of(request).forget_key(d.id)
    await ctx_of(request).keys.reload()  # this replica refuses the old key from the answer on
    out = await _dep_out(request, updated)
    out["inference_key"] = key  # shown once, never again
    return out


async def _transition(request: Request, dep_id: str, frm: set[DeploymentState], to: DeploymentState) -> dict[str, Any]:
    store = store_of(request)
    d = await _dep(store, dep_id)
    if d.state == to:
        return await _dep_out(request, d)
    if d.state not in frm:
        raise ApiError(409, "invalid_state", f"deployment {dep_id} is {d.state}; cannot go to {to}")
    if to == D.DEPLOYING:
        await call(ctx_of(request).deployments().reset.remote(d.id), 30)
    updated = await store.cas_deployment(d.id, frm, to)  # from any allowed state: the reconciler moves between them
    if updated is None:
        raise ApiError(409, "conflict", f"deployment {dep_id} changed concurrently; retry")
    await call(ctx_of(request).deployments().notify.remote(), 30)
    return await _dep_out(request, updated)


@router.post("/deployments/{dep_id}/stop", status_code=202)
async def stop_deployment(dep_id: str, request: Request) -> dict[str, Any]:
    if (await _dep(store_of(request), dep_id)).state in (D.STOPPING, D.STOPPED):
        return await get_deployment(dep_id, request)
    return await _transition(request, dep_id, set(DEPLOYMENT_ACTIVE) | {D.FAILED}, D.STOPPING)


@router.post("/deployments/{dep_id}/start", status_code=202)
async def start_deployment(dep_id: str, request: Request) -> dict[str, Any]:
    d = await _dep(store_of(request), dep_id)
    if d.state in DEPLOYMENT_ACTIVE:
        return await _dep_out(request, d)
    return await _transition(request, dep_id, {D.STOPPED, D.FAILED}, D.DEPLOYING)


@router.delete("/deployments/{dep_id}", status_code=202)
async def delete_deployment(dep_id: str, request: Request, response: Response) -> dict[str, Any]:
    """Deletes at once from stopped/failed with no node left; otherwise stops first and deletes when stopped."""
    store = store_of(request)
    d = await _dep(store, dep_id)
    await store.request_delete(d.id)
    # from whichever active state it is in now (the reconciler moves it between them, e.g. degraded -> running,
    # so not from the state read above); the reconciler also stops a deployment marked for deletion itself
    if (stopped := await store.cas_deployment(d.id, DEPLOYMENT_ACTIVE, D.STOPPING)) is not None:
        d = stopped
    await call(ctx_of(request).deployments().notify.remote(), 30)
    return {
        "id": d.id,
        "state": str(D.STOPPING if d.state not in DEPLOYMENT_DELETABLE else d.state),
        "delete_requested": True,
    }


@router.get("/deployments/{dep_id}/logs")
async def deployment_logs(dep_id: str, request: Request, tail: int = Query(50, ge=1, le=5000)) -> dict[str, Any]:
    d = await _dep(store_of(request), dep_id)
    nodes = await call(ctx_of(request).inventory().nodes.remote(True), 30)
    pool = ctx_of(request).pool_actor(d.pool_id)
    out: dict[str, list[str]] = {}
    for n in nodes:
        if n.get("deployment_id") == d.id and n["state"] != "terminated":
            out[n["id"]] = await call(pool.get_logs.remote(n["id"], tail), 30)
    return {"deployment_id": d.id, "nodes": out}
