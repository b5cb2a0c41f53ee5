"""with_retry / RetryPolicy: what is retried, how long it waits, and what finally surfaces."""

from __future__ import annotations

import asyncio
import random

import pytest

from actors.retry import RetryPolicy, with_retry
from adapters.base import PermanentProviderError, TemporaryProviderError
from tests.unit.fakes import RecordingSleep

NO_JITTER = RetryPolicy(attempts=5, base_s=0.5, cap_s=3.0, jitter=0.0)


class Flaky:
    """Fails with `exc` the first `fails` calls, then returns `value`."""

    def __init__(self, fails: int, exc: Exception | None = None, value: str = "ok") -> None:
        self.fails = fails
        self.exc = exc or TemporaryProviderError("503 from the provider")
        self.value = value
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.fails:
            raise self.exc
        return self.value


async def test_success_first_time_does_not_sleep() -> None:
    sleep = RecordingSleep()
    fn = Flaky(0)
    assert await with_retry(fn, NO_JITTER, what="x", sleep=sleep) == "ok"
    assert fn.calls == 1
    assert sleep.delays == []


async def test_temporary_errors_are_retried_with_growing_delays() -> None:
    sleep = RecordingSleep()
    fn = Flaky(3)
    assert await with_retry(fn, NO_JITTER, what="x", sleep=sleep) == "ok"
    assert fn.calls == 4
    assert sleep.delays == [0.5, 1.0, 2.0]


async def test_exhausted_budget_raises_the_last_temporary_error() -> None:
    sleep = RecordingSleep()
    err = TemporaryProviderError("still 503")
    fn = Flaky(100, err)
    with pytest.raises(TemporaryProviderError) as info:
        await with_retry(fn, NO_JITTER, what="x", sleep=sleep)
    assert info.value is err
    assert fn.calls == NO_JITTER.attempts
    assert sleep.delays == [0.5, 1.0, 2.0, 3.0]  # capped at cap_s; no sleep after the last try


async def test_permanent_error_is_not_retried() -> None:
    sleep = RecordingSleep()
    fn = Flaky(1, PermanentProviderError("bad credentials"))
    with pytest.raises(PermanentProviderError, match="bad credentials"):
        await with_retry(fn, NO_JITTER, what="x", sleep=sleep)
    assert fn.calls == 1
    assert sleep.delays == []


async def test_other_errors_are_not_retried() -> None:
    sleep = RecordingSleep()
    fn = Flaky(1, KeyError("bug"))
    with pytest.raises(KeyError):
        await with_retry(fn, NO_JITTER, what="x", sleep=sleep)
    assert fn.calls == 1


async def test_permanent_after_temporary_stops_at_once() -> None:
    sleep = RecordingSleep()
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TemporaryProviderError("429")
        raise PermanentProviderError("quota is zero")

    with pytest.raises(PermanentProviderError):
        await with_retry(fn, NO_JITTER, what="x", sleep=sleep)
    assert calls == 2
    assert sleep.delays == [0.5]


async def test_single_attempt_never_sleeps() -> None:
    sleep = RecordingSleep()
    fn = Flaky(5)
    with pytest.raises(TemporaryProviderError):
        await with_retry(fn, RetryPolicy(attempts=1), what="x", sleep=sleep)
    assert fn.calls == 1
    assert sleep.delays == []


async def test_timeouts_are_retried_then_surface_as_temporary() -> None:
    sleep = RecordingSleep()
    calls = 0

    async def hangs() -> str:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()
        return "never"

    policy = RetryPolicy(attempts=3, base_s=0.1, cap_s=1.0, jitter=0.0)
    with pytest.raises(TemporaryProviderError, match="provision n1 timed out after 3 attempts") as info:
        await with_retry(hangs, policy, what="provision n1", sleep=sleep, timeout_s=0.005)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert calls == 3
    assert sleep.delays == [0.1, 0.2]


async def test_timeout_then_success() -> None:
    sleep = RecordingSleep()
    calls = 0

    async def slow_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()
        return "ok"

    assert await with_retry(slow_once, NO_JITTER, what="x", sleep=sleep, timeout_s=0.005) == "ok"
    assert calls == 2


async def test_cancellation_is_never_swallowed() -> None:
    """Cancelling a task inside with_retry(timeout_s=...) must cancel it, even when the wrapped call
    has just finished (asyncio.wait_for on Python 3.11 returns the result and drops the cancel)."""
    finished = asyncio.Event()
    parked = asyncio.Event()

    async def quick() -> str:
        return "ok"

    async def worker() -> None:
        await with_retry(quick, NO_JITTER, what="x", timeout_s=30.0)
        finished.set()
        await parked.wait()  # e.g. the node actor's next mailbox.get()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)  # the worker is now inside the call
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.5)
    if not done:  # clean up before failing
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    assert done, "the task ignored its cancellation and went on running"
    assert task.cancelled()


async def test_cancellation_while_sleeping_between_tries() -> None:
    fn = Flaky(100)
    task = asyncio.create_task(with_retry(fn, NO_JITTER, what="x"))  # real asyncio.sleep(0.5)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fn.calls == 1


# ------------------------------------------------------------------------------------------- delays
@pytest.mark.parametrize("attempt", range(10))
def test_delay_without_jitter_is_capped_exponential(attempt: int) -> None:
    p = RetryPolicy(base_s=0.5, cap_s=30.0, jitter=0.0)
    assert p.delay(attempt) == min(30.0, 0.5 * 2**attempt)


@pytest.mark.parametrize("attempt", range(12))
def test_delay_with_jitter_stays_within_bounds(attempt: int) -> None:
    p = RetryPolicy(base_s=0.5, cap_s=30.0, jitter=0.2)
    raw = min(30.0, 0.5 * 2**attempt)
    rng = random.Random(attempt)
    samples = [p.delay(attempt, rng) for _ in range(300)]
    assert all(raw * 0.8 <= d <= raw * 1.2 for d in samples)
    assert all(d <= 30.0 * 1.2 for d in samples)
    assert len(set(samples)) > 1  # actually jittered
    assert min(samples) < raw < max(samples)


def test_delay_grows_then_plateaus() -> None:
    p = RetryPolicy(base_s=1.0, cap_s=8.0, jitter=0.0)
    assert [p.delay(a) for a in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_delay_is_reproducible_with_a_seeded_rng() -> None:
    p = RetryPolicy()
    assert p.delay(3, random.Random(7)) == p.delay(3, random.Random(7))


def test_default_policy() -> None:
    p = RetryPolicy()
    assert (p.attempts, p.base_s, p.cap_s, p.jitter) == (5, 0.5, 30.0, 0.2)
