"""A tiny OpenAI-compatible stub engine (stdlib only) for tests.

    python tests/support/fake_engine.py --port 20001 --model tiny [--host 127.0.0.1]
        [--api-key-env INFERIA_INFERENCE_KEY] [--slots K --service-ms N] [--tag TAG] [--startup-s S]

GET /v1/models, GET /health, POST /v1/chat/completions and POST /v1/completions (both with
`"stream": true` as server-sent events). Answers echo the last user message / the prompt and
carry `"served_by": "<port>"`; a chat whose last user message is `sleep:<seconds>` answers that much
later. When the env var named by --api-key-env is set, the /v1 routes require
`Authorization: Bearer <that value>`.

With `--slots K` the engine runs at most K generations at once (the others wait for a slot, like vLLM's
scheduler queue) and each takes `--service-ms`; GET /metrics exposes vLLM's series
`vllm:num_requests_running`, `vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc` (running / K).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class EngineServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tag = ""  # --tag: carried in every answer (rolling-update tests tell the generations apart by it)

    def __init__(
        self, host: str, port: int, model: str, api_key: str | None, slots: int = 0, service_s: float = 0.0
    ) -> None:
        super().__init__((host, port), Handler)
        self.model = model
        self.api_key = api_key
        self.served_by = str(self.server_address[1])
        self.slots = slots
        self.service_s = service_s
        self._slot = threading.Semaphore(slots) if slots > 0 else None
        self._lock = threading.Lock()
        self.running = 0
        self.waiting = 0

    def generate(self) -> None:
        """Take a slot for service_s (waiting for one when all K are busy)."""
        if self._slot is None:
            if self.service_s:
                time.sleep(self.service_s)
            return
        with self._lock:
            self.waiting += 1
        self._slot.acquire()
        with self._lock:
            self.waiting -= 1
            self.running += 1
        try:
            time.sleep(self.service_s)
        finally:
            with self._lock:
                self.running -= 1
            self._slot.release()

    def metrics_text(self) -> str:
        label = f'{{model_name="{self.model}"}}'
        usage = self.running / self.slots if self.slots else 0.0
        return (
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{label} {float(self.running)}\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{label} {float(self.waiting)}\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{label} {usage}\n"
        )


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts
                return "".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
                )
    return ""


class Handler(BaseHTTPRequestHandler):
    server: EngineServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"fake_engine {self.address_string()} {format % args}\n")

    # ------------------------------------------------------------ helpers
    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {key}":
            return True
        self._send_json(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
        return False

    def _read_json(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self._send_json(400, {"error": {"message": "body must be a JSON object"}})
            return None
        return body

    def _stream(self, chunks: list[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    # ------------------------------------------------------------ routes
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send_json(200, {"status": "ok"})
        elif path == "/metrics":
            data = self.server.metrics_text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif path == "/v1/models":
            if self._authorized():
                model = {"id": self.server.model, "object": "model", "owned_by": "fake"}
                self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_json(404, {"error": {"message": f"no route {path}"}})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._send_json(404, {"error": {"message": f"no route {path}"}})
            return
        if not self._authorized():
            return
        body = self._read_json()
        if body is None:
            return
        self.server.generate()
        if path == "/v1/chat/completions":
            self._chat(body)
        else:
            self._completion(body)

    def _common(self, kind: str) -> dict[str, Any]:
        return {
            "id": f"{kind}-{uuid.uuid4().hex[:12]}",
            "created": int(time.time()),
            "model": self.server.model,
            "served_by": self.server.served_by,
            "tag": self.server.tag,
        }

    def _chat(self, body: dict[str, Any]) -> None:
        user = _last_user_text(body.get("messages"))
        if user.startswith("sleep:"):  # "sleep:<seconds>": a slow request (drain tests keep one in flight)
            time.sleep(min(60.0, float(user.split(":", 1)[1] or 0)))
        text = f"echo: {user}"
        usage = {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 1 + len(text.split())}
        if body.get("stream"):
            base = {**self._common("chatcmpl"), "object": "chat.completion.chunk"}
            words = text.split(" ")
            chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
            for i, word in enumerate(words):
                piece = word if i == 0 else f" {word}"
                chunks.append({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            self._stream(chunks)
            return
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        self._send_json(
            200, {**self._common("chatcmpl"), "object": "chat.completion", "choices": [choice], "usage": usage}
        )

    def _completion(self, body: dict[str, Any]) -> None:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            prompt = prompt[-1] if prompt else ""
        text = f"echo: {prompt}"
        if body.get("stream"):
            base = {**self._common("cmpl"), "object": "text_completion"}
            words = text.split(" ")
            chunks = []
            for i, word in enumerate(words):
                piece = word if i == 0 else f" {word}"
                chunks.append({**base, "choices": [{"index": 0, "text": piece, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
            self._stream(chunks)
            return
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
        usage = {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 1 + len(text.split())}
        self._send_json(200, {**self._common("cmpl"), "object": "text_completion", "choices": [choice], "usage": usage})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAI-compatible stub engine")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key-env", default="INFERIA_INFERENCE_KEY")
    parser.add_argument("--tag", default="", help="carried as `tag` in every answer")
    parser.add_argument("--slots", type=int, default=0, help="generations at once (0: unlimited)")
    parser.add_argument("--service-ms", type=float, default=0.0, help="time of one generation")
    parser.add_argument("--startup-s", type=float, default=0.0, help="seconds before the port is open (a load)")
    args = parser.parse_args(argv)
    time.sleep(args.startup_s)
    key = os.environ.get(args.api_key_env) or None
    server = EngineServer(args.host, args.port, args.model, key, args.slots, args.service_ms / 1000)
    server.tag = args.tag

    def _stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    print(f"fake_engine serving {args.model!r} on {args.host}:{server.served_by}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
