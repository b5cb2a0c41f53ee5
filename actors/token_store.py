"""Scoped API tokens in PostgreSQL (table api_tokens, migration 003): stored as SHA-256 hashes only.

Scopes, from most to least: `admin` (everything), `gateway` (read and watch the routing table, /v1/models,
/metrics), `metrics` (/metrics). The sequence api_tokens_version is bumped by every create and revoke so that
each API replica can poll one number and reload its cache only when something changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from actors.records import hash_secret, new_id, new_secret
from actors.storage import DuplicateError, Store

TOKEN_PREFIX = "it"  # the bootstrap admin token is it_... too; inference keys are ik_..., node tokens nt_...
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


class Scope(StrEnum):
    ADMIN = "admin"
    GATEWAY = "gateway"
    METRICS = "metrics"


_RANK = {Scope.METRICS: 1, Scope.GATEWAY: 2, Scope.ADMIN: 3}


def covers(have: Scope | str, need: Scope | str) -> bool:
    """True when a token of scope `have` may do what needs scope `need` (admin > gateway > metrics)."""
    return _RANK[Scope(have)] >= _RANK[Scope(need)]


@dataclass
class TokenRecord:
    id: str
    name: str
    scope: Scope
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used: datetime | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": str(self.scope),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used": self.last_used,
            "revoked": self.revoked_at is not None,
        }


_COLS = "id, name, scope, created_at, revoked_at, last_used"


def _rec(r: asyncpg.Record) -> TokenRecord:
    d = dict(r)
    d["scope"] = Scope(d["scope"])
    return TokenRecord(**d)


async def create_token(store: Store, name: str, scope: Scope) -> tuple[TokenRecord, str]:
    """A new token; the plain value is returned here only (the table keeps its hash)."""
    token = new_secret(TOKEN_PREFIX)
    try:
        async with store.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"INSERT INTO api_tokens (id, name, scope, token_hash) VALUES ($1, $2, $3, $4) RETURNING {_COLS}",
                new_id("tok"),
                name,
                str(scope),
                hash_secret(token),
            )
            assert row is not None
            await store.add_event("token.created", "token", row["id"], {"name": name, "scope": str(scope)}, conn)
    except asyncpg.UniqueViolationError as exc:
        raise DuplicateError("name", name) from exc
    await _bump(store)
    return _rec(row), token


async def list_tokens(store: Store, include_revoked: bool = True) -> list[TokenRecord]:
    q = f"SELECT {_COLS} FROM api_tokens"
    if not include_revoked:
        q += " WHERE revoked_at IS NULL"
    return [_rec(r) for r in await store.pool.fetch(q + " ORDER BY created_at, id")]


async def get_token(store: Store, ref: str) -> TokenRecord | None:
    """By id, else the active token of that name, else the latest revoked one of that name."""
    row = await store.pool.fetchrow(
        f"SELECT {_COLS} FROM api_tokens WHERE id = $1 OR name = $1"
        " ORDER BY (id = $1) DESC, (revoked_at IS NULL) DESC, created_at DESC LIMIT 1",
        ref,
    )
    return _rec(row) if row else None


async def revoke_token(store: Store, ref: str) -> TokenRecord | None:
    """Idempotent: a revoked token is answered as it is. None when no token has this id or name."""
    rec = await get_token(store, ref)
    if rec is None or rec.revoked_at is not None:
        return rec
    async with store.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING {_COLS}",
            rec.id,
        )
        if row is not None:
            await store.add_event("token.revoked", "token", rec.id, {"name": rec.name}, conn)
    await _bump(store)
    return _rec(row) if row else await get_token(store, rec.id)


async def _bump(store: Store) -> None:
    # after the commit (a sequence is not transactional): a replica that sees the new number reads the new rows
    await store.pool.execute("SELECT nextval('api_tokens_version')")


async def tokens_version(store: Store) -> int:
    row = await store.pool.fetchrow("SELECT last_value, is_called FROM api_tokens_version")
    assert row is not None
    return int(row["last_value"]) if row["is_called"] else 0


async def active_tokens(store: Store) -> tuple[int, dict[str, tuple[str, Scope]]]:
    """(version, token hash -> (id, scope)) of every token not revoked, read in one transaction."""
    async with store.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        row = await conn.fetchrow("SELECT last_value, is_called FROM api_tokens_version")
        rows = await conn.fetch("SELECT id, scope, token_hash FROM api_tokens WHERE revoked_at IS NULL")
    assert row is not None
    version = int(row["last_value"]) if row["is_called"] else 0
    return version, {r["token_hash"]: (r["id"], Scope(r["scope"])) for r in rows}


async def find_token(store: Store, token_hash: str) -> tuple[str, Scope] | None:
    row = await store.pool.fetchrow(
        "SELECT id, scope FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL", token_hash
    )
    return (row["id"], Scope(row["scope"])) if row else None


async def touch_tokens(store: Store, used: dict[str, datetime]) -> None:
    """Record when tokens were last used (one statement for a batch; never moves last_used back)."""
    if not used:
        return
    await store.pool.execute(
        "UPDATE api_tokens AS t SET last_used = u.at FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at)"
        " WHERE t.id = u.id AND (t.last_used IS NULL OR t.last_used < u.at)",
        list(used),
        list(used.values()),
    )
