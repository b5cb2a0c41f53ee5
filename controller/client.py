"""Python client for the control plane's HTTP API (sync `Client`, and `AsyncClient` with the same methods).

Every method returns the decoded JSON of the answer. API errors raise the `InferiaError` tree below;
transport failures raise `ConnectionFailed`. The bearer token never appears in a message or a repr.

    with Client.from_settings(load_settings()) as c:
        c.create_pool("local", max_nodes=2)
        c.register_model("tiny", engine="llamacpp", source="/models/tiny.gguf")
        dep = c.deploy("tiny", "local", replicas=1)
        c.wait_deployment(dep["id"])
        c.chat("tiny", [{"role": "user", "content": "hi"}], key=dep["inference_key"])
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from controller.client_errors import (
    Conflict,
    ConnectionFailed,
    DeploymentFailed,
    InferiaError,
    InvalidRequest,
    NotFound,
    ServerError,
    Unauthorized,
    UpdateRolledBack,
    WaitTimeout,
    _redact,
    error_from_response,
)
from controller.failover import FAILOVER_STATUSES, Addresses, idempotent, retry_elsewhere, split_urls

if TYPE_CHECKING:
    from controller.config import Settings

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DeploymentFailed",
    "InferiaError",
    "InvalidRequest",
    "NotFound",
    "ServerError",
    "Unauthorized",
    "UpdateRolledBack",
    "WaitTimeout",
    "error_from_response",
]

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_FILE = "api_token"


def _seg(ref: str) -> str:
    """One URL path segment (names and ids may not contain '/', but never build a wrong path)."""
    return quote(str(ref), safe="")


def _drop_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _state_line(dep: Mapping[str, Any]) -> str:
    return (
        f"deployment {dep.get('id')} is {dep.get('state')} "
        f"({dep.get('ready_replicas', 0)}/{dep.get('desired_replicas', '?')} replicas ready)"
    )


def url_from_settings(settings: Settings) -> str:
    """INFERIA_API_URLS (comma-separated; the client fails over along them), else http://api_host:api_port."""
    if settings.api_urls:
        return settings.api_urls
    host = settings.api_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"


