"""The inference proxy on loopback without Ray or PostgreSQL: fast engines (tests/support/fast_engine.py) as
its upstreams, a routing table and a key index set by the test, the proxy served by uvicorn like the data port.

    async with ProxyHarness() as h:
        h.add_engine("a1", deployment="dep-a")       # an engine of deployment dep-a (model "m")
        h.set_routes()                               # routing table: every engine added so far
        r = await h.post("/v1/chat/completions", {...}, key=h.key("dep-a"))
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from serve_app.http_protocol import CoalescingHttpToolsProtocol
from serve_app.inference_keys import DeploymentKey, KeyIndex
from serve_app.proxy import InferenceProxy, ProxySettings
from serve_app.ratelimit import RateLimiter
from serve_app.routing_cache import RoutingCache
from tests.support import fast_engine

ADMIN = "it_admin-token"


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


@dataclass
class Upstream:
    node_id: str
    deployment: str
    model: str
    endpoint: str
    engine: fast_engine.Engine | None = None
    server: uvicorn.Server | None = None
    served_model: str | None = None


@dataclass
class ProxyHarness:
    settings: ProxySettings = field(default_factory=lambda: ProxySettings(read_timeout_s=30.0))
    deployments: dict[str, str] = field(default_factory=lambda: {"dep-a": "m", "dep-b": "m", "dep-o": "other"})
    upstreams: list[Upstream] = field(default_factory=list)
    rpm: dict[str, int] = field(default_factory=dict)  # deployment id -> rate_limit_rpm (in the key index)
    limiter: RateLimiter = field(default_factory=RateLimiter)  # as AppContext checks it
    loads: int = 0
    key_loads_fail: bool = False

    # ------------------------------------------------------------ keys
    @staticmethod
    def key(dep: str) -> str:
        return f"ik_{dep}"

    @staticmethod
    def engine_key(dep: str) -> str:
        return f"ek_{dep}"

    async def _load_keys(self) -> list[DeploymentKey]:
        self.loads += 1
        if self.key_loads_fail:
            raise ConnectionRefusedError("database down")
        await asyncio.sleep(0)
        return [
            DeploymentKey(d, m, sha(self.key(d)), self.engine_key(d), self.rpm.get(d))
            for d, m in self.deployments.items()
        ]

    async def _is_admin(self, token: str, digest: str) -> bool:
        return digest == sha(ADMIN)

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> ProxyHarness:
        self.routing = RoutingCache(self._never_poll)
        self.keys = KeyIndex(self._load_keys, min_gap_s=0.0)
        self.proxy = InferenceProxy(self.routing, self.keys, self._is_admin, self.settings, limiter=self.limiter)
        # served as the data port serves it: uvicorn with its one-send-per-turn protocol
        self.server, self.port = await fast_engine.serve(self._app, http=CoalescingHttpToolsProtocol)
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = httpx.AsyncClient(base_url=self.base, timeout=30, trust_env=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await fast_engine.stop(self.server)
        for u in self.upstreams:
            if u.server is not None:
                await fast_engine.stop(u.server)
        await self.proxy.close()

    async def _never_poll(self, version: int, timeout_s: float) -> dict[str, Any]:
        raise AssertionError("the harness sets the routing table itself")

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.proxy.handle(scope, receive, send)

    async def add_engine(self, node_id: str, deployment: str = "dep-a", served_model: str | None = None) -> Upstream:
        model = self.deployments[deployment]
        engine = fast_engine.Engine(served_model or model, self.engine_key(deployment), served_by=node_id)
        server, port = await fast_engine.serve(engine)
        u = Upstream(node_id, deployment, model, f"http://127.0.0.1:{port}", engine, server, served_model)
        self.upstreams.append(u)
        return u

    def add_endpoint(self, node_id: str, endpoint: str, deployment: str = "dep-a") -> Upstream:
        """A routed endpoint that is not one of our engines (a closed port, a raw socket server)."""
        u = Upstream(node_id, deployment, self.deployments[deployment], endpoint)
        self.upstreams.append(u)
        return u

    def set_routes(self, version: int = 1) -> None:
        models: dict[str, list[dict[str, Any]]] = {}
        for u in self.upstreams:
            entry = {"deployment_id": u.deployment, "node_id": u.node_id, "endpoint": u.endpoint}
            entry["served_model"] = u.served_model or u.model
            models.setdefault(u.model, []).append(entry)
        self.routing.table = {"version": version, "models": models}

    def engine(self, node_id: str) -> fast_engine.Engine:
        e = next(u.engine for u in self.upstreams if u.node_id == node_id)
        assert e is not None
        return e

    # ------------------------------------------------------------ client side
    async def post(self, path: str, body: Any, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["content-type"] = "application/json"
        return await self.http.post(path, content=content, headers=headers, **kw)


def chat(model: str = "m", text: str = "hi", stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RawServer:
    """A loopback TCP server that reads a request, then does `action`: "drop" closes without an answer,
    "half" sends the headers and one event of a stream and then closes."""

    def __init__(self, action: str) -> None:
        self.action = action
        self.requests = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
        )
        await reader.readexactly(length)
        self.requests += 1
        if self.action == "half":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            event = b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n'
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()
