"""A thin wrapper over the official (synchronous) client: every call runs in a thread and every
API error is translated into our TemporaryProviderError / PermanentProviderError at this boundary."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from adapters.base import PermanentProviderError, TemporaryProviderError
from adapters.kubernetes.config import KubeConfig

T = TypeVar("T")

TEMPORARY_STATUSES = {408, 429, 500, 502, 503, 504}
PERMANENT_STATUSES = {400, 401, 403, 422}


class NotFound(Exception):
    """404: the object (or its namespace) does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Conflict(Exception):
    """409: already exists (or a stale write)."""


def api_message(exc: ApiException) -> str:
    """The API's own message (a Status object's `message`), never the request headers."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return str(data["message"])
        except ValueError:
            return body[:300]
    return str(exc.reason or f"HTTP {exc.status}")


def translate(exc: BaseException, what: str) -> Exception:
    """Map a client/transport error to what the pool understands."""
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        msg = f"{what}: {api_message(exc)}"
        if status == 404:
            return NotFound(msg)
        if status == 409:
            return Conflict(msg)
        if status in PERMANENT_STATUSES:
            return PermanentProviderError(f"kubernetes API refused ({status}) {msg}")
        if status in TEMPORARY_STATUSES or status == 0 or status >= 500:
            return TemporaryProviderError(f"kubernetes API unavailable ({status}) {msg}")
        return PermanentProviderError(f"kubernetes API error ({status}) {msg}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError | TimeoutError):
        return TemporaryProviderError(f"kubernetes API unreachable: {what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, k8s_config.ConfigException):
        return PermanentProviderError(f"kubernetes credentials: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def load_api_client(cfg: KubeConfig) -> k8s.ApiClient:
    """Credentials from the in-cluster service account or a kubeconfig file (+ context)."""
    conf = k8s.Configuration()
    try:
        if cfg.in_cluster:
            k8s_config.load_incluster_config(client_configuration=conf)
        else:
            k8s_config.load_kube_config(
                config_file=cfg.kubeconfig, context=cfg.context, client_configuration=conf, persist_config=False
            )
    except (k8s_config.ConfigException, OSError) as exc:
        raise PermanentProviderError(f"kubernetes credentials: {exc}") from exc
    conf.retries = False  # the pool retries with backoff; never hang in urllib3's own retries
    return k8s.ApiClient(conf)


class KubeClient:
    """The typed APIs the provider uses, plus `call` which runs a sync call off the event loop."""

    def __init__(self, api_client: k8s.ApiClient, timeout_s: float = 30.0) -> None:
        self.api_client = api_client
        self.core = k8s.CoreV1Api(api_client)
        self.apps = k8s.AppsV1Api(api_client)
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, cfg: KubeConfig) -> KubeClient:
        return cls(load_api_client(cfg), cfg.request_timeout_s)

    def sync(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("_request_timeout", (5.0, self.timeout_s))
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise translate(exc, what) from exc

    async def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(self.sync, what, fn, *args, **kwargs)

    def close(self) -> None:
        try:
            self.api_client.close()
        except Exception:
            pass
