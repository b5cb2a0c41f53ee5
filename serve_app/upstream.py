"""The proxy's upstream HTTP/1.1 client: keep-alive connections per engine, one write per request, responses
parsed by httptools (C), bodies relayed as they arrive (chunked encoding decoded, nothing else touched).

Why not aiohttp (measured, docs/PERFORMANCE.md): its request building (auto headers, URL and cookie
handling, payload objects, writer) and response machinery were a third of the API replica's time per proxied
request. The proxy only ever sends one kind of request (POST, JSON body, a fixed set of headers), so the
request's head is a cached byte string plus the key and the length, written once with its body.

Errors (the proxy's failover rule depends on them):
- ConnectFailed: no connection could be made (refused, unreachable, connect timeout): the request never
  left, another replica may take it.
- UpstreamTimeout: the engine was silent longer than the read timeout (before its answer or between chunks).
- UpstreamLost: the connection broke after the request was written: the engine may have run it.

A connection goes back to its engine's idle list only after a complete answer the engine agreed to keep
alive; idle ones older than `keepalive_s` are closed when next looked at (below the engines' usual 5 s, so
the proxy stops using a connection before the engine closes it). `max_per_engine` bounds the connections
to one engine, busy and idle together; a request beyond it waits for one to come back.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools

PAUSE_AT = 1 << 20  # bytes of a stream waiting for the client before the engine's socket stops being read


class UpstreamError(Exception):
    """Base of the upstream client's errors."""


class ConnectFailed(UpstreamError):
    """No connection could be made: the request was never sent."""


class UpstreamTimeout(UpstreamError):
    """The engine was silent for longer than the read timeout."""


class UpstreamLost(UpstreamError):
    """The connection broke after the request was written (or the answer was not HTTP)."""


@dataclass(frozen=True)
class Target:
    """Where one endpoint's requests go (parsed once per endpoint and path)."""

    key: tuple[str, int, bool]  # host, port, tls
    head: bytes  # "POST <path> HTTP/1.1\r\nHost: ...\r\nContent-Type: application/json\r\n"


def target(endpoint: str, path: str) -> Target:
    u = urlsplit(endpoint.rstrip("/") + path)
    tls = u.scheme == "https"
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConnectFailed(f"unsupported endpoint {endpoint!r}")
    port = u.port or (443 if tls else 80)
    host = u.hostname if u.port is None else f"{u.hostname}:{u.port}"
    if ":" in u.hostname and u.port is not None:  # an IPv6 literal
        host = f"[{u.hostname}]:{u.port}"
    target_path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    head = f"POST {target_path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode("latin-1")
    return Target((u.hostname, port, tls), head)


class Response:
    """An answer being received on one connection. `read()` or `chunks()`, then `release()` (the connection
    goes back when the answer was complete) or `close()` (the connection is closed: the engine stops)."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers  # lower-case name -> value (latin-1 str), the last value of each name

    async def read(self) -> bytes:
        c = self._conn
        while not c.complete:
            await c.wait()
        data = b"".join(c.body)
        c.body.clear()
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (what came since the last step, joined)."""
        c = self._conn
        while True:
            if c.body:
                data = b"".join(c.body) if len(c.body) > 1 else c.body[0]
                c.body.clear()
                c.buffered = 0
                if c.paused:
                    c.resume()
                yield data
                continue
            if c.complete:
                return
            await c.wait()

    def release(self) -> None:
        self._conn.finish()

    def close(self) -> None:
        self._conn.abort()


