"""OpenAI-compatible proxy over the routing table, at the ASGI level (no framework on the hot path).

One request: read the body (bounded), decode it once to read `model` and `stream`, look the bearer token up
in the key index (one SHA-256, one dict probe: the deployment whose key it is), pick the least-loaded of that
deployment's routed replicas, POST the body unchanged (re-encoded only when the replica serves the model
under another name) with the engine key, and relay the answer: whole with its Content-Length, or an event
stream chunk by chunk as the engine writes it. The answer is never decoded.

Upstream: serve_app/upstream.py (chosen by measurement over aiohttp and httpx, docs/PERFORMANCE.md): keep-alive
connections per engine bounded by `max_connections_per_engine`, idle ones closed after `keepalive_s` (below the
usual engine keep-alive of 5 s, so the proxy stops using a connection before the engine closes it), one write
per request, answers parsed by httptools.

Failover: only when the request certainly never reached an engine (the connection could not be made:
refused, unreachable, connect timeout), up to MAX_ATTEMPTS replicas. Once a request was sent, a failure
(read timeout, reset, a disconnect before the answer) is answered 504/502 and never retried: the engine may
have run the generation.

`outstanding[node_id]` counts requests in flight per node, on every path (answered, engine error, timeout,
client gone, cancelled); an entry at 0 is removed, so it is never negative and holds only busy nodes. A
client that goes away (the ASGI `http.disconnect`, watched while the engine works) cancels the upstream
request at once: its connection is closed, which tells the engine to stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from serve_app import openai_errors as oe
from serve_app.balancer import Balancer
from serve_app.hold import HoldQueue
from serve_app.inference_keys import DeploymentKey, KeyIndex
from serve_app.openai_errors import OpenAIError
from serve_app.ratelimit import RateLimited, RateLimiter
from serve_app.routing_cache import RoutingCache
from serve_app.upstream import ConnectFailed, Response, Target, UpstreamClient, UpstreamLost, UpstreamTimeout, target

log = logging.getLogger(__name__)

PROXY_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
MAX_ATTEMPTS = 3
# the largest request body accepted on every route (serve_app/app.py applies it to the others): a batch of
# 10,000 heartbeats (the batch limit) of the usual size is about 3 MB; anything larger is refused with 413
# before it is read into memory
MAX_BODY_BYTES = 8 * 1024 * 1024

IsAdmin = Callable[[str, str], Awaitable[bool]]  # (token, its SHA-256 hex) -> may use every model
Observe = Callable[[str | None, int, float, float | None], None]  # deployment, status, seconds, ttft
Waiting = Callable[[str | None, int], None]  # deployment, +1 sent / -1 answer header arrived

_ADMIN = DeploymentKey("", "", "", None)  # the grant of the admin token: every replica of the model
_JSON_CT = (b"content-type", b"application/json")


@dataclass
class ProxySettings:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0  # the longest silence of an engine (before its answer, or between chunks)
    max_connections_per_engine: int = 1024
    keepalive_s: float = 4.0
    max_body_bytes: int = MAX_BODY_BYTES


class _Call:
    """One request's state: the client's ASGI channels and whether it went away."""

    __slots__ = ("done", "gone", "receive", "send", "started", "task", "watcher")

    def __init__(self, receive: Any, send: Any) -> None:
        self.receive, self.send = receive, send
        self.started = self.done = self.gone = False
        self.task: asyncio.Task[Any] | None = None
        self.watcher: asyncio.Task[None] | None = None

    def watch(self) -> None:
        """Cancel this request's task when the client disconnects (until `done` is set)."""
        self.task = asyncio.current_task()
        self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.done and self.task is not None:
                    self.gone = True
                    self.task.cancel()
                return

    def finish(self) -> None:
        self.done = True
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()


