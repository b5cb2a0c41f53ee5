"""runtime.Loop: survives a failing step, wakes early, coalesces bursts of wakes (min_gap_s from the end of the
previous step, none after a step that changed nothing)."""

from __future__ import annotations

import asyncio

from actors.runtime import Loop


async def test_a_failing_step_does_not_end_the_loop() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")

    loop = Loop("t", step, 0.01)
    loop.start()
    await asyncio.sleep(0.1)
    assert loop.task is not None
    loop.task.cancel()
    assert calls >= 3 and loop.errors == 1


async def test_a_burst_of_wakes_costs_one_step_per_gap() -> None:
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1

    loop = Loop("t", step, 10.0, min_gap_s=0.05)
    loop.start()
    await asyncio.sleep(0.01)
    assert steps == 1  # the first run
    for _ in range(200):  # 200 changes within ~0.2 s
        loop.wake.set()
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.1)
    assert loop.task is not None
    loop.task.cancel()
    assert 2 <= steps <= 8, steps  # one per 50 ms gap, not one per wake


async def test_a_wake_after_a_quiet_spell_runs_at_once() -> None:
    """The gap counts from the end of the previous step: a change after a quiet spell is not delayed."""
    ran: list[float] = []

    async def step() -> None:
        ran.append(asyncio.get_running_loop().time())

    loop = Loop("t", step, 10.0, min_gap_s=0.2)
    loop.start()
    await asyncio.sleep(0.3)  # quiet for longer than the gap
    woken = asyncio.get_running_loop().time()
    loop.wake.set()
    await asyncio.sleep(0.05)
    assert loop.task is not None
    loop.task.cancel()
    assert len(ran) == 2 and ran[1] - woken < 0.05, ran


async def test_a_step_that_changed_nothing_imposes_no_gap() -> None:
    """A step returning False (nothing changed) does not delay the next wake by min_gap_s."""
    ran: list[float] = []

    async def step() -> bool:
        ran.append(asyncio.get_running_loop().time())
        return len(ran) > 1  # the first run changed nothing

    loop = Loop("t", step, 10.0, min_gap_s=0.5)
    loop.start()
    await asyncio.sleep(0.01)
    woken = asyncio.get_running_loop().time()
    loop.wake.set()  # right after the no-op step: runs at once
    await asyncio.sleep(0.05)
    loop.wake.set()  # right after a step that changed something: waits for the gap
    await asyncio.sleep(0.1)
    assert loop.task is not None
    loop.task.cancel()
    assert len(ran) == 2 and ran[1] - woken < 0.05, ran
