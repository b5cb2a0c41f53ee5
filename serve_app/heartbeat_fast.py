"""POST /inventory/heartbeat at the ASGI level: the node agents' hot path, with the FastAPI route's semantics.

The data port's front app (serve_app/app.py) hands heartbeats here once the replica's context has started
(before that, FastAPI answers, which starts it). Everything a client sees is what the FastAPI route
(serve_app/routes_data.py) answers, which shares `answer` and `parse_beat` with this module: status codes,
the JSON error shape of serve_app/errors.py, the 413 of the body limit, the field names in 422 messages.

The cost removed (measured with py-spy, docs/PERFORMANCE.md): FastAPI's routing, dependency and middleware
layers, Starlette's Request and JSONResponse, and the per-beat pydantic model. `parse_beat` checks the fields
of an ordinary beat by hand (types, bounds, the identity rule) and builds the inventory's dict directly; any
beat it does not accept as it is (a wrong type, a value out of bounds, a coercion pydantic would do, a
missing identity) goes through the pydantic model `HeartbeatIn` itself, so the accepted values and every
error message are pydantic's.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from pydantic import ValidationError

from serve_app import metrics as metrics_mod
from serve_app.context import AppContext
from serve_app.errors import ApiError
from serve_app.proxy import MAX_BODY_BYTES
from serve_app.schemas import HeartbeatIn

log = logging.getLogger(__name__)

HEARTBEAT_PATH = "/inventory/heartbeat"
MAX_BATCH = 10_000
_HB_CODES = {403: "forbidden", 404: "node_not_found", 409: "endpoint_refused", 410: "node_gone"}

# the limits of HeartbeatIn (serve_app/schemas.py); tests/unit/test_heartbeat_fast.py checks that they agree
_STR_MAX = {
    "node_id": 128,
    "provider": 64,
    "provider_instance_id": 256,
    "previous_provider_instance_id": 256,
    "token": 256,
    "reason": 1000,
}
_MAXF = sys.float_info.max
_METRIC_MAX = {
    "cpu_percent": _MAXF,
    "ram_used_mb": _MAXF,
    "gpu_util": _MAXF,
    "gpu_mem_used_mb": _MAXF,
    "engine_running": 1e9,
    "engine_waiting": 1e9,
    "engine_kv_cache": 1.0,
}
_STATES = frozenset({"starting", "ready", "failed"})
_START_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_URL = re.compile(r"https?://")
_SEQ_MAX = 2**63 - 1


def _fast(item: dict[str, Any], header_token: str | None) -> dict[str, Any] | None:
    """The inventory's dict for a beat whose fields are all of the exact type and within bounds, else None."""
    core: dict[str, Any] = {
        "token": None,
        "node_id": None,
        "provider": None,
        "provider_instance_id": None,
        "previous_provider_instance_id": None,
        "state": "ready",
        "health_score": 100,
        "endpoint": None,
        "reason": None,
        "metrics": {},
        "seq": None,
        "start_id": None,
    }
    metrics: dict[str, float] = core["metrics"]
    for k, v in item.items():
        if v is None:
            if k == "state" or k == "health_score":
                return None
            continue  # a nullable field's default (None, or absent from metrics), or an unknown field
        limit = _STR_MAX.get(k)
        if limit is not None:
            if type(v) is not str or len(v) > limit:
                return None
            core[k] = v
            continue
        top = _METRIC_MAX.get(k)
        if top is not None:
            t = type(v)
            if t is int:
                if not -(2**53) <= v <= 2**53:  # exactly representable: float(v) is what pydantic gives
                    return None
                v = float(v)
            elif t is not float:
                return None
            if not 0.0 <= v <= top:  # NaN and inf fail here
                return None
            metrics[k] = v
            continue
        if k == "state":
            if type(v) is not str or v not in _STATES:
                return None
            core[k] = v
        elif k == "health_score":
            if type(v) is not int or not 0 <= v <= 100:
                return None
            core[k] = v
        elif k == "endpoint":
            if type(v) is not str or len(v) > 512 or not _URL.match(v):
                return None
            core[k] = v
        elif k == "seq":
            if type(v) is not int or not 0 <= v <= _SEQ_MAX:
                return None
            core[k] = v
        elif k == "start_id":
            if type(v) is not str or not _START_ID.fullmatch(v):
                return None
            core[k] = v
    if not core["node_id"] and not (core["provider"] and core["provider_instance_id"]):
        return None
    core["token"] = core["token"] or header_token
    return core