class InferenceProxy:
    def __init__(
        self,
        routing: RoutingCache,
        keys: KeyIndex,
        is_admin: IsAdmin,
        settings: ProxySettings | None = None,
        observe: Observe | None = None,
        waiting: Waiting | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.routing, self.keys, self.is_admin = routing, keys, is_admin
        self.settings = settings or ProxySettings()
        self.observe, self.waiting = observe, waiting
        self.limiter = limiter  # the deployments' rate limits (serve_app/ratelimit.py)
        self.outstanding: dict[str, int] = {}  # node id -> requests in flight (only nodes with some)
        self.balancer = Balancer(self.outstanding)  # its `pressure` is refreshed by the context's load report
        self.hold: HoldQueue | None = None  # set by the context: requests wait there for a first replica
        self.requests_total = 0
        self.failures_total = 0  # connection failures (each one failed over when another replica was left)
        self.timeouts_total = 0
        self.client_gone_total = 0
        s = self.settings
        self.upstream = UpstreamClient(
            s.connect_timeout_s, s.read_timeout_s, s.max_connections_per_engine, s.keepalive_s
        )
        self._table: dict[str, Any] | None = None
        self._by_deployment: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._targets: dict[tuple[str, str], Target] = {}
        self._auth: dict[str, bytes] = {}  # engine key -> its Authorization header value

    async def close(self) -> None:
        await self.upstream.close()

    # ------------------------------------------------------------ routing
    def _index(self) -> dict[str, list[dict[str, Any]]]:
        """The routing table's models, and (model, deployment) -> entries, rebuilt once per table version."""
        table = self.routing.table
        if table is not self._table:
            by_dep: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for model, entries in table["models"].items():
                for e in entries:
                    by_dep.setdefault((model, e.get("deployment_id") or ""), []).append(e)
            self._by_deployment, self._targets, self._table = by_dep, {}, table
        models: dict[str, list[dict[str, Any]]] = table["models"]
        return models

    def pick(
        self, candidates: list[dict[str, Any]], tried: set[str] | None = None, session: bytes | None = None
    ) -> dict[str, Any] | None:
        """Power of two choices on load, or the session's replica within a load bound (serve_app/balancer.py)."""
        return self.balancer.pick(candidates, tried, session)

    def _target(self, endpoint: str, path: str) -> Target:
        to = self._targets.get((endpoint, path))
        if to is None:
            to = self._targets[(endpoint, path)] = target(endpoint, path)
        return to

    def _authorization(self, engine_key: str | None) -> bytes | None:
        if not engine_key:
            return None
        value = self._auth.get(engine_key)
        if value is None:
            if len(self._auth) > 4096:
                self._auth.clear()
            value = self._auth[engine_key] = b"Bearer " + engine_key.encode("latin-1")
        return value

    def _acquire(self, node: str) -> None:
        self.outstanding[node] = self.outstanding.get(node, 0) + 1

    def _release(self, node: str) -> None:
        n = self.outstanding.get(node, 0) - 1
        if n > 0:
            self.outstanding[node] = n
        else:
            self.outstanding.pop(node, None)

    # ------------------------------------------------------------ the request
    async def handle(self, scope: dict[str, Any], receive: Any, send: Any, watch_client: bool = True) -> None:
        """Answer one POST of an OpenAI route (ASGI). `watch_client`: watch for the client's disconnect
        (the data port); Serve's proxy port cancels the request itself when its client goes away."""
        t0 = time.perf_counter()
        call = _Call(receive, send)
        self.requests_total += 1
        grant: DeploymentKey | None = None
        try:
            token = length = session = None
            for k, v in scope["headers"]:
                if k == b"authorization":
                    token = v
                elif k == b"content-length":
                    length = v
                elif k == b"x-session-id":
                    session = v[:256]
            raw = await self._read_body(receive, length)
            if raw is None:  # the client left while sending its body
                self.client_gone_total += 1
                return
            req = _decode(raw)
            model: str = req["model"]
            grant = await self._authorize(token, model)
            if self.limiter is not None and grant is not _ADMIN:
                try:  # the limit came with the key (the key index): no lookup here
                    self.limiter.check(grant.deployment_id, grant.rate_limit_rpm)
                except RateLimited as exc:
                    raise oe.rate_limited(str(exc), exc.retry_after_s) from exc
            if watch_client:
                call.watch()  # before the candidates: a request held for a replica (hold.py) sees its client go
            candidates = await self._candidates(model, grant)
            detail = await self._forward(call, scope["path"], raw, req, model, grant, candidates, t0, session)
            if detail is not None:
                raise oe.upstream_unavailable(model, detail)
        except OpenAIError as err:
            await self._fail(call, err, grant, t0)
        except asyncio.CancelledError:
            if not call.gone:
                raise  # cancelled from outside (Serve's client went away, shutdown): the finally blocks ran
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except Exception as exc:  # a bug: still an OpenAI-shaped answer, never a dropped connection
            log.exception("proxy: unexpected error")
            await self._fail(call, oe.internal(type(exc).__name__), grant, t0)
        finally:
            call.finish()

    async def _fail(self, call: _Call, err: OpenAIError, grant: DeploymentKey | None, t0: float) -> None:
        if self.observe is not None:
            dep = grant.deployment_id if grant is not None and grant is not _ADMIN else None
            self.observe(dep, err.status, time.perf_counter() - t0, None)
        if not call.started:
            call.done = True
            await err.send(call.send)

    async def _read_body(self, receive: Any, length: bytes | None) -> bytes | None:
        limit = self.settings.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise oe.too_large(limit)
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            return None if message["type"] == "http.disconnect" else body
        parts = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise oe.too_large(limit)
            parts.append(chunk)
            if not message.get("more_body"):
                return b"".join(parts)

    async def _authorize(self, token: bytes | None, model: str) -> DeploymentKey:
        """The deployment whose key the token is (one hash, one probe), or _ADMIN; else 401."""
        if token is None or token[:7].lower() != b"bearer " or not token[7:].strip():
            raise oe.missing_key()
        secret = token[7:].strip()
        digest = hashlib.sha256(secret).hexdigest()
        keys = self.keys
        keys.note_version(self.routing.version)
        grant = keys.get(digest)
        if grant is not None:
            return grant
        if await self.is_admin(secret.decode("latin-1"), digest):
            return _ADMIN
        try:
            grant = await keys.lookup_miss(digest)
        except Exception as exc:
            raise oe.unavailable(type(exc).__name__) from exc
        if grant is None:
            raise oe.invalid_key()
        return grant

    async def _candidates(self, model: str, grant: DeploymentKey) -> list[dict[str, Any]]:
        models = self._index()
        if grant is not _ADMIN:
            if model != grant.model:
                if model in models or model in self.keys.models:
                    raise oe.key_for_other_model(model)
                raise oe.model_not_found(model)
            found = self._by_deployment.get((model, grant.deployment_id))
            if not found:
                dep = grant.deployment_id
                return await self._held(model, dep, lambda: (self._index(), self._by_deployment.get((model, dep)))[1])
            return found
        entries = models.get(model)
        if entries:
            return entries
        if model not in self.keys.models:
            try:
                await self.keys.reload()  # a deployment created a moment ago (rare: an admin's unknown model)
            except Exception as exc:
                raise oe.unavailable(type(exc).__name__) from exc
            if model not in self.keys.models:
                raise oe.model_not_found(model)
        deps = sorted(k.deployment_id for k in self.keys.by_deployment.values() if k.model == model)
        return await self._held(model, deps[0] if deps else None, lambda: self._index().get(model))

    async def _held(
        self, model: str, deployment_id: str | None, find: Callable[[], list[dict[str, Any]] | None]
    ) -> list[dict[str, Any]]:
        """No routed replica: wait for one in the hold queue (serve_app/hold.py, scale from zero), else 503."""
        if self.hold is None or deployment_id is None:
            raise oe.no_endpoint(model)
        return await self.hold.wait(deployment_id, model, find)

    async def _forward(
        self,
        call: _Call,
        path: str,
        raw: bytes,
        req: dict[str, Any],
        model: str,
        grant: DeploymentKey,
        candidates: list[dict[str, Any]],
        t0: float,
        session: bytes | None = None,
    ) -> str | None:
        """Try replicas until one takes the request; the reason of the last connection failure when none did."""
        tried: set[str] | None = None
        detail = "no replica left to try"
        for _ in range(MAX_ATTEMPTS):
            ep = self.pick(candidates, tried, session)
            if ep is None:
                break
            dk = grant
            if grant is _ADMIN:
                dep_id = ep.get("deployment_id")
                dk = (await self.keys.deployment(dep_id) if dep_id else None) or _ADMIN
            served = ep.get("served_model") or model
            body = raw
            if served != model:
                try:
                    body = json.dumps({**req, "model": served}, allow_nan=False).encode()
                except ValueError as exc:
                    raise oe.bad_request("body: numbers must be finite", "body") from exc
            failure = await self._exchange(call, ep, path, body, req.get("stream") is True, model, dk, t0)
            if failure is None:
                return None
            detail = failure
            tried = tried or set()
            tried.add(ep["node_id"])
        return detail

    async def _exchange(
        self,
        call: _Call,
        ep: dict[str, Any],
        path: str,
        body: bytes,
        stream: bool,
        model: str,
        dk: DeploymentKey,
        t0: float,
    ) -> str | None:
        """One attempt on one replica: None when the client got an answer (or left), else why the connection
        could not be made (the request never left: safe to try another replica)."""
        node = ep["node_id"]
        dep = dk.deployment_id or ep.get("deployment_id")
        s = self.settings
        resp: Response | None = None
        complete = False
        self._acquire(node)
        waiting = self.waiting
        if waiting is not None:
            waiting(dep, 1)
        try:
            try:
                to = self._target(ep["endpoint"], path)
                resp = await self.upstream.post(to, body, self._authorization(dk.engine_key))
            except ConnectFailed as exc:
                self.failures_total += 1
                why = f"{exc} from node {node}"
                log.warning("proxy: %s (trying another replica)", why)
                return why
            except UpstreamTimeout as exc:
                self.timeouts_total += 1
                raise oe.upstream_timeout(model, s.read_timeout_s) from exc
            except UpstreamLost as exc:  # sent, then lost: the engine may have run it
                raise oe.upstream_unavailable(model, f"{exc} from node {node}") from exc
            finally:
                if waiting is not None:
                    waiting(dep, -1)
            ctype = resp.headers.get("content-type", "application/json")
            headers_out = [(b"content-type", ctype.encode("latin-1")), (b"x-inferia-node", node.encode())]
            retry_after = resp.headers.get("retry-after")
            if retry_after:
                headers_out.append((b"retry-after", retry_after.encode("latin-1")))
            if stream and ctype.startswith("text/event-stream"):
                complete = await self._relay_stream(call, resp, headers_out, model, dep, t0)
                return None
            try:
                data = await resp.read()
            except UpstreamTimeout as exc:
                self.timeouts_total += 1
                raise oe.upstream_timeout(model, s.read_timeout_s) from exc
            except UpstreamLost as exc:
                raise oe.upstream_unavailable(model, f"{exc} from node {node}") from exc
            complete = True
            headers_out.append((b"content-length", b"%d" % len(data)))
            call.done = True
            call.started = True
            await call.send({"type": "http.response.start", "status": resp.status, "headers": headers_out})
            await call.send({"type": "http.response.body", "body": data})
            if self.observe is not None:
                self.observe(dep, resp.status, time.perf_counter() - t0, None)
            return None
        except asyncio.CancelledError:
            if call.gone:
                self.client_gone_total += 1
                if self.observe is not None:
                    self.observe(dep, 499, time.perf_counter() - t0, None)
            raise
        finally:
            if resp is not None:
                if complete:
                    resp.release()
                else:
                    resp.close()  # closes the engine's connection: the engine stops the generation
            self._release(node)

    async def _relay_stream(
        self,
        call: _Call,
        resp: Response,
        headers: list[tuple[bytes, bytes]],
        model: str,
        dep: str | None,
        t0: float,
    ) -> bool:
        """Pass the event stream through as it arrives; True when the engine ended it."""
        send = call.send
        call.started = True
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        ttft: float | None = None
        error: OpenAIError | None = None
        try:
            async for chunk in resp.chunks():
                if ttft is None:
                    ttft = time.perf_counter() - t0
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamTimeout:
            self.timeouts_total += 1
            error = oe.upstream_timeout(model, self.settings.read_timeout_s)
        except UpstreamLost as exc:
            error = oe.upstream_unavailable(model, f"{exc} mid-stream")
        call.done = True
        if error is not None:  # the status is sent: tell the client in the stream (the openai client raises it)
            event = b"data: " + json.dumps(error.body()).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.observe is not None:
            self.observe(dep, resp.status if error is None else error.status, time.perf_counter() - t0, ttft)
        return error is None


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        req = json.loads(raw)
    except ValueError as exc:
        raise oe.bad_request("body: malformed JSON", "body") from exc
    if not isinstance(req, dict):
        raise oe.bad_request("body: must be a JSON object", "body")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise oe.bad_request("model: field required (a string)", "model")
    return req
