"""MicroBatcher (many callers, one flush per batch) and RoutingCache (long-polled routing table)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serve_app.batcher import MicroBatcher
from serve_app.routing_cache import RoutingCache

# ------------------------------------------------------------------------------------------- MicroBatcher


class Flusher:
    """Records each batch; answers item * 10, after one event-loop turn (like an actor call)."""

    def __init__(self, fail_with: Exception | None = None, short: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_with = fail_with
        self.short = short

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0)
        if self.fail_with is not None:
            raise self.fail_with
        out = [i * 10 for i in items]
        return out[:-1] if self.short else out


async def test_concurrent_submits_share_flushes() -> None:
    flush = Flusher()
    b: MicroBatcher[int, int] = MicroBatcher(flush)
    results = await asyncio.gather(*(b.submit(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]  # each caller gets its own result
    assert 1 <= len(flush.batches) < 50
    assert sorted(i for batch in flush.batches for i in batch) == list(range(50))
    assert b.stats() == {"batches": len(flush.batches), "items": 50}


async def test_requests_arriving_while_a_batch_is_in_flight_go_out_together() -> None:
    gate = asyncio.Event()
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            await gate.wait()
        return [-i for i in items]

    b: MicroBatcher[int, int] = MicroBatcher(flush)
    first = asyncio.ensure_future(b.submit(0))
    await asyncio.sleep(0.001)
    assert batches == [[0]]  # in flight
    later = [asyncio.ensure_future(b.submit(i)) for i in range(1, 11)]
    await asyncio.sleep(0.001)
    gate.set()
    assert await first == 0
    assert await asyncio.gather(*later) == [-i for i in range(1, 11)]
    assert batches == [[0], list(range(1, 11))]


async def test_max_batch_is_respected() -> None:
    flush = Flusher()
    b: MicroBatcher[int, int] = MicroBatcher(flush, max_batch=4)
    results = await asyncio.gather(*(b.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert all(len(batch) <= 4 for batch in flush.batches)
    assert len(flush.batches) == 3


async def test_submit_many() -> None:
    flush = Flusher()
    b: MicroBatcher[int, int] = MicroBatcher(flush)
    many, one = await asyncio.gather(b.submit_many([1, 2, 3]), b.submit(4))
    assert many == [10, 20, 30] and one == 40
    assert len(flush.batches) == 1


async def test_an_exception_in_flush_reaches_every_caller_of_the_batch() -> None:
    boom = RuntimeError("inventory actor died")
    flush = Flusher(fail_with=boom)
    b: MicroBatcher[int, int] = MicroBatcher(flush)
    results = await asyncio.gather(*(b.submit(i) for i in range(5)), return_exceptions=True)
    assert len(flush.batches) == 1
    assert all(r is boom for r in results)


async def test_batcher_recovers_after_a_failed_flush() -> None:
    flush = Flusher(fail_with=RuntimeError("down"))
    b: MicroBatcher[int, int] = MicroBatcher(flush)
    with pytest.raises(RuntimeError):
        await b.submit(1)
    flush.fail_with = None
    assert await asyncio.gather(b.submit(2), b.submit(3)) == [20, 30]


async def test_only_the_failing_batch_gets_the_exception() -> None:
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise ValueError("first batch fails")
        return items

    b: MicroBatcher[int, int] = MicroBatcher(flush, max_batch=2)
    results = await asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True)
    assert [type(r) for r in results[:2]] == [ValueError, ValueError]
    assert results[2:] == [2, 3]


async def test_a_flush_returning_the_wrong_count_fails_the_callers_instead_of_hanging() -> None:
    flush = Flusher(short=True)
    b: MicroBatcher[int, int] = MicroBatcher(flush)
    tasks = [asyncio.ensure_future(b.submit(i)) for i in range(3)]
    done, pending = await asyncio.wait(tasks, timeout=0.5)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    assert not pending, f"{len(pending)} callers never got an answer"
    assert all(isinstance(t.exception(), Exception) for t in done)


# ------------------------------------------------------------------------------------------- RoutingCache
class FakePoll:
    """Long-poll stand-in: answers at once if the known version is stale, else waits for a push."""

    def __init__(self) -> None:
        self.table: dict[str, Any] = {"version": 1, "models": {}}
        self.calls: list[tuple[int, float]] = []
        self._changed = asyncio.Event()
        self.fail_next = 0

    def push(self, models: dict[str, Any]) -> None:
        self.table = {"version": self.table["version"] + 1, "models": models}
        self._changed.set()

    async def __call__(self, known: int, timeout: float) -> dict[str, Any]:
        self.calls.append((known, timeout))
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("actor unavailable")
        if known == self.table["version"]:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass
        return self.table


ROUTE = {"node_id": "n1", "endpoint": "http://10.0.0.1:8000", "served_model": "m", "deployment_id": "d"}


@pytest.fixture
async def poll_cache() -> AsyncIterator[tuple[FakePoll, RoutingCache]]:
    poll = FakePoll()
    cache = RoutingCache(poll, poll_timeout_s=5.0)
    yield poll, cache
    await cache.stop()
    await asyncio.sleep(0)


async def test_cache_starts_unsynced() -> None:
    cache = RoutingCache(FakePoll())
    assert cache.version == -1
    assert cache.endpoints("m") == []
    assert not cache.synced.is_set()


async def test_first_poll_syncs(poll_cache: tuple[FakePoll, RoutingCache]) -> None:
    poll, cache = poll_cache
    cache.start()
    await asyncio.wait_for(cache.synced.wait(), 1)
    assert cache.version == 1
    assert poll.calls[0] == (-1, 5.0)
    assert json.loads(cache.body) == {"version": 1, "models": {}}


async def test_wait_newer_returns_when_a_new_version_arrives(poll_cache: tuple[FakePoll, RoutingCache]) -> None:
    poll, cache = poll_cache
    cache.start()
    await asyncio.wait_for(cache.synced.wait(), 1)
    waiter = asyncio.ensure_future(cache.wait_newer(1, timeout_s=5.0))
    await asyncio.sleep(0.001)
    assert not waiter.done()
    poll.push({"m": [ROUTE]})
    await asyncio.wait_for(waiter, 1)
    assert cache.version == 2
    assert cache.endpoints("m") == [ROUTE]
    assert json.loads(cache.body)["models"]["m"] == [ROUTE]
    assert poll.calls[-1][0] == 2  # the next long-poll asks for news after version 2


async def test_wait_newer_returns_at_once_when_already_newer(poll_cache: tuple[FakePoll, RoutingCache]) -> None:
    _, cache = poll_cache
    cache.start()
    await asyncio.wait_for(cache.synced.wait(), 1)
    await asyncio.wait_for(cache.wait_newer(0, timeout_s=5.0), 0.5)


async def test_wait_newer_times_out_quietly(poll_cache: tuple[FakePoll, RoutingCache]) -> None:
    _, cache = poll_cache
    cache.start()
    await asyncio.wait_for(cache.synced.wait(), 1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await cache.wait_newer(1, timeout_s=0.02)
    assert loop.time() - t0 >= 0.015
    assert cache.version == 1


async def test_waiters_cancelled_as_they_time_out_leave_no_error(poll_cache: tuple[FakePoll, RoutingCache]) -> None:
    """Held requests (serve_app/hold.py) wait in short slices; a client that goes away just as a slice ends
    cancels its waiter while the timeout is being handled: each waiter ends cancelled or done, never with an
    error, and none is left waiting (with an asyncio.Condition the lock ended up released by the wrong
    waiter: "Lock is not acquired" on Python 3.11, and waiters stuck for good)."""
    _, cache = poll_cache
    cache.start()
    await asyncio.wait_for(cache.synced.wait(), 1)
    loop = asyncio.get_running_loop()
    for round_ in range(12):
        waiters = [asyncio.create_task(cache.wait_newer(cache.version, timeout_s=0.01)) for _ in range(50)]
        await asyncio.sleep(0)  # each waiter has armed its timeout

        def cancel_later(turns: int, tasks: list[asyncio.Task[None]]) -> None:  # `turns` iterations later
            if turns:
                loop.call_soon(cancel_later, turns - 1, tasks)
            else:
                for w in tasks:
                    w.cancel()

        loop.call_later(0.01, cancel_later, round_ % 4, waiters)
        results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results


async def test_endpoints_returns_a_copy(poll_cache: tuple[FakePoll, RoutingCache]) -> None:
    poll, cache = poll_cache
    poll.push({"m": [ROUTE], "other": []})
    cache.start()
    await asyncio.wait_for(cache.synced.wait(), 1)
    eps = cache.endpoints("m")
    eps.clear()
    assert cache.endpoints("m") == [ROUTE]
    assert cache.endpoints("unknown") == []
    assert cache.endpoints("other") == []


async def test_same_version_is_not_republished(poll_cache: tuple[FakePoll, RoutingCache]) -> None:
    _, cache = poll_cache
    await cache._set({"version": 7, "models": {}})
    body = cache.body
    await cache._set({"version": 7, "models": {"m": [ROUTE]}})
    assert cache.body is body
    assert cache.endpoints("m") == []


async def test_poll_errors_are_retried(poll_cache: tuple[FakePoll, RoutingCache]) -> None:
    poll, cache = poll_cache
    poll.fail_next = 1
    cache.start()
    await asyncio.wait_for(cache.synced.wait(), 2)  # after a 0.1 s backoff
    assert cache.version == 1
    assert len(poll.calls) >= 2


async def test_start_is_idempotent(poll_cache: tuple[FakePoll, RoutingCache]) -> None:
    poll, cache = poll_cache
    cache.start()
    task = cache._task
    cache.start()
    assert cache._task is task
    await asyncio.wait_for(cache.synced.wait(), 1)
    await asyncio.sleep(0.001)
    assert poll.calls == [(-1, 5.0), (1, 5.0)]  # one loop: one first poll, then one long-poll
