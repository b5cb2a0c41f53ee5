"""Who may call what: the bootstrap admin token and the scoped API tokens (actors/token_store.py).

Each API replica keeps the hashes of the tokens that are not revoked. It polls the table's version number
every POLL_S and reloads the hashes when it changed (at the latest every RELOAD_S), so a revoked token is
refused everywhere within about POLL_S. A token the cache does not know (created a moment ago through another
replica) is looked up in PostgreSQL once; unknown hashes are remembered for NEGATIVE_TTL_S in a bounded map.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import Request

from actors import token_store
from actors.records import hash_secret
from actors.storage import Store
from actors.token_store import Scope, covers
from serve_app.errors import ApiError

log = logging.getLogger(__name__)

POLL_S = 0.5
RELOAD_S = 10.0
NEGATIVE_TTL_S = 1.0
NEGATIVE_MAX = 10_000
TOUCH_S = 10.0
BOOTSTRAP_ID = "bootstrap"


class TokenCache:
    def __init__(self, admin_hash: str, store: Callable[[], Store | None], clock: Callable[[], float] = time.monotonic):
        self.admin_hash = admin_hash
        self._store = store
        self.clock = clock
        self.version = -1
        self.tokens: dict[str, tuple[str, Scope]] = {}  # hash -> (id, scope)
        self.loaded_at = float("-inf")
        self._negative: OrderedDict[str, float] = OrderedDict()  # hash -> until
        self._used: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        self.db_lookups = 0

    # ------------------------------------------------------------ refresh
    async def refresh(self, force: bool = False) -> None:
        store = self._store()
        if store is None:
            return
        if not force and self.clock() - self.loaded_at < RELOAD_S:
            if await token_store.tokens_version(store) == self.version:
                return
        self.version, self.tokens = await token_store.active_tokens(store)
        self.loaded_at = self.clock()
        self._negative.clear()

    async def _run(self) -> None:
        last_touch = self.clock()
        while True:
            try:
                await self.refresh()
                if self.clock() - last_touch >= TOUCH_S:
                    last_touch = self.clock()
                    await self.flush_used()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down: keep the last known tokens, retry
                log.warning("token cache refresh failed: %s", exc)
            await asyncio.sleep(POLL_S)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush_used()

    async def flush_used(self) -> None:
        store = self._store()
        if not self._used or store is None:
            return
        used, self._used = self._used, {}
        await token_store.touch_tokens(store, used)

    def forget(self, token_hash_or_id: str) -> None:
        """This replica revoked a token: refuse it here at once (the others follow within POLL_S)."""
        for h, (tid, _) in list(self.tokens.items()):
            if token_hash_or_id in (h, tid):
                self.tokens.pop(h, None)

    # ------------------------------------------------------------ lookup
    async def scope_of(self, token: str | None) -> Scope | None:
        """The scope of a bearer token, None when it is no API token (or a revoked one)."""
        if not token:
            return None
        digest = hash_secret(token)
        if hmac.compare_digest(digest, self.admin_hash):
            return Scope.ADMIN
        if not token.startswith(token_store.TOKEN_PREFIX + "_"):
            return None  # inference keys, node tokens, garbage: never an API token, no database lookup
        hit = self.tokens.get(digest)
        if hit is None:
            hit = await self._lookup(digest)
            if hit is None:
                return None
        self._used[hit[0]] = datetime.now(UTC)
        return hit[1]

    async def _lookup(self, digest: str) -> tuple[str, Scope] | None:
        now = self.clock()
        until = self._negative.get(digest)
        if until is not None and until > now:
            return None
        store = self._store()
        if store is None:
            return None
        self.db_lookups += 1
        hit = await token_store.find_token(store, digest)
        if hit is None:
            self._negative[digest] = now + NEGATIVE_TTL_S
            self._negative.move_to_end(digest)
            while len(self._negative) > NEGATIVE_MAX:
                self._negative.popitem(last=False)
            return None
        self.tokens[digest] = hit
        return hit


# ---------------------------------------------------------------- FastAPI helpers
def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def _cache(request: Request) -> TokenCache:
    cache: TokenCache = request.app.state.ctx.tokens
    return cache


async def require_scope(request: Request, need: Scope) -> Scope:
    token = bearer(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <API token>)")
    have = await _cache(request).scope_of(token)
    if have is None or not covers(have, need):
        what = "the admin API" if need == Scope.ADMIN else f"this route (needs a {need} or higher token)"
        raise ApiError(403, "forbidden", f"the bearer token is not valid for {what}")
    return have


async def require_admin(request: Request) -> None:
    await require_scope(request, Scope.ADMIN)


async def require_gateway(request: Request) -> None:
    await require_scope(request, Scope.GATEWAY)


def from_loopback(request: Request) -> bool:
    host = request.client.host if request.client else None
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def require_metrics(request: Request) -> None:
    """A metrics, gateway or admin token; or none for a loopback client with INFERIA_METRICS_OPEN_ON_LOOPBACK."""
    if request.app.state.ctx.cfg.metrics_open_on_loopback and from_loopback(request):
        return
    await require_scope(request, Scope.METRICS)
