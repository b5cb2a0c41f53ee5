"""OpenAI-compatible proxy over the routing table: least outstanding requests, streaming passed through."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve_app.errors import ApiError
from serve_app.routing_cache import RoutingCache

log = logging.getLogger(__name__)

KeyLookup = Callable[[str], Awaitable[str | None]]


class InferenceProxy:
    def __init__(self, routing: RoutingCache, key_for: KeyLookup, timeout_s: float = 300.0) -> None:
        self.routing = routing
        self.key_for = key_for
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0), trust_env=False)
        self.outstanding: dict[str, int] = {}
        self.requests_total = 0
        self.failures_total = 0

    async def close(self) -> None:
        await self.client.aclose()

    def pick(self, model: str, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        candidates = [e for e in self.routing.endpoints(model) if e["node_id"] not in exclude]
        if not candidates:
            if model not in self.routing.table["models"] and not exclude:
                raise ApiError(
                    503,
                    "no_healthy_endpoint",
                    f"model {model!r} has no healthy endpoint (not deployed, or no replica is ready yet)",
                    "model",
                )
            raise ApiError(503, "no_healthy_endpoint", f"model {model!r} has no healthy endpoint", "model")
        least = min(self.outstanding.get(e["node_id"], 0) for e in candidates)
        best = [e for e in candidates if self.outstanding.get(e["node_id"], 0) == least]
        return random.choice(best)

    async def forward(self, path: str, body: dict[str, Any]) -> Response:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(422, "invalid_request", "model: field required", "model")
        self.requests_total += 1
        tried: set[str] = set()
        last_error = "no endpoint"
        for _ in range(3):  # connection errors fail over to another replica
            ep = self.pick(model, tried)
            tried.add(ep["node_id"])
            try:
                return await self._send(ep, path, body)
            except httpx.TransportError as exc:
                self.failures_total += 1
                last_error = f"{type(exc).__name__} from node {ep['node_id']}"
                log.warning("proxy: %s", last_error)
                if not self.routing.endpoints(model) or all(
                    e["node_id"] in tried for e in self.routing.endpoints(model)
                ):
                    break
        raise ApiError(502, "upstream_unavailable", f"no replica of {model!r} answered: {last_error}")

    async def _send(self, ep: dict[str, Any], path: str, body: dict[str, Any]) -> Response:
        node = ep["node_id"]
        payload = dict(body)
        payload["model"] = ep.get("served_model") or body["model"]
        headers = {"content-type": "application/json"}

        key = await self.key_for(ep["deployment_id"]) if ep.get("deployment_id") else None
        if key:
            headers["authorization"] = f"Bearer {key}"
        url = ep["endpoint"].rstrip("/") + path
        self.outstanding[node] = self.outstanding.get(node, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.outstanding[node] = max(0, self.outstanding.get(node, 1) - 1)

        try:
            req = self.client.build_request("POST", url, content=json.dumps(payload), headers=headers)
            upstream = await self.client.send(req, stream=True)
        except BaseException:
            release()
            raise
        if body.get("stream"):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream.aiter_raw():
                        yield chunk
                finally:
                    await upstream.aclose()
                    release()

            return StreamingResponse(
                relay(),
                status_code=upstream.status_code,
                media_type=upstream.headers.get("content-type", "text/event-stream"),
                headers={"x-inferia-node": node},
            )
        try:
            raw = await upstream.aread()
        finally:
            await upstream.aclose()
            release()
        try:
            data = json.loads(raw)
        except ValueError:
            return Response(raw, status_code=upstream.status_code, headers={"x-inferia-node": node})
        return JSONResponse(data, status_code=upstream.status_code, headers={"x-inferia-node": node})
