"""The FastAPI application and its Ray Serve ingress deployment."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.runtime import RuntimeConfig, setup_logging
from serve_app import (
    context,
    errors,
    event_loop,
    heartbeat_fast,
    openai_errors,
    routes_admin,
    routes_data,
    routes_tokens,
)
from serve_app.context import AppContext
from serve_app.errors import ApiError
from serve_app.http_protocol import CoalescingHttpToolsProtocol
from serve_app.proxy import MAX_BODY_BYTES, PROXY_PATHS

log = logging.getLogger(__name__)

API_DEPLOYMENT = "inferia-api"
APP_NAME = "inferia"
UI_DIR = Path(__file__).resolve().parent / "ui"


_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# MAX_BODY_BYTES (serve_app/proxy.py): the largest request body accepted, on every route


class _TooLarge(StarletteHTTPException):
    """Raised while reading a chunked body; an HTTPException so that FastAPI's body parsing lets it through
    to the JSON error handler (serve_app/errors.py) instead of turning it into a 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body larger than {max_bytes} bytes")


class BodyLimit:
    """ASGI middleware: 413 `payload_too_large` (the JSON error shape) for a body over max_bytes, checked
    on Content-Length before reading and while reading a chunked body."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PROXY_PATHS:  # the proxy bounds its body (OpenAI shape)
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {
                "code": "payload_too_large",
                "message": f"request body larger than {self.max_bytes} bytes",
                "field": "body",
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _started(request: Request) -> None:
    for name, value in request.path_params.items():
        if not _ID.fullmatch(str(value)):  # no id or name of ours looks like this: it cannot exist
            raise ApiError(404, "not_found", f"{name} {str(value)[:64]!r} not found", name)
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
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    # the hot routes first: Starlette matches routes in order, so a routing-table read does not try the
    # admin API's ~30 patterns before its own
    app.include_router(routes_data.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_tokens.router)
    # the web console: static files only (no data without the admin token, which the page asks for)
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    return app


app = create_app(None)


class DataPortApp:
    """The data port's ASGI app: POSTs to the OpenAI proxy paths go straight to the proxy (no FastAPI routing,
    dependencies or middleware on the hot path, serve_app/proxy.py), heartbeats to serve_app/heartbeat_fast.py
    (the same answers as the FastAPI route); everything else to the FastAPI app."""

    def __init__(self, api: FastAPI) -> None:
        self.api = api

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in PROXY_PATHS and scope["method"] == "POST":
            ctx: AppContext | None = getattr(self.api.state, "ctx", None)
            if ctx is None:
                ctx = self.api.state.ctx = context.CURRENT[0]
            if not ctx.started:
                try:
                    await ctx.start()
                except Exception as exc:  # the database or the inventory is not reachable yet
                    await openai_errors.unavailable(type(exc).__name__).send(send)
                    return
            await ctx.proxy.handle(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == heartbeat_fast.HEARTBEAT_PATH and scope["method"] == "POST":
            ctx = getattr(self.api.state, "ctx", None) or context.CURRENT[0]
            if ctx.started:  # else FastAPI answers, which starts the context (and its errors are FastAPI's)
                await heartbeat_fast.handle(ctx, scope, receive, send)
                return
        await self.api(scope, receive, send)


@serve.deployment(
    name=API_DEPLOYMENT,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0, "runtime_env": event_loop.RUNTIME_ENV},
    max_ongoing_requests=2000,
    logging_config={"enable_access_log": False},
)
@serve.ingress(app)
class ApiIngress:
    """One Serve replica (of INFERIA_API_REPLICAS): its AppContext holds storage, caches and the heartbeat
    batcher.

    Besides Serve's proxy (api_port), the replica serves the same app on its own port (data_port):
    the hot paths (heartbeats, routing-table reads, the inference proxy) skip the proxy actor hop.
    """

    async def __init__(self, cfg: dict[str, Any], api_token_hash: str) -> None:  # type: ignore[misc]  # Serve awaits it
        rc = RuntimeConfig(**cfg)
        setup_logging(rc.log_level)
        log.info("API replica event loop: %s", type(asyncio.get_running_loop()).__module__)
        self.ctx = AppContext(rc, api_token_hash)
        # Serve pickles this class by value: reach the shared slot through a real import
        from serve_app import context as shared

        shared.CURRENT[:] = [self.ctx]
        self._data_task: asyncio.Task[None] | None = None
        if rc.data_port:
            sock = bind_reusable(rc.api_host, rc.data_port)
            # no proxy headers: clients are agents, gateways and SDKs (and the parsing costs per request)
            # the protocol sends each loop turn's writes at once: an answer's head and body in one send
            config = uvicorn.Config(
                DataPortApp(app),
                log_level="warning",
                access_log=False,
                lifespan="off",
                proxy_headers=False,
                http=CoalescingHttpToolsProtocol,
            )
            self._data_server = uvicorn.Server(config)
            self._data_task = asyncio.get_running_loop().create_task(self._data_server.serve(sockets=[sock]))

    async def check_health(self) -> None:
        if self._data_task is not None and self._data_task.done():
            raise RuntimeError("the data-plane HTTP server stopped")


def bind_reusable(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so (uvloop does it on any)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # SO_REUSEPORT: the API replicas on one machine (INFERIA_API_REPLICAS) all listen on the data port, and the
    # kernel spreads new connections over them; one replica gone, the others keep accepting
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"data port {host}:{port} is not free: {exc}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def build(cfg: RuntimeConfig, api_token_hash: str, replicas: int = 1) -> Any:
    """The ingress application: `replicas` API replicas (INFERIA_API_REPLICAS), each with its own context
    (caches, batcher, hold queue) and all sharing the data port of their machine."""
    deployment = ApiIngress.options(num_replicas=replicas)  # type: ignore[attr-defined]
    return deployment.bind(cfg.to_dict(), api_token_hash)
