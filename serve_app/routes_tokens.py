"""Scoped API tokens: POST/GET /v1/tokens, DELETE /v1/tokens/{ref} (admin only; actors/token_store.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field, field_validator

from actors import token_store
from actors.storage import DuplicateError, Store
from actors.token_store import NAME_RE, Scope
from serve_app.auth import require_admin
from serve_app.context import AppContext
from serve_app.errors import ApiError, not_found
from serve_app.schemas import Strict

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)])


class TokenCreate(Strict):
    name: str = Field(description="unique among tokens not revoked: 1-63 lowercase letters, digits, . _ -")
    scope: Scope = Field(description="admin (everything), gateway (routing table, /v1/models, /metrics), metrics")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be 1-63 lowercase letters, digits, '.', '_', '-', starting and ending alphanumeric")
        return v


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _store(request: Request) -> Store:
    store = _ctx(request).store
    assert store is not None
    return store


@router.post("/tokens", status_code=201)
async def create_token(body: TokenCreate, request: Request) -> dict[str, Any]:
    try:
        rec, token = await token_store.create_token(_store(request), body.name, body.scope)
    except DuplicateError as exc:
        raise ApiError(409, "duplicate", f"a token named {body.name!r} already exists", "name") from exc
    return rec.public() | {"token": token}  # shown once, never again


@router.get("/tokens")
async def list_tokens(request: Request) -> list[dict[str, Any]]:
    return [t.public() for t in await token_store.list_tokens(_store(request))]


@router.delete("/tokens/{ref}")
async def revoke_token(ref: str, request: Request) -> dict[str, Any]:
    """By id or name; refused on every API replica within about a second (at once on this one)."""
    rec = await token_store.revoke_token(_store(request), ref)
    if rec is None:
        raise not_found("token", ref)
    _ctx(request).tokens.forget(rec.id)
    return rec.public()
