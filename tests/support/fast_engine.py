"""A minimal OpenAI-compatible engine on uvicorn (raw ASGI, no framework) that answers at once: the
upstream of the proxy's unit tests and of bench/proxy.py. Third-party imports: uvicorn only, so it also runs
as a `custom` engine's command line.

    python tests/support/fast_engine.py --port 20001 --model tiny [--api-key-env INFERIA_INFERENCE_KEY]
        [--chunk-delay-ms 20 --words 10]

GET /health, GET /v1/models, POST /v1/chat/completions and POST /v1/completions (with `"stream": true` as
server-sent events, one event per word). Answers echo the last user message / the prompt (followed by
`max_tokens` words when the request sets it, else by --words) and carry
`"served_by": "<name>"`. When the env var named by --api-key-env is set, the /v1 routes require
`Authorization: Bearer <that value>`.

In a test, `Engine` is the ASGI app with knobs (`Behaviour`: status, delays, a hang) and counters (requests,
in flight, clients that went away), served on loopback by `serve()`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn


@dataclass
class Behaviour:
    status: int = 200  # answer this status (an OpenAI-shaped error body when >= 400)
    delay_s: float = 0.0  # before the answer's headers (a slow prompt)
    chunk_delay_s: float = 0.0  # between two events of a stream (a slow generation)
    words: int = 0  # extra words appended to the echo (a longer stream)
    hang: bool = False  # never answer (a read timeout for the proxy)
    retry_after: str | None = None  # a Retry-After header on the answer


@dataclass
class Counters:
    requests: int = 0
    in_flight: int = 0
    completed: int = 0
    client_gone: int = 0  # requests whose client disconnected before the answer ended
    paths: list[str] = field(default_factory=list)
    last_body: bytes = b""
    last_headers: dict[str, str] = field(default_factory=dict)


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class Engine:
    """The ASGI app: one instance per engine; `behaviour` may be changed while it runs."""

    def __init__(self, model: str, api_key: str | None = None, served_by: str = "engine") -> None:
        self.model, self.api_key, self.served_by = model, api_key, served_by
        self.behaviour = Behaviour()
        self.counters = Counters()
        self.gone = asyncio.Event()  # set each time a client goes away mid-answer (tests wait on it)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if path == "/health":
            await _json(send, 200, {"status": "ok"})
            return
        if self.api_key and path.startswith("/v1/") and headers.get("authorization") != f"Bearer {self.api_key}":
            await _json(send, 401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
            return
        if path == "/v1/models" and method == "GET":
            await _json(send, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
            return
        if path not in ("/v1/chat/completions", "/v1/completions") or method != "POST":
            await _json(send, 404, {"error": {"message": f"no route {method} {path}"}})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        c = self.counters
        c.requests += 1
        c.in_flight += 1
        c.paths.append(path)
        c.last_body, c.last_headers = body, headers
        try:
            await self._answer(path, body, receive, send)
        finally:
            c.in_flight -= 1

    async def _answer(self, path: str, raw: bytes, receive: Any, send: Any) -> None:
        b = self.behaviour
        try:
            req = json.loads(raw)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            err = {"error": {"message": "body must be a JSON object", "type": "invalid_request_error"}}
            await _json(send, 400, err)
            return
        watch = asyncio.ensure_future(receive())  # returns http.disconnect when the client goes away
        try:
            if b.hang or b.delay_s:
                sleep = asyncio.ensure_future(asyncio.sleep(3600 if b.hang else b.delay_s))
                await asyncio.wait({sleep, watch}, return_when=asyncio.FIRST_COMPLETED)
                sleep.cancel()
                if watch.done():
                    self._client_gone()
                    return
            if b.status >= 400:
                extra = [(b"retry-after", b.retry_after.encode())] if b.retry_after else []
                error: dict[str, Any] = {"message": f"engine answered {b.status}", "type": "server_error", "code": None}
                await _json(send, b.status, {"error": error}, extra)
                self.counters.completed += 1
                return
            chat = path == "/v1/chat/completions"
            if chat:
                text = f"echo: {_last_user_text(req.get('messages'))}"
            else:
                prompt = req.get("prompt", "")
                text = f"echo: {prompt[-1] if isinstance(prompt, list) and prompt else prompt}"
            max_tokens = req.get("max_tokens")
            words = max_tokens if isinstance(max_tokens, int) and 0 < max_tokens <= 100_000 else b.words
            text += "".join(f" w{i}" for i in range(words))
            common = {"id": f"cmpl-{time.monotonic_ns()}", "created": int(time.time()), "model": req.get("model")}
            common["served_by"] = self.served_by
            if req.get("stream"):
                if await self._stream(chat, text, common, send, watch):
                    self.counters.completed += 1
                return
            if chat:
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
                answer = {**common, "object": "chat.completion", "choices": [choice | {"finish_reason": "stop"}]}
            else:
                answer = {**common, "object": "text_completion", "choices": [{"index": 0, "text": text}]}
            answer["usage"] = {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 0}
            await _json(send, 200, answer)
            self.counters.completed += 1
        finally:
            watch.cancel()

    async def _stream(self, chat: bool, text: str, common: dict[str, Any], send: Any, watch: Any) -> bool:
        """Server-sent events, one per word; False when the client went away before the end."""
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        kind = "chat.completion.chunk" if chat else "text_completion"
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else f" {word}"
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            event = {**common, "object": kind, "choices": [choice]}
            data = f"data: {json.dumps(event)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if self.behaviour.chunk_delay_s and i < len(words) - 1:
                await asyncio.wait({watch}, timeout=self.behaviour.chunk_delay_s)
            if watch.done():
                self._client_gone()
                return False
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return True

    def _client_gone(self) -> None:
        self.counters.client_gone += 1
        self.gone.set()


async def _json(send: Any, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _config(app: Any, **kw: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="critical", access_log=False, lifespan="off", interface="asgi3", **kw)


async def serve(app: Any, host: str = "127.0.0.1", **config: Any) -> tuple[uvicorn.Server, int]:
    """Serve an ASGI app (an Engine, or a proxy under test) on a free loopback port in the running loop;
    returns (server, port). `config`: more uvicorn.Config options (the data port's `http` protocol)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    sock.setblocking(False)
    server = uvicorn.Server(_config(app, **config))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    server.task = task  # type: ignore[attr-defined]
    return server, int(sock.getsockname()[1])


async def stop(server: uvicorn.Server) -> None:
    server.should_exit = server.force_exit = True  # hung requests of a test do not hold the shutdown
    await server.task  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="minimal OpenAI-compatible engine (uvicorn, raw ASGI)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key-env", default="INFERIA_INFERENCE_KEY")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="between two events of a stream")
    parser.add_argument("--words", type=int, default=0, help="extra words in every answer (longer streams)")
    args = parser.parse_args(argv)
    engine = Engine(args.model, os.environ.get(args.api_key_env) or None, served_by=str(args.port))
    engine.behaviour.chunk_delay_s = args.chunk_delay_ms / 1000.0
    engine.behaviour.words = args.words
    print(f"fast_engine serving {args.model!r} on {args.host}:{args.port}", flush=True)
    uvicorn.Server(_config(engine, host=args.host, port=args.port)).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
