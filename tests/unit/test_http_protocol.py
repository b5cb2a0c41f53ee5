"""The data port's HTTP protocol (serve_app/http_protocol.py): the writes of one loop turn leave in one send,
a stream's head still leaves at once, `close()` sends what is buffered first, and uvicorn's own answers
(a malformed request's 400, `connection: close`) still arrive whole."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from serve_app.http_protocol import CoalescingHttpToolsProtocol, CoalescingTransport
from tests.support import fast_engine


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = self.closed = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def _turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_writes_of_one_turn_leave_in_one_write_at_its_end() -> None:
    raw = FakeTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"")
    t.write(bytearray(b"body"))
    assert raw.writes == [] and t.pending() == 23
    await _turn()
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"] and t.pending() == 0
    t.write(b"next")
    await _turn()
    assert raw.writes[-1] == b"next" and len(raw.writes) == 2
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # everything else is the real transport's


async def test_close_sends_what_is_buffered_first_and_a_closing_transport_drops_it() -> None:
    raw = FakeTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"last words")
    t.close()
    assert raw.writes == [b"last words"] and raw.closed
    await _turn()  # the scheduled flush finds nothing left
    assert raw.writes == [b"last words"]

    raw = FakeTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"lost")
    raw.closing = True  # the peer went away before the turn ended
    await _turn()
    assert raw.writes == [] and t.pending() == 0

    raw = FakeTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"dropped")
    t.abort()
    await _turn()
    assert raw.writes == [] and raw.aborted


# ------------------------------------------------------------------------- through uvicorn


class _Counting:
    """The real transport, counting its writes."""

    sends: list[bytes] = []

    def __init__(self, transport: asyncio.Transport) -> None:
        self._t = transport

    def write(self, data: bytes) -> None:
        _Counting.sends.append(data)
        self._t.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


class _Protocol(CoalescingHttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Counting(transport))  # type: ignore[arg-type]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/fixed":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for k in range(3):
        await asyncio.sleep(0.3 if k == 0 else 0.01)  # a slow first event (prefill), then quick ones
        await send({"type": "http.response.body", "body": b"data: %d\n\n" % k, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def test_uvicorn_answers_through_it_in_one_send_and_streams_with_an_early_head() -> None:
    server, port = await fast_engine.serve(_app, http=_Protocol)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
            for _ in range(3):  # keep-alive: one connection, each answer whole and in one send
                _Counting.sends.clear()
                r = await http.get("/fixed")
                assert r.status_code == 200 and r.content == b"hello"
                assert len(_Counting.sends) == 1 and _Counting.sends[0].endswith(b"\r\n\r\nhello")

            _Counting.sends.clear()
            t0 = time.monotonic()
            async with http.stream("GET", "/stream") as resp:
                head_s = time.monotonic() - t0
                events = [c async for c in resp.aiter_text()]
            assert resp.status_code == 200 and head_s < 0.25, head_s  # the head did not wait for the first event
            assert "".join(events) == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
            assert _Counting.sends[0].startswith(b"HTTP/1.1 200") and _Counting.sends[0].endswith(b"\r\n\r\n")

            r = await http.get("/fixed", headers={"connection": "close"})
            assert r.status_code == 200 and r.content == b"hello"

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)  # uvicorn writes its 400 and closes: both arrive
        assert answer.startswith(b"HTTP/1.1 400") and answer.endswith(b"Invalid HTTP request received.")
        writer.close()
    finally:
        await fast_engine.stop(server)
