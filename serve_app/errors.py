"""JSON errors with a stable code, a human message and, for bad input, the field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


def not_found(kind: str, ref: str) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"{kind} {ref!r} not found")


def _loc(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
        field = _loc(first.get("loc", ()))
        msg = str(first.get("msg", "invalid"))
        if first.get("type") == "json_invalid":
            field, msg = "body", "malformed JSON"
        details = [{"field": _loc(e.get("loc", ())), "message": str(e.get("msg"))} for e in errs[:20]]
        return JSONResponse(
            {"code": "invalid_request", "message": f"{field}: {msg}", "field": field, "errors": details},
            status_code=422,
        )

    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.CannotConnectNowError)
    @app.exception_handler(OSError)  # ConnectionRefusedError, a vanished unix socket, ...
    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        # the database (or another backing service) is unreachable: the client may retry
        return JSONResponse(
            {"code": "unavailable", "message": f"a backing service is unavailable ({type(exc).__name__}); retry"},
            status_code=503,
            headers={"retry-after": "2"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        body = {"code": code, "message": str(exc.detail)} | ({"field": "body"} if exc.status_code == 413 else {})
        return JSONResponse(body, status_code=exc.status_code)
