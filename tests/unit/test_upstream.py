"""The proxy's upstream client (serve_app/upstream.py) against scripted loopback servers: keep-alive reuse,
the per-engine bound, idle expiry, chunked and close-delimited bodies, interim answers, the three error kinds
(never sent / silent / lost after sending), and flow control of a stream the client reads slowly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from serve_app import upstream as up
from serve_app.upstream import ConnectFailed, UpstreamClient, UpstreamLost, UpstreamTimeout, target
from tests.support.proxy_harness import closed_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Script:
    """A loopback server: reads each request of a connection and lets `handler` answer it."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Script:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = next(int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
                self.requests.append(head + await reader.readexactly(n))
                await self.handler(reader, writer, len(self.requests))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _ok(body: bytes = b'{"ok":true}') -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
    writer.write(_ok(b'{"n":%d}' % i))


async def test_one_write_per_request_with_the_key_and_connections_reused() -> None:
    async with Script(_answer) as s:
        c = UpstreamClient()
        to = target(s.url, "/v1/chat/completions")
        for i in range(1, 6):
            r = await c.post(to, b'{"model":"m"}', b"Bearer ek_1")
            assert r.status == 200 and r.headers["content-type"] == "application/json"
            assert await r.read() == b'{"n":%d}' % i
            r.release()
        assert s.connections == 1 and c.connections() == 1
        head, _, body = s.requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
        assert b"Authorization: Bearer ek_1" in lines and b"Content-Length: 13" in lines
        assert body == b'{"model":"m"}'
        await c.close()


async def test_an_endpoint_with_a_path_prefix_and_a_query() -> None:
    to = target("http://10.0.0.1:8000/engine/", "/v1/completions")
    assert to.key == ("10.0.0.1", 8000, False)
    assert to.head.startswith(b"POST /engine/v1/completions HTTP/1.1\r\nHost: 10.0.0.1:8000\r\n")
    assert target("https://x.example", "/v1/completions").key == ("x.example", 443, True)
    with pytest.raises(ConnectFailed):
        target("ftp://x", "/v1/completions")


async def test_the_bound_per_engine_makes_requests_wait_not_fail() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await asyncio.sleep(0.05)
        writer.write(_ok())

    async with Script(slow) as s:
        c = UpstreamClient(max_per_engine=2)
        to = target(s.url, "/v1/completions")

        async def one() -> bytes:
            r = await c.post(to, b"{}")
            try:
                return await r.read()
            finally:
                r.release()

        assert await asyncio.gather(*(one() for _ in range(8))) == [b'{"ok":true}'] * 8
        assert s.connections == 2 and c.connections() <= 2


async def test_idle_connections_expire_and_a_closed_one_is_never_used() -> None:
    async def close_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        writer.write(_ok())
        if i == 2:
            await writer.drain()
            writer.close()  # the engine's own keep-alive ran out

    async with Script(close_after) as s:
        c = UpstreamClient(keepalive_s=0.05)
        to = target(s.url, "/v1/completions")
        for _ in range(2):
            r = await c.post(to, b"{}")
            await r.read()
            r.release()
        await asyncio.sleep(0.1)  # the engine closed it and it is past keepalive_s: a new connection
        r = await c.post(to, b"{}")
        assert await r.read() == b'{"ok":true}'
        r.release()
        assert s.connections == 2


async def test_chunked_interim_and_close_delimited_answers() -> None:
    async def odd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        if i == 1:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        else:  # HTTP/1.0 style: the body ends when the connection does
            writer.write(b"HTTP/1.1 503 Busy\r\nretry-after: 2\r\nconnection: close\r\n\r\nlater")
            await writer.drain()
            writer.close()

    async with Script(odd) as s:
        c = UpstreamClient()
        to = target(s.url, "/v1/completions")
        r = await c.post(to, b"{}")
        assert r.status == 200 and await r.read() == b"abcde"
        r.release()
        r = await c.post(to, b"{}")
        assert r.status == 503 and r.headers["retry-after"] == "2"
        assert await r.read() == b"later"
        r.release()
        assert c.connections() == 0  # "connection: close" is never kept


async def test_refused_is_connect_failed_silence_is_timeout_and_a_cut_is_lost() -> None:
    c = UpstreamClient(read_timeout_s=0.2)
    with pytest.raises(ConnectFailed, match="ConnectionRefusedError"):
        await c.post(target(f"http://127.0.0.1:{closed_port()}", "/v1/completions"), b"{}")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await asyncio.sleep(5)

    async with Script(silent) as s:
        with pytest.raises(UpstreamTimeout):
            await c.post(target(s.url, "/v1/completions"), b"{}")
        assert c.connections() == 0

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async with Script(cut) as s:
        r = await c.post(target(s.url, "/v1/completions"), b"{}")
        with pytest.raises(UpstreamLost):
            await r.read()
        r.close()
    await c.close()


async def test_a_slow_reader_pauses_the_engine_socket_and_keeps_every_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up, "PAUSE_AT", 1000)
    chunk = b"x" * 500
    resumes = []
    resume = up._Conn.resume

    def counted(self: up._Conn) -> None:
        resumes.append(1)
        resume(self)

    monkeypatch.setattr(up._Conn, "resume", counted)

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(200):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        writer.write(b"0\r\n\r\n")

    async with Script(stream) as s:
        c = UpstreamClient(read_timeout_s=0.3)
        r = await c.post(target(s.url, "/v1/chat/completions"), b"{}")
        got = 0
        async for data in r.chunks():
            await asyncio.sleep(0.01)  # slower than the engine; the pause is not counted as its silence
            got += len(data)
        assert got == 200 * len(chunk)
        assert resumes  # it was paused (and resumed) at least once
        r.release()


async def test_cancelling_a_request_closes_its_connection() -> None:
    started = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        started.set()
        await reader.read()  # returns when the proxy closes the connection

    async with Script(hang) as s:
        c = UpstreamClient()
        task = asyncio.ensure_future(c.post(target(s.url, "/v1/completions"), b"{}"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.connections() == 0
