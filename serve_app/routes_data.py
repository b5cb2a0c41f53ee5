"""Hot paths: heartbeats (batched into one actor call per flush), routing table reads, inference proxy."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError

from actors.token_store import Scope, covers
from serve_app import metrics as metrics_mod
from serve_app.auth import require_gateway, require_metrics
from serve_app.context import AppContext, bearer
from serve_app.errors import ApiError
from serve_app.schemas import HeartbeatIn

router = APIRouter()

_HB_CODES = {403: "forbidden", 404: "node_not_found", 409: "endpoint_refused", 410: "node_gone"}


def ctx_of(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", "body: malformed JSON", "body") from exc


def _parse_beat(item: Any, prefix: str) -> HeartbeatIn:
    if not isinstance(item, dict):
        raise ApiError(422, "invalid_request", f"{prefix or 'body'}: must be an object", prefix or "body")
    try:
        return HeartbeatIn.model_validate(item)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        field = ".".join(p for p in (prefix, loc) if p) or prefix or "body"
        raise ApiError(422, "invalid_request", f"{field}: {e['msg']}", field) from exc


@router.post("/inventory/heartbeat")
async def heartbeat(request: Request) -> Any:
    """One heartbeat, or {"heartbeats": [...]} for many (each item may carry its node's token)."""
    ctx = ctx_of(request)
    body = await _json(request)
    token = bearer(request)
    if isinstance(body, dict) and "heartbeats" in body:
        items = body["heartbeats"]
        if not isinstance(items, list):
            raise ApiError(422, "invalid_request", "heartbeats: must be a list", "heartbeats")
        if len(items) > 10_000:
            raise ApiError(422, "invalid_request", "heartbeats: at most 10000 per request", "heartbeats")
        beats = [_parse_beat(it, f"heartbeats.{i}").to_core(token) for i, it in enumerate(items)]
        ctx.counters.heartbeat_requests += 1
        results = await ctx.heartbeats.submit_many(beats)
        metrics_mod.observe_heartbeats(st for st, _, _ in results)
        return {
            "interval_s": ctx.cfg.heartbeat_interval_s,
            "results": [
                {"node_id": nid or b.get("node_id"), "status": st, **({"message": msg} if st != 200 else {})}
                for b, (st, nid, msg) in zip(beats, results, strict=True)
            ],
        }
    hb = _parse_beat(body, "")
    if not (hb.token or token):
        raise ApiError(401, "unauthorized", "missing node token (Authorization: Bearer <node token>)")
    ctx.counters.heartbeat_requests += 1
    status, node_id, msg = await ctx.heartbeats.submit(hb.to_core(token))
    metrics_mod.observe_heartbeats((status,))
    if status != 200:
        raise ApiError(status, _HB_CODES.get(status, "error"), msg or "refused")
    return {"ok": True, "node_id": node_id, "interval_s": ctx.cfg.heartbeat_interval_s}


@router.get("/v1/routing-table")
async def routing_table(
    request: Request,
    wait: bool = False,
    timeout: float = Query(30.0, ge=0, le=300),
    version: int | None = None,
) -> Response:
    """ETag = version; If-None-Match -> 304; ?wait=1 long-polls until the version differs."""
    await require_gateway(request)
    ctx = ctx_of(request)
    rc = ctx.routing
    if not rc.synced.is_set():
        await rc.wait_newer(-1, 10)
    known = version
    inm = request.headers.get("if-none-match")
    if known is None and inm:
        try:
            known = int(inm.strip().strip('"').removeprefix("W/").strip('"'))
        except ValueError:
            known = None
    if wait and known is not None and known == rc.version:
        await rc.wait_newer(known, timeout)
    etag = f'"{rc.version}"'
    if inm is not None and inm.strip() == etag:
        return Response(status_code=304, headers={"etag": etag})
    return Response(rc.body, media_type="application/json", headers={"etag": etag, "cache-control": "no-cache"})


# ---------------------------------------------------------------- OpenAI-compatible proxy
async def _proxy_auth(request: Request, model: str | None) -> None:
    ctx = ctx_of(request)
    token = bearer(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token (a deployment's inference key or the API token)")
    if await ctx.admin(token):
        return
    if dep_id := await ctx.inference_key_valid(token, model):
        await ctx.limiter.check(dep_id)  # 429 over the deployment's rate_limit_rpm
        return
    raise ApiError(403, "forbidden", "the key is not valid for this model")


async def _forward(request: Request, path: str) -> Response:
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "body: must be an object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(422, "invalid_request", "model: field required", "model")
    await _proxy_auth(request, model)
    return await ctx_of(request).proxy.forward(path, body)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _forward(request, "/v1/chat/completions")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _forward(request, "/v1/completions")


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    token = bearer(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token")
    ctx = ctx_of(request)
    names = sorted(ctx.routing.table["models"])
    scope = await ctx.tokens.scope_of(token)
    if scope is None or not covers(scope, Scope.GATEWAY):  # gateway and admin tokens see every model
        names = [n for n in names if await ctx.inference_key_valid(token, n)]
        if not names:
            raise ApiError(403, "forbidden", "the key is not valid for any served model")
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "owned_by": "inferia", "replicas": len(ctx.routing.endpoints(n))}
            for n in names
        ],
    }


# ---------------------------------------------------------------- health and metrics
@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    ctx = ctx_of(request)
    assert ctx.store is not None
    await ctx.store.pool.fetchval("SELECT 1")
    return {"status": "ok", "routing_version": ctx.routing.version}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format, rendered by prometheus_client from this replica's registry (serve_app/metrics.py)."""
    await require_metrics(request)
    return Response(await ctx_of(request).metrics.render(), media_type=metrics_mod.CONTENT_TYPE)
