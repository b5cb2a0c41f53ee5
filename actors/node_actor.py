"""One node's lifecycle task inside its pool's actor: a mailbox of commands run one at a time, in order.

A node is not a Ray actor (one Ray actor is a ~60 MiB process); it is an asyncio task that reads
`provision`, `drain` and `terminate` from its own queue. The steps themselves live in the pool
(actors/pool_core.py, `NodeSteps`), which owns the adapter, the store and the inventory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from actors.records import NodeRecord
from actors.states import NodeState
from adapters.base import WorkloadSpec

log = logging.getLogger(__name__)


class Cmd(StrEnum):
    PROVISION = "provision"
    TERMINATE = "terminate"  # deprovision at once (a dead node, an explicit delete, `down`)
    DRAIN = "drain"  # out of the routing table, wait until idle (bounded), then terminate


class NodeSteps(Protocol):
    """What a node actor asks its pool to do."""

    async def _provision(self, actor: NodeActor) -> None: ...
    async def _drain(self, actor: NodeActor, reason: str | None) -> None: ...
    async def _terminate(self, actor: NodeActor, reason: str | None) -> None: ...
    def _forget(self, node_id: str) -> None: ...


class NodeActor:
    """One node's mailbox and lifecycle task; commands are processed one at a time, in order.

    `terminating` is set while a drain/terminate is queued or running (a second one is then dropped, except
    that a terminate hurries a drain that is waiting). It is reset whenever that command ends without the
    node being terminated, whatever the error: a terminate can never stick, and `end_reason` remembers that
    the node was asked to end, so the provider reconcile sends the terminate again."""

    def __init__(self, steps: NodeSteps, record: NodeRecord, workload: WorkloadSpec | None) -> None:
        self.steps = steps
        self.record = record
        self.workload = workload
        self.mailbox: asyncio.Queue[tuple[Cmd, str | None]] = asyncio.Queue()
        self.busy = False
        self.terminating = False
        self.end_reason: str | None = None  # set once an end was asked for; the node must end
        self.hurry = asyncio.Event()  # a terminate arrived while a drain waits: stop waiting
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def end_wanted(self) -> bool:
        return self.end_reason is not None or self.record.state == NodeState.DRAINING

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"node:{self.id}")

    def send(self, cmd: Cmd, reason: str | None = None) -> None:
        if cmd in (Cmd.TERMINATE, Cmd.DRAIN):
            if self.end_reason is None:
                self.end_reason = reason or str(cmd)
            if cmd == Cmd.TERMINATE:
                self.hurry.set()
            if self.terminating:
                return
            self.terminating = True
        self.mailbox.put_nowait((cmd, reason))

    @property
    def idle(self) -> bool:
        return not self.busy and self.mailbox.empty()

    async def stop(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # the caller itself is being cancelled: let it through
                raise

    async def _run(self) -> None:
        while True:
            cmd, reason = await self.mailbox.get()
            self.busy = True
            try:
                if cmd == Cmd.PROVISION and not self.terminating:
                    await self.steps._provision(self)
                elif cmd == Cmd.DRAIN:
                    await self.steps._drain(self, reason)
                elif cmd == Cmd.TERMINATE:
                    await self.steps._terminate(self, reason)
            except asyncio.CancelledError:
                raise
            except Exception:  # the lifecycle task must not die
                log.exception("node %s: %s failed", self.id, cmd)
            finally:
                self.busy = False
                if cmd in (Cmd.DRAIN, Cmd.TERMINATE) and self.record.state != NodeState.TERMINATED:
                    # not ended (provider error, inventory unreachable, a bug): accept the next terminate;
                    # the provider reconcile sends one (end_wanted). Never forget a paid instance.
                    self.terminating = False
                    self.hurry.clear()
            if self.record.state == NodeState.TERMINATED:
                self.done.set()
                self.steps._forget(self.id)
                return


class EndedSet:
    """The node ids a pool saw end, bounded in size and age: Ray resubmits a create_node that was in flight
    when the pool actor died (seconds), so an id needs remembering for minutes, not forever."""

    def __init__(self, max_size: int = 10_000, max_age_s: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.max_size, self.max_age_s, self.clock = max_size, max_age_s, clock
        self._at: OrderedDict[str, float] = OrderedDict()

    def add(self, node_id: str) -> None:
        self._at.pop(node_id, None)
        self._at[node_id] = self.clock()
        self._trim()

    def __contains__(self, node_id: Any) -> bool:
        self._trim()
        return node_id in self._at

    def __len__(self) -> int:
        self._trim()
        return len(self._at)

    def _trim(self) -> None:
        oldest = self.clock() - self.max_age_s
        while self._at and (len(self._at) > self.max_size or next(iter(self._at.values())) < oldest):
            self._at.popitem(last=False)
