"""Replica-local copy of the routing table, kept fresh by long-polling the inventory actor.

Reads (GET /v1/routing-table, the proxy) are answered from memory: no actor call per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Poll = Callable[[int, float], Awaitable[dict[str, Any]]]


class RoutingCache:
    def __init__(self, poll: Poll, poll_timeout_s: float = 30.0) -> None:
        self._poll = poll
        self._timeout = poll_timeout_s
        self.table: dict[str, Any] = {"version": -1, "models": {}}
        self.body: bytes = b""
        # set (and replaced by a fresh one) at every change: waiters hold the event of the version they know.
        # An Event, not a Condition: a Condition waiter cancelled while re-acquiring its lock (a client gone,
        # a hold timing out) raises "Lock is not acquired" on Python 3.11
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    @property
    def version(self) -> int:
        return int(self.table["version"])

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def _set(self, table: dict[str, Any]) -> None:
        if table["version"] == self.version and self.synced.is_set():
            return
        self.table = table
        self.body = json.dumps(table, separators=(",", ":")).encode()
        self.synced.set()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                table = await self._poll(self.version, self._timeout)
                await self._set(table)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("routing long-poll failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def wait_newer(self, version: int, timeout_s: float) -> None:
        """Return when the table's version differs from `version`, or after timeout_s."""
        if self.version != version:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            pass

    def endpoints(self, model: str) -> list[dict[str, Any]]:
        return list(self.table["models"].get(model, []))