def parse_beat(item: Any, prefix: str, header_token: str | None) -> dict[str, Any]:
    """One beat as the inventory's dict (HeartbeatIn.to_core), or ApiError 422 naming the field (prefixed
    with `prefix`, e.g. "heartbeats.3", in a batch)."""
    if not isinstance(item, dict):
        raise ApiError(422, "invalid_request", f"{prefix or 'body'}: must be an object", prefix or "body")
    core = _fast(item, header_token)
    if core is not None:
        return core
    try:
        return HeartbeatIn.model_validate(item).to_core(header_token)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        field = ".".join(p for p in (prefix, loc) if p) or prefix or "body"
        raise ApiError(422, "invalid_request", f"{field}: {e['msg']}", field) from exc


def decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise ApiError(422, "invalid_request", "body: malformed JSON", "body") from exc


async def answer(ctx: AppContext, body: Any, token: str | None) -> dict[str, Any]:
    """The 200 answer to one heartbeat or a {"heartbeats": [...]} batch (each item may carry its node's
    token); ApiError for a refused single beat or bad input."""
    if isinstance(body, dict) and "heartbeats" in body:
        items = body["heartbeats"]
        if not isinstance(items, list):
            raise ApiError(422, "invalid_request", "heartbeats: must be a list", "heartbeats")
        if len(items) > MAX_BATCH:
            raise ApiError(422, "invalid_request", f"heartbeats: at most {MAX_BATCH} per request", "heartbeats")
        beats = [parse_beat(it, f"heartbeats.{i}", token) for i, it in enumerate(items)]
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
    beat = parse_beat(body, "", token)
    if not beat["token"]:
        raise ApiError(401, "unauthorized", "missing node token (Authorization: Bearer <node token>)")
    ctx.counters.heartbeat_requests += 1
    status, node_id, msg = await ctx.heartbeats.submit(beat)
    metrics_mod.observe_heartbeats((status,))
    if status != 200:
        raise ApiError(status, _HB_CODES.get(status, "error"), msg or "refused")
    return {"ok": True, "node_id": node_id, "interval_s": ctx.cfg.heartbeat_interval_s}


def bearer_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """serve_app/auth.py `bearer` on raw ASGI headers (the first Authorization header, as Starlette reads it)."""
    for name, value in headers:
        if name == b"authorization":
            auth = value.decode("latin-1")
            if auth[:7].lower() == "bearer ":
                return auth[7:].strip() or None
            return None
    return None


def render(content: Any) -> bytes:
    """Starlette's JSONResponse.render, byte for byte."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


async def _send(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def _too_large(max_bytes: int) -> bytes:
    # what BodyLimit (serve_app/app.py) answers: json.dumps with its default separators
    return json.dumps(
        {"code": "payload_too_large", "message": f"request body larger than {max_bytes} bytes", "field": "body"}
    ).encode()


async def _read(scope: Any, receive: Any, max_bytes: int) -> bytes | None:
    """The whole body; None when the client went away; raises _Oversized past max_bytes."""
    length = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
            break
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise _Oversized
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > max_bytes:
            raise _Oversized
        return body
    parts, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _Oversized
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


class _Oversized(Exception):
    pass


async def handle(ctx: AppContext, scope: Any, receive: Any, send: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
    """One POST /inventory/heartbeat exchange on a started context."""
    try:
        raw = await _read(scope, receive, max_bytes)
    except _Oversized:
        await _send(send, 413, _too_large(max_bytes))
        return
    if raw is None:
        return  # the client is gone
    try:
        out = await answer(ctx, decode(raw), bearer_of(scope["headers"]))
    except ApiError as exc:
        await _send(send, exc.status, render(exc.body()))
        return
    except OSError as exc:  # the inventory call timed out (TimeoutError): as serve_app/errors.py answers it
        body = {"code": "unavailable", "message": f"a backing service is unavailable ({type(exc).__name__}); retry"}
        await _send(send, 503, render(body), [(b"retry-after", b"2")])
        return
    except Exception:
        log.exception("heartbeat: unexpected error")
        body_500 = b"Internal Server Error"  # what Starlette's ServerErrorMiddleware answers
        headers = [(b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "http.response.start", "status": 500, "headers": headers})
        await send({"type": "http.response.body", "body": body_500})
        return
    await _send(send, 200, render(out))