def token_from_settings(settings: Settings) -> str | None:
    """INFERIA_API_TOKEN, else the token `up` wrote to `<data_dir>/api_token`, else None."""
    if settings.api_token is not None:
        value = settings.api_token.get_secret_value().strip()
        if value:
            return value
    try:
        value = (Path(settings.data_dir) / TOKEN_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value or None


R = TypeVar("R")


class _Api(Generic[R]):
    """The endpoints, written once: `_call` is sync in `Client` (R = Any) and async in `AsyncClient`."""

    timeout: float
    _token: str | None
    _addr: Addresses  # the API's addresses (controller/failover.py)

    @property
    def base_url(self) -> str:
        """The address requests go to now (the one that answered last)."""
        return self._addr.current

    @property
    def base_urls(self) -> list[str]:
        return list(self._addr.urls)

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        bearer: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        allow_not_modified: bool = False,
    ) -> R:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, token={'***' if self._token else None})"

    # ------------------------------------------------------------ helpers shared by both clients
    def _auth_headers(self, bearer: str | None) -> dict[str, str]:
        token = bearer if bearer is not None else self._token
        return {"authorization": f"Bearer {token}"} if token else {}

    def _redact(self, text: str, bearer: str | None) -> str:
        return _redact(_redact(text, self._token), bearer)

    def _transport_error(self, exc: httpx.TransportError, bearer: str | None) -> ConnectionFailed:
        where = self.base_url if len(self._addr.urls) == 1 else ", ".join(self._addr.urls)
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            msg = f"the control plane at {where} did not answer in time ({type(exc).__name__})"
        else:
            detail = self._redact(str(exc), bearer) or type(exc).__name__
            msg = (
                f"the control plane is not reachable at {where} ({detail}); "
                "is it running? start it with `inferia-orch up`"
            )
        return ConnectionFailed(msg, code="connection_failed")

    def _failover(self, method: str, path: str) -> tuple[bool, Iterator[int]]:
        safe = idempotent(method, path)
        return safe, self._addr.attempts(safe)

    def _decode(self, resp: httpx.Response, bearer: str | None, allow_not_modified: bool) -> Any:
        if resp.status_code == 304 and allow_not_modified:
            return None
        if resp.status_code >= 400:
            raise error_from_response(resp, (self._token, bearer))
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def _routing_args(
        self, version: int | None, wait: bool, timeout: float
    ) -> tuple[dict[str, Any], dict[str, str], float]:
        params: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if version is not None:
            headers["if-none-match"] = f'"{version}"'
        if wait:
            params = {"wait": 1, "timeout": timeout}
        return params, headers, max(self.timeout, timeout + 10.0) if wait else self.timeout

    # ------------------------------------------------------------ health
    def health(self) -> R:
        """GET /healthz: {"status": "ok", "routing_version": N}."""
        return self._call("GET", "/healthz")

    # ------------------------------------------------------------ pools
    def create_pool(self, name: str, provider: str = "local", **fields: Any) -> R:
        """POST /v1/pools. fields: region, min_nodes, max_nodes, target_nodes, provider_config, ..."""
        return self._call("POST", "/v1/pools", json={"name": name, "provider": provider, **_drop_none(fields)})

    def list_pools(self) -> R:
        return self._call("GET", "/v1/pools")

    def get_pool(self, ref: str) -> R:
        """A pool by name or id (with its live node count)."""
        return self._call("GET", f"/v1/pools/{_seg(ref)}")

    def update_pool(self, ref: str, **fields: Any) -> R:
        """PATCH /v1/pools/{ref}: min_nodes, max_nodes, target_nodes, max_cost_per_hour (None: no limit),
        allowed_gpu_types, provider_config (entries merged; a None value removes one). Only given fields change."""
        return self._call("PATCH", f"/v1/pools/{_seg(ref)}", json=fields)

    def delete_pool(self, ref: str) -> R:
        return self._call("DELETE", f"/v1/pools/{_seg(ref)}")

    def scale_pool(self, ref: str, target_nodes: int) -> R:
        return self._call("POST", f"/v1/pools/{_seg(ref)}/scale", json={"target_nodes": target_nodes})

    def pool_nodes(self, ref: str, include_terminated: bool = False) -> R:
        params = {"all": "true"} if include_terminated else None
        return self._call("GET", f"/v1/pools/{_seg(ref)}/nodes", params=params)

    # ------------------------------------------------------------ nodes
    def list_nodes(
        self,
        *,
        state: str | None = None,
        pool: str | None = None,
        deployment: str | None = None,
        q: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> R:
        """GET /v1/nodes: one page {"items", "total", "limit", "offset"}; state: comma-separated or `all`."""
        params = _drop_none({"state": state, "pool": pool, "deployment": deployment, "q": q})
        return self._call("GET", "/v1/nodes", params=params | {"limit": limit, "offset": offset})

    def get_node(self, node_id: str) -> R:
        return self._call("GET", f"/v1/nodes/{_seg(node_id)}")

    def drain_node(self, node_id: str) -> R:
        return self._call("POST", f"/v1/nodes/{_seg(node_id)}/drain")

    def delete_node(self, node_id: str) -> R:
        return self._call("DELETE", f"/v1/nodes/{_seg(node_id)}")

    def node_logs(self, node_id: str, tail: int = 100) -> R:
        """{"node_id": ..., "lines": [...]}."""
        return self._call("GET", f"/v1/nodes/{_seg(node_id)}/logs", params={"tail": tail})

    # ------------------------------------------------------------ events
    def events(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        entity_id: str | None = None,
        entity_type: str | None = None,
        kind: str | None = None,
    ) -> R:
        """GET /v1/events, newest first: {"items", "next_before"} (pass next_before as `before` to page back)."""
        params = _drop_none({"before": before, "entity_id": entity_id, "entity_type": entity_type, "kind": kind})
        return self._call("GET", "/v1/events", params=params | {"limit": limit})

    # ------------------------------------------------------------ providers
    def providers(self) -> R:
        return self._call("GET", "/v1/providers")

    def provider_resources(self, name: str, pool: str | None = None) -> R:
        params = {"pool": pool} if pool is not None else None
        return self._call("GET", f"/v1/providers/{_seg(name)}/resources", params=params, timeout=90.0)

    # ------------------------------------------------------------ model registry
    def register_model(self, name: str, engine: str, source: str | None = None, **fields: Any) -> R:
        """POST /v1/model-registry. fields: image, args, env, port, health_path, gpus, gpu_memory_mb."""
        body = {"name": name, "engine": engine, **_drop_none({"source": source, **fields})}
        return self._call("POST", "/v1/model-registry", json=body)

    def list_models(self) -> R:
        return self._call("GET", "/v1/model-registry")

    def get_model(self, name: str) -> R:
        return self._call("GET", f"/v1/model-registry/{_seg(name)}")

    def delete_model(self, name: str) -> R:
        return self._call("DELETE", f"/v1/model-registry/{_seg(name)}")

    # ------------------------------------------------------------ deployments
    def deploy(
        self,
        model: str,
        pool: str,
        replicas: int | None = 1,
        rate_limit_rpm: int | None = None,
        autoscaling: dict[str, Any] | None = None,
    ) -> R:
        """POST /v1/deployments; the answer carries `inference_key`, shown this once only. rate_limit_rpm:
        requests per minute accepted with that key (None: no limit). autoscaling: a policy
        (`min_replicas`, `max_replicas`, `target_ongoing_requests`, `upscale_delay_s`, `downscale_delay_s`,
        `scale_to_zero_after_s`); replicas is then the initial target (None: min_replicas)."""
        body = _drop_none(
            {
                "model": model,
                "pool": pool,
                "replicas": replicas,
                "rate_limit_rpm": rate_limit_rpm,
                "autoscaling": autoscaling,
            }
        )
        return self._call("POST", "/v1/deployments", json=body)

    def list_deployments(self) -> R:
        return self._call("GET", "/v1/deployments")

    def get_deployment(self, dep_id: str) -> R:
        return self._call("GET", f"/v1/deployments/{_seg(dep_id)}")

    def scale_deployment(self, dep_id: str, replicas: int) -> R:
        return self._call("PATCH", f"/v1/deployments/{_seg(dep_id)}", json={"replicas": replicas})

    def set_autoscaling(self, dep_id: str, policy: dict[str, Any] | None, replicas: int | None = None) -> R:
        """Set or change a deployment's autoscaling policy (the fields given are merged with the current
        ones); None removes it (the replica count then stays where the autoscaler left it, or `replicas`)."""
        body: dict[str, Any] = {"autoscaling": policy}
        if replicas is not None:
            body["replicas"] = replicas
        return self._call("PATCH", f"/v1/deployments/{_seg(dep_id)}", json=body)

    def update_deployment(
        self,
        dep_id: str,
        *,
        model: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        image: str | None = None,
        replicas: int | None = None,
        max_surge: int | None = None,
        max_unavailable: int | None = None,
        progress_deadline_s: float | None = None,
    ) -> R:
        """Change what a deployment runs (issue 12): a new generation, rolled out replica by replica (at most
        N + max_surge alive, at least N - max_unavailable ready; defaults 1 and 0); rolled back by itself when
        new replicas fail or none is ready within the progress deadline. Follow it with `wait_update`."""
        body = _drop_none(
            {"model": model, "args": args, "env": env, "image": image, "replicas": replicas}
            | {"progress_deadline_s": progress_deadline_s}
        )
        strategy = _drop_none({"max_surge": max_surge, "max_unavailable": max_unavailable})
        if strategy:
            body["strategy"] = strategy
        return self._call("PATCH", f"/v1/deployments/{_seg(dep_id)}", json=body)

    def rollback_deployment(self, dep_id: str, max_surge: int | None = None, max_unavailable: int | None = None) -> R:
        """Back to the previous generation: a roll-out in progress stops (the old replicas stay), otherwise the
        previous generation's spec is rolled out again."""
        strategy = _drop_none({"max_surge": max_surge, "max_unavailable": max_unavailable})
        body = {"strategy": strategy} if strategy else None
        return self._call("POST", f"/v1/deployments/{_seg(dep_id)}/rollback", json=body)

    def set_rate_limit(self, dep_id: str, rpm: int | None) -> R:
        """Requests per minute accepted with the deployment's inference key; None removes the limit."""
        return self._call("PATCH", f"/v1/deployments/{_seg(dep_id)}", json={"rate_limit_rpm": rpm})

    def rotate_key(self, dep_id: str) -> R:
        """A new inference key (in `inference_key`, shown this once); the old one is refused from now on."""
        return self._call("POST", f"/v1/deployments/{_seg(dep_id)}/rotate-key")

    # ------------------------------------------------------------ API tokens
    def create_token(self, name: str, scope: str) -> R:
        """A scoped API token (admin, gateway, metrics); the answer's `token` is shown this once only."""
        return self._call("POST", "/v1/tokens", json={"name": name, "scope": scope})

    def list_tokens(self) -> R:
        return self._call("GET", "/v1/tokens")

    def revoke_token(self, ref: str) -> R:
        """By name or id; refused everywhere within about a second."""
        return self._call("DELETE", f"/v1/tokens/{_seg(ref)}")

    def stop_deployment(self, dep_id: str) -> R:
        return self._call("POST", f"/v1/deployments/{_seg(dep_id)}/stop")

    def start_deployment(self, dep_id: str) -> R:
        return self._call("POST", f"/v1/deployments/{_seg(dep_id)}/start")

    def delete_deployment(self, dep_id: str) -> R:
        return self._call("DELETE", f"/v1/deployments/{_seg(dep_id)}")

    def deployment_logs(self, dep_id: str, tail: int = 50) -> R:
        """{"deployment_id": ..., "nodes": {node_id: [lines]}}."""
        return self._call("GET", f"/v1/deployments/{_seg(dep_id)}/logs", params={"tail": tail})

    # ------------------------------------------------------------ routing
    def routing_table(self, version: int | None = None, wait: bool = False, timeout: float = 30) -> R:
        """{"version": N, "models": {model: [endpoint, ...]}}, or None when `version` is still current (304).

        With `wait`, the server holds the request up to `timeout` seconds until the version differs.
        """
        params, headers, http_timeout = self._routing_args(version, wait, timeout)
        return self._call(
            "GET",
            "/v1/routing-table",
            params=params or None,
            headers=headers,
            timeout=http_timeout,
            allow_not_modified=True,
        )

    # ------------------------------------------------------------ data plane
    def chat(self, model: str, messages: list[dict[str, Any]], key: str | None = None, **params: Any) -> R:
        """POST /v1/chat/completions (no streaming); `key` (an inference key) replaces the API token."""
        if params.get("stream"):
            raise ValueError("chat() does not stream; leave stream unset")
        body = {"model": model, "messages": messages, **params}
        return self._call("POST", "/v1/chat/completions", json=body, bearer=key, timeout=max(self.timeout, 120.0))

    def heartbeat(self, node_token: str, **fields: Any) -> R:
        """POST /inventory/heartbeat as a node (fields: node_id, state, health_score, endpoint, ...)."""
        return self._call("POST", "/inventory/heartbeat", json=_drop_none(fields), bearer=node_token)


def _table_version(table: Any) -> int | None:
    version = table.get("version") if isinstance(table, dict) else None
    return version if isinstance(version, int) else None


def _idle_pause(started: float, min_interval: float = 0.5) -> float:
    """Start long-polls at most every `min_interval` s, even if the server answers without holding them."""
    return max(0.0, min_interval - (time.monotonic() - started))


def _update_done(dep: dict[str, Any], generation: int) -> bool:
    """True when the roll-out to `generation` is over; raises UpdateRolledBack when it ended elsewhere."""
    roll = dep.get("rollout") or {}
    if dep.get("state") == "updating" or roll.get("phase") not in (None, "done"):
        return False
    if int(dep.get("current_generation") or 0) >= generation:
        return True
    why = roll.get("last_failure") or "rolled back"
    raise UpdateRolledBack(f"deployment {dep.get('id')}: generation {generation} rolled back: {why}", dep)


def _check_wait(dep: dict[str, Any], states: Iterable[str]) -> bool:
    """True when done; raises DeploymentFailed when the deployment failed (and that was not awaited)."""
    state = str(dep.get("state"))
    wanted = set(states)
    if state in wanted:
        return True
    if state == "failed":
        reason = dep.get("error") or "no reason recorded"
        raise DeploymentFailed(f"deployment {dep.get('id')} failed: {reason}", dep)
    return False


# ---------------------------------------------------------------- sync client
class Client(_Api[Any]):
    """Synchronous client. Use as a context manager, or call `close()`. `base_url`: one URL, or several
    (a list, or comma-separated) that it fails over along (controller/failover.py)."""

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._addr = Addresses(split_urls(base_url))
        self.timeout = timeout
        self._token = token or None
        self._http = httpx.Client(timeout=timeout, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Client:
        return cls(url_from_settings(settings), token_from_settings(settings), **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        bearer: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        allow_not_modified: bool = False,
    ) -> Any:
        hdrs = {**self._auth_headers(bearer), **(headers or {})}
        safe, attempts = self._failover(method, path)
        failure: httpx.TransportError | None = None
        resp: httpx.Response | None = None
        for at in attempts:
            url = self._addr.urls[at] + path
            try:
                resp = self._http.request(
                    method, url, params=params, json=json, headers=hdrs, timeout=timeout or self.timeout
                )
            except httpx.TransportError as exc:
                failure = exc
                if retry_elsewhere(exc, safe):
                    continue
                raise self._transport_error(exc, bearer) from None
            if safe and resp.status_code in FAILOVER_STATUSES and len(self._addr.urls) > 1:
                continue
            self._addr.answered(at)
            break
        if resp is None:
            assert failure is not None
            raise self._transport_error(failure, bearer) from None
        return self._decode(resp, bearer, allow_not_modified)

    def watch_routes(self, timeout: float = 30) -> Iterator[dict[str, Any]]:
        """Yield the current routing table, then each new version as it appears (long-polling, forever)."""
        table = self.routing_table()
        version = _table_version(table)
        yield table
        while True:
            started = time.monotonic()
            new = self.routing_table(version=version, wait=True, timeout=timeout)
            if new is None or _table_version(new) == version:
                # unchanged: long-poll again (pausing if the server answered without holding the request)
                time.sleep(_idle_pause(started))
                continue
            version = _table_version(new)
            yield new

    def wait_deployment(
        self,
        dep_id: str,
        states: Iterable[str] = ("running",),
        timeout: float = 600,
        poll: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the state is one of `states` and return the deployment.

        Raises DeploymentFailed on `failed` (unless awaited), WaitTimeout after `timeout` seconds.
        `on_update` is called with each polled state (for progress displays).
        """
        wanted = tuple(states)
        return self._poll(dep_id, lambda dep: _check_wait(dep, wanted), timeout, poll, on_update)

    def wait_update(
        self,
        dep_id: str,
        generation: int,
        timeout: float = 1800,
        poll: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the roll-out to `generation` (the `generation` of update_deployment's answer) is over.
        Raises UpdateRolledBack when it was rolled back, WaitTimeout after `timeout` seconds."""
        return self._poll(dep_id, lambda dep: _update_done(dep, generation), timeout, poll, on_update)

    def _poll(
        self,
        dep_id: str,
        done: Callable[[dict[str, Any]], bool],
        timeout: float,
        poll: float,
        on_update: Callable[[dict[str, Any]], None] | None,
    ) -> dict[str, Any]:
        """GET the deployment every `poll` s until `done` says so (WaitTimeout after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while True:
            dep = self.get_deployment(dep_id)
            assert isinstance(dep, dict)
            if on_update is not None:
                on_update(dep)
            if done(dep):
                return dep
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {timeout:g}s: {_state_line(dep)}", dep)
            time.sleep(max(0.0, min(poll, deadline - time.monotonic())))


# ---------------------------------------------------------------- async client
class AsyncClient(_Api[Awaitable[Any]]):
    """The same methods as `Client`, as coroutines (`await c.list_pools()`); `aclose()` when done."""

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._addr = Addresses(split_urls(base_url))
        self.timeout = timeout
        self._token = token or None
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> AsyncClient:
        return cls(url_from_settings(settings), token_from_settings(settings), **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        bearer: str | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        allow_not_modified: bool,
    ) -> Any:
        hdrs = {**self._auth_headers(bearer), **(headers or {})}
        safe, attempts = self._failover(method, path)
        failure: httpx.TransportError | None = None
        resp: httpx.Response | None = None
        for at in attempts:
            url = self._addr.urls[at] + path
            try:
                resp = await self._http.request(
                    method, url, params=params, json=json, headers=hdrs, timeout=timeout or self.timeout
                )
            except httpx.TransportError as exc:
                failure = exc
                if retry_elsewhere(exc, safe):
                    continue
                raise self._transport_error(exc, bearer) from None
            if safe and resp.status_code in FAILOVER_STATUSES and len(self._addr.urls) > 1:
                continue
            self._addr.answered(at)
            break
        if resp is None:
            assert failure is not None
            raise self._transport_error(failure, bearer) from None
        return self._decode(resp, bearer, allow_not_modified)

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        bearer: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        allow_not_modified: bool = False,
    ) -> Awaitable[Any]:
        return self._request(method, path, params, json, bearer, headers, timeout, allow_not_modified)

    async def watch_routes(self, timeout: float = 30) -> AsyncIterator[dict[str, Any]]:
        """Yield the current routing table, then each new version as it appears (long-polling, forever)."""
        table = await self.routing_table()
        version = _table_version(table)
        yield table
        while True:
            started = time.monotonic()
            new = await self.routing_table(version=version, wait=True, timeout=timeout)
            if new is None or _table_version(new) == version:
                # unchanged: long-poll again (pausing if the server answered without holding the request)
                await asyncio.sleep(_idle_pause(started))
                continue
            version = _table_version(new)
            yield new

    async def wait_deployment(
        self,
        dep_id: str,
        states: Iterable[str] = ("running",),
        timeout: float = 600,
        poll: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        wanted = tuple(states)
        return await self._poll(dep_id, lambda dep: _check_wait(dep, wanted), timeout, poll, on_update)

    async def wait_update(
        self,
        dep_id: str,
        generation: int,
        timeout: float = 1800,
        poll: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        return await self._poll(dep_id, lambda dep: _update_done(dep, generation), timeout, poll, on_update)

    async def _poll(
        self,
        dep_id: str,
        done: Callable[[dict[str, Any]], bool],
        timeout: float,
        poll: float,
        on_update: Callable[[dict[str, Any]], None] | None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            dep = await self.get_deployment(dep_id)
            assert isinstance(dep, dict)
            if on_update is not None:
                on_update(dep)
            if done(dep):
                return dep
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {timeout:g}s: {_state_line(dep)}", dep)
            await asyncio.sleep(max(0.0, min(poll, deadline - time.monotonic())))
