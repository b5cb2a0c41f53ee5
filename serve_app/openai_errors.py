"""Errors of the OpenAI-compatible routes in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

The official `openai` client picks its exception by status (401 AuthenticationError, 403 PermissionDeniedError,
404 NotFoundError, 429 RateLimitError, 5xx InternalServerError, ...) and reads `message`, `type`, `param` and
`code` from the body. The admin API keeps its own shape (serve_app/errors.py).
"""

from __future__ import annotations

import json
from typing import Any

from serve_app.errors import ApiError

# OpenAI's `type` per status (what its API answers, where known)
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIError(ApiError):
    """An ApiError that renders in OpenAI's shape (the FastAPI handler of ApiError calls body())."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(status, code, message, param)
        self.retry_after_s = retry_after_s
        self.headers = {"retry-after": str(retry_after_s)} if retry_after_s is not None else None

    def body(self) -> dict[str, Any]:
        kind = _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.field, "code": self.code}}

    async def send(self, send: Any) -> None:
        """Write the error as a whole HTTP answer on an ASGI `send`."""
        data = json.dumps(self.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        if self.retry_after_s is not None:
            headers.append((b"retry-after", str(self.retry_after_s).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def missing_key() -> OpenAIError:
    return OpenAIError(
        401, "missing_api_key", "missing bearer token (Authorization: Bearer <the deployment's inference key>)"
    )


def invalid_key() -> OpenAIError:
    return OpenAIError(401, "invalid_api_key", "the bearer token is not a valid inference key or API token")


def key_for_other_model(model: str) -> OpenAIError:
    return OpenAIError(403, "model_not_allowed", f"this inference key is not valid for model {model!r}", "model")


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(404, "model_not_found", f"the model {model!r} does not exist (no deployment serves it)", "model")


def bad_request(message: str, param: str | None) -> OpenAIError:
    return OpenAIError(400, "invalid_request", message, param)


def too_large(max_bytes: int) -> OpenAIError:
    return OpenAIError(413, "payload_too_large", f"request body larger than {max_bytes} bytes", "body")


def rate_limited(message: str, retry_after_s: int) -> OpenAIError:
    return OpenAIError(429, "rate_limit_exceeded", message, None, retry_after_s)


def no_endpoint(model: str, retry_after_s: int = 2) -> OpenAIError:
    return OpenAIError(
        503,
        "no_healthy_endpoint",
        f"model {model!r} has no ready replica (deploying, scaled to zero, or every replica unhealthy)",
        "model",
        retry_after_s,
    )


def upstream_unavailable(model: str, detail: str) -> OpenAIError:
    return OpenAIError(502, "upstream_unavailable", f"no replica of {model!r} answered: {detail}")


def upstream_timeout(model: str, seconds: float) -> OpenAIError:
    return OpenAIError(504, "upstream_timeout", f"the replica of {model!r} sent nothing for {seconds:g} s")


def unavailable(detail: str) -> OpenAIError:
    return OpenAIError(503, "unavailable", f"a backing service is unavailable ({detail}); retry", None, 2)


def internal(detail: str) -> OpenAIError:
    return OpenAIError(500, "internal_error", f"internal error ({detail})")
