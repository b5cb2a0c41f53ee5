"""The FastAPI application and its Ray Serve ingress deployment."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from ray import serve

from actors.runtime import RuntimeConfig, setup_logging
from serve_app import context, errors, routes_admin, routes_data
from serve_app.context import AppContext

API_DEPLOYMENT = "inferia-api"
APP_NAME = "inferia"


async def _started(request: Request) -> None:
    ctx: AppContext | None = getattr(request.app.state, "ctx", None)
    if ctx is None:
        ctx = request.app.state.ctx = context.CURRENT[0]
    if not ctx.started:
        await ctx.start()


def create_app(ctx: AppContext | None) -> FastAPI:
    app = FastAPI(
        dependencies=[Depends(_started)],
        title="inferia-orchestration",
        version="0.1.0",
        description="Control plane API: pools, nodes, model registry, deployments, heartbeats, routing table, "
        "and an OpenAI-compatible proxy.",
    )
    if ctx is not None:
        app.state.ctx = ctx
    errors.install(app)
    app.include_router(routes_admin.router)
    app.include_router(routes_data.router)
    return app


app = create_app(None)


@serve.deployment(
    name=API_DEPLOYMENT,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=2000,
    logging_config={"enable_access_log": False},
)
@serve.ingress(app)
class ApiIngress:
    """One Serve replica: its AppContext holds storage, caches and the heartbeat batcher."""

    def __init__(self, cfg: dict[str, Any], api_token_hash: str) -> None:
        rc = RuntimeConfig(**cfg)
        setup_logging(rc.log_level)
        self.ctx = AppContext(rc, api_token_hash)
        # Serve pickles this class by value: reach the shared slot through a real import
        from serve_app import context as shared

        shared.CURRENT[:] = [self.ctx]


def build(cfg: RuntimeConfig, api_token_hash: str) -> Any:
    return ApiIngress.bind(cfg.to_dict(), api_token_hash)  # type: ignore[attr-defined]
