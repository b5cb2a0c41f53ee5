"""The Python client's exceptions: the `InferiaError` tree and the mapping of an error answer to one.

Re-exported by controller/client.py (`from controller.client import NotFound` keeps working).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx


class InferiaError(Exception):
    """An error answer of the API (or of the client itself): HTTP status, stable code, message, field."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str = "error", field: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, field={self.field!r})"
        )


class NotFound(InferiaError):
    """404."""


class Conflict(InferiaError):
    """409: the object is in a state that forbids the request, or a duplicate name."""


class Unauthorized(InferiaError):
    """401 or 403: missing or wrong bearer token."""


class InvalidRequest(InferiaError):
    """400 or 422: a bad request body or parameter (`field` names it)."""


class ServerError(InferiaError):
    """5xx."""


class ConnectionFailed(InferiaError):
    """The control plane could not be reached (or did not answer in time)."""


class DeploymentFailed(InferiaError):
    """`wait_deployment` saw the deployment go to `failed`; `.deployment` holds its last state."""

    def __init__(self, message: str, deployment: dict[str, Any]) -> None:
        super().__init__(message, code="deployment_failed", field=None)
        self.deployment = deployment


class WaitTimeout(InferiaError):
    """`wait_deployment` ran out of time; `.deployment` holds the last state seen."""

    def __init__(self, message: str, deployment: dict[str, Any] | None) -> None:
        super().__init__(message, code="timeout")
        self.deployment = deployment


_BY_STATUS: dict[int, type[InferiaError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
}


def error_from_response(resp: httpx.Response, secrets: Iterable[str | None] = ()) -> InferiaError:
    """Map an error answer (the API's `{"code", "message", "field"?}` JSON, the OpenAI routes'
    `{"error": {"message", "type", "param", "code"}}`, or anything else) to an exception.

    Any of `secrets` found in the message is replaced by `***`.
    """
    status = resp.status_code
    code, message, field = f"http_{status}", "", None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # the OpenAI routes' shape
        err = body["error"]
        body = {"code": err.get("code"), "message": err.get("message"), "field": err.get("param")}
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        message = str(body.get("message") or body.get("detail") or "")
        field = str(body["field"]) if body.get("field") else None
    if not message:
        text = resp.text.strip() if not isinstance(body, dict) else ""
        message = text[:300] or f"HTTP {status} {resp.reason_phrase}".strip()
    for secret in secrets:
        message = _redact(message, secret)
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else InferiaError)
    return cls(message, status=status, code=code, field=field)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class UpdateRolledBack(InferiaError):
    """The update did not finish: it was rolled back (by itself, or on request); the deployment runs its old
    generation. `deployment` holds the last answer (its `rollout.last_failure` says why)."""

    def __init__(self, message: str, deployment: dict[str, Any]) -> None:
        super().__init__(message)
        self.deployment = deployment