class _Conn(asyncio.Protocol):
    """One connection to one engine, with httptools parsing its answers."""

    def __init__(self, pool: _EnginePool, read_timeout_s: float) -> None:
        self.pool = pool
        self.read_timeout_s = read_timeout_s
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.have_head = self.complete = self.keep_alive = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._name = b""

    # -------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = self.loop.call_later(self.read_timeout_s, self._timed_out)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamLost("the engine upgraded the connection"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamLost(f"malformed answer ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.have_head and not self.complete and self._ends_at_close():
            self.complete = True  # an answer without a length or chunks ends when the engine closes
        if not self.complete and self.error is None:
            self.error = UpstreamLost("the engine closed the connection" + (f" ({exc})" if exc else ""))
        self._wake()

    def _ends_at_close(self) -> bool:
        h = self.headers
        return "content-length" not in h and "chunked" not in h.get("transfer-encoding", "").lower()

    # -------------------------------------------------------------- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer (100 Continue): the real one follows
            self.headers = {}
            return
        self.have_head = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_AT and not self.paused and self.transport is not None:
            self.paused = True  # the client reads slower than the engine writes: so does the engine, now
            self.transport.pause_reading()
            if self.timer is not None:  # its silence is ours meanwhile, not a timeout
                self.timer.cancel()
                self.timer = None
        self._wake()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # only valid in this callback (llhttp)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._wake()

    # -------------------------------------------------------------- the exchange
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None and not (self.complete or self.body):
            raise self.error

    def stale(self, now: float, keepalive_s: float) -> bool:
        t = self.transport
        return self.closed or t is None or t.is_closing() or now - self.idle_since > keepalive_s

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            if not self.complete and self.timer is None:
                self.timer = self.loop.call_later(self.read_timeout_s, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(UpstreamTimeout(f"no answer for {self.read_timeout_s:g}s"))

    def _fail(self, err: UpstreamError) -> None:
        if self.error is None:
            self.error = err
        self.abort()
        self._wake()

    async def exchange(self, data: bytes) -> Response:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectFailed("the connection closed before the request was written")
        self.transport.write(data)
        self.timer = self.loop.call_later(self.read_timeout_s, self._timed_out)
        while not self.have_head:
            await self.wait()
        return Response(self)

    def finish(self) -> None:
        """The answer was read: back to the idle list when complete and kept alive, else closed."""
        if self.closed:
            return
        if self.complete and self.keep_alive and self.error is None and not self.paused:
            self._reset()
            self.pool.put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool.forget(self)


class _EnginePool:
    """The connections to one engine: idle (LIFO) and a count of all, bounded by `limit`."""

    def __init__(self, key: tuple[str, int, bool], client: UpstreamClient) -> None:
        self.key, self.client = key, client
        self.idle: deque[_Conn] = deque()
        self.open: set[_Conn] = set()
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def get(self) -> _Conn:
        c = self.client
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.stale(now, c.keepalive_s):
                conn.abort()
                continue
            return conn
        while len(self.open) >= c.max_per_engine:
            fut = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self.waiters:
                    self.waiters.remove(fut)
            if self.idle:
                return await self.get()
        return await self._connect()

    async def _connect(self) -> _Conn:
        host, port, tls = self.key
        c = self.client
        loop = asyncio.get_running_loop()
        conn = _Conn(self, c.read_timeout_s)
        self.open.add(conn)
        try:
            tls_args: dict[str, Any] = {"ssl": c.tls_context(), "server_hostname": host} if tls else {}
            await asyncio.wait_for(loop.create_connection(lambda: conn, host, port, **tls_args), c.connect_timeout_s)
        except TimeoutError as exc:
            conn.abort()
            self.forget(conn)
            raise ConnectFailed(f"connect timeout ({c.connect_timeout_s:g}s)") from exc
        except (OSError, ssl.SSLError) as exc:
            conn.abort()
            self.forget(conn)
            raise ConnectFailed(type(exc).__name__) from exc  # e.g. ConnectionRefusedError
        except BaseException:
            conn.abort()
            self.forget(conn)
            raise
        return conn

    def put_back(self, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._next_waiter()

    def forget(self, conn: _Conn) -> None:
        if conn in self.open:
            self.open.discard(conn)
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
            self._next_waiter()

    def _next_waiter(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return


class UpstreamClient:
    def __init__(
        self,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 300.0,
        max_per_engine: int = 1024,
        keepalive_s: float = 4.0,
    ) -> None:
        self.connect_timeout_s, self.read_timeout_s = connect_timeout_s, read_timeout_s
        self.max_per_engine, self.keepalive_s = max_per_engine, keepalive_s
        self._pools: dict[tuple[str, int, bool], _EnginePool] = {}
        self._tls: ssl.SSLContext | None = None

    def tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def post(self, to: Target, body: bytes, authorization: bytes | None = None) -> Response:
        """POST `body` (JSON); the answer's status and headers once they arrived. Raises ConnectFailed,
        UpstreamTimeout or UpstreamLost; a cancellation closes the connection (the engine stops)."""
        pool = self._pools.get(to.key)
        if pool is None:
            pool = self._pools[to.key] = _EnginePool(to.key, self)
        conn = await pool.get()
        parts = [to.head]
        if authorization:
            parts.append(b"Authorization: " + authorization + b"\r\n")
        parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
        parts.append(body)
        try:
            return await conn.exchange(b"".join(parts))
        except BaseException:
            conn.abort()
            raise

    def connections(self) -> int:
        return sum(len(p.open) for p in self._pools.values())

    async def close(self) -> None:
        for pool in self._pools.values():
            for conn in list(pool.open):
                conn.abort()
        self._pools.clear()
