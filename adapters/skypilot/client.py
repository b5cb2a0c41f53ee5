"""The one module that talks to SkyPilot's API server (and through it, to clouds).

Every call uses SkyPilot's request model: the SDK submits a request and returns its id at once
(`sky.launch`, `sky.exec`, `sky.down`, `sky.status`, `sky.endpoints`), then `sky.client.sdk_async.get`
awaits the result without blocking the event loop. Submissions (a short HTTP call) run in a worker
thread. Exceptions are SkyPilot's own; `errors.py` translates them.

Tests replace this module's `SkyClient` with a fake of the same shape (see `load_client`).
"""

from __future__ import annotations

import asyncio
import importlib
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import sky

CLIENT_ENV = "INFERIA_SKYPILOT_CLIENT"  # "module:factory" of another client (tests); operator-set only
SERVER_ENV = "SKYPILOT_API_SERVER_ENDPOINT"  # SkyPilot's own variable for the API server's URL


@dataclass(frozen=True)
class ClusterRecord:
    """What we need from one entry of `sky.status`."""

    name: str
    status: str  # SkyPilot's ClusterStatus value: INIT | UP | STOPPED
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    use_spot: bool = False
    head_ip: str | None = None
    launched_at: float | None = None
    reason: str | None = None  # why an INIT cluster is unhealthy, when SkyPilot says


class Client(Protocol):
    async def launch(self, task: sky.Task, cluster_name: str, *, idle_minutes_to_autostop: int | None) -> str: ...
    async def exec(self, task: sky.Task, cluster_name: str) -> str: ...
    async def down(self, cluster_name: str) -> str: ...
    async def get(self, request_id: str, timeout_s: float | None = None) -> Any: ...
    async def status(self, cluster_names: list[str] | None, *, refresh: bool) -> list[ClusterRecord]: ...
    async def endpoint(self, cluster_name: str, port: int) -> str | None: ...
    async def tail_logs(self, cluster_name: str, tail: int) -> list[str]: ...
    async def enabled_clouds(self) -> list[str]: ...
    async def optimize(self, dag: sky.Dag) -> sky.Resources: ...
    async def close(self) -> None: ...


def record_from_status(entry: Any) -> ClusterRecord:
    """A ClusterRecord from a `sky.status` entry (StatusResponse or its dict form)."""
    get = entry.get if isinstance(entry, dict) else lambda k, d=None: getattr(entry, k, d)
    status = get("status")
    handle = get("handle")
    res = getattr(handle, "launched_resources", None) if handle is not None else None
    cloud = getattr(res, "cloud", None)
    return ClusterRecord(
        name=str(get("name")),
        status=str(getattr(status, "value", status)),
        cloud=str(cloud).lower() if cloud is not None else None,
        region=getattr(res, "region", None),
        zone=getattr(res, "zone", None),
        instance_type=getattr(res, "instance_type", None),
        use_spot=bool(getattr(res, "use_spot", False)),
        head_ip=getattr(handle, "head_ip", None) if handle is not None else None,
        launched_at=get("launched_at"),
        reason=get("init_status_reason"),
    )


class SkyClient:
    """The real client: SkyPilot's SDK against the API server at `endpoint` (None: the local one)."""

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint_url = endpoint
        os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
        self._use_endpoint()

    def _use_endpoint(self) -> None:
        """Point the SDK at our server. The SDK reads SKYPILOT_API_SERVER_ENDPOINT, but caches the URL for
        the whole process (`import sky` already resolves it), so the cache is cleared when the value changes."""
        if not self.endpoint_url or os.environ.get(SERVER_ENV) == self.endpoint_url:
            return
        os.environ[SERVER_ENV] = self.endpoint_url
        from sky.server import common as server_common

        server_common.get_server_url.cache_clear()

    async def _submit(self, fn: Any, *args: Any, **kwargs: Any) -> str:
        self._use_endpoint()
        return str(await asyncio.to_thread(fn, *args, **kwargs))

    async def launch(self, task: sky.Task, cluster_name: str, *, idle_minutes_to_autostop: int | None) -> str:
        import sky

        return await self._submit(
            sky.launch, task, cluster_name=cluster_name, idle_minutes_to_autostop=idle_minutes_to_autostop
        )

    async def exec(self, task: sky.Task, cluster_name: str) -> str:
        import sky

        return await self._submit(sky.exec, task, cluster_name=cluster_name)

    async def down(self, cluster_name: str) -> str:
        import sky

        return await self._submit(sky.down, cluster_name)

    async def get(self, request_id: str, timeout_s: float | None = None) -> Any:
        from sky.client import sdk_async

        self._use_endpoint()
        return await asyncio.wait_for(sdk_async.get(request_id), timeout_s)

    async def status(self, cluster_names: list[str] | None, *, refresh: bool) -> list[ClusterRecord]:
        import sky
        from sky.utils import common

        mode = common.StatusRefreshMode.AUTO if refresh else common.StatusRefreshMode.NONE
        request_id = await self._submit(sky.status, cluster_names, refresh=mode)
        return [record_from_status(e) for e in await self.get(request_id)]

    async def endpoint(self, cluster_name: str, port: int) -> str | None:
        import sky

        request_id = await self._submit(sky.endpoints, cluster_name, port)
        found = await self.get(request_id)
        url = (found or {}).get(port) or (found or {}).get(str(port))
        if url and "://" not in url:
            url = f"http://{url}"
        return url

    async def tail_logs(self, cluster_name: str, tail: int) -> list[str]:
        import sky

        buf = io.StringIO()
        self._use_endpoint()
        await asyncio.to_thread(sky.tail_logs, cluster_name, None, False, tail, buf)
        return buf.getvalue().splitlines()[-tail:] if tail else buf.getvalue().splitlines()

    async def enabled_clouds(self) -> list[str]:
        from sky.client import sdk

        request_id = await self._submit(sdk.enabled_clouds)  # not re-exported as sky.enabled_clouds
        return [str(c).lower() for c in await self.get(request_id)]

    async def optimize(self, dag: sky.Dag) -> sky.Resources:
        """SkyPilot's optimizer, run by the API server with its enabled clouds."""
        import sky

        request_id = await self._submit(sky.optimize, dag)
        best: sky.Resources = (await self.get(request_id)).tasks[0].best_resources
        return best

    async def close(self) -> None:
        return None


def load_client(endpoint: str | None, data_dir: str | None) -> Client:
    """The client for a pool: `SkyClient`, unless INFERIA_SKYPILOT_CLIENT names another factory."""
    target = os.environ.get(CLIENT_ENV)
    if not target:
        return SkyClient(endpoint)
    module_name, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    client: Client = factory(endpoint=endpoint, data_dir=data_dir)
    return client
