"""Hot paths: heartbeats (batched into one actor call per flush), routing table reads, inference proxy."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from actors.records import hash_secret
from actors.token_store import Scope, covers
from serve_app import heartbeat_fast, openai_errors
from serve_app import metrics as metrics_mod
from serve_app.auth import require_gateway, require_metrics
from serve_app.context import AppContext, bearer

router = APIRouter()


def ctx_of(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


@router.post("/inventory/heartbeat")
async def heartbeat(request: Request) -> Any:
    """One heartbeat, or {"heartbeats": [...]} for many (each item may carry its node's token). On the data
    port, serve_app/heartbeat_fast.py answers it at the ASGI level with the same functions."""
    body = heartbeat_fast.decode(await request.body())
    return await heartbeat_fast.answer(ctx_of(request), body, bearer(request))


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
# The proxy works at the ASGI level (serve_app/proxy.py): on the data port the front app (serve_app/app.py)
# hands these two paths to it before FastAPI; through Serve's proxy port these routes do the same.
class _Proxied(Response):
    """A response that is the proxy's whole ASGI exchange (it reads the body and answers by itself)."""

    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.ctx = ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Serve cancels the request when its client goes away: no disconnect watch needed here
        await self.ctx.proxy.handle(scope, receive, send, watch_client=False)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions (streamed with `"stream": true`), answered by a replica of the model."""
    return _Proxied(ctx_of(request))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """OpenAI completions (streamed with `"stream": true`), answered by a replica of the model."""
    return _Proxied(ctx_of(request))


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The models this token may use: a deployment's key sees its own, gateway and admin tokens all."""
    ctx = ctx_of(request)
    token = bearer(request)
    if token is None:
        raise openai_errors.missing_key()
    routed = ctx.routing.table["models"]
    digest = hash_secret(token)
    ctx.keys.note_version(ctx.routing.version)
    grant = ctx.keys.get(digest)
    if grant is None:
        scope = await ctx.tokens.scope_of(token)
        if scope is not None and covers(scope, Scope.GATEWAY):
            names = sorted(set(routed) | ctx.keys.models)
            return _model_list([(n, len(routed.get(n, []))) for n in names])
        try:
            grant = await ctx.keys.lookup_miss(digest)
        except Exception as exc:
            raise openai_errors.unavailable(type(exc).__name__) from exc
        if grant is None:
            raise openai_errors.invalid_key()
    mine = [e for e in routed.get(grant.model, []) if e.get("deployment_id") == grant.deployment_id]
    return _model_list([(grant.model, len(mine))])


def _model_list(models: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "owned_by": "inferia", "replicas": k} for n, k in models],
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
