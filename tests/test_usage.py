"""Budget request counting per UTC minute, and the UsageRecorder that writes it (with queue depths) to state."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from amplitude_brevo.config import PLAN_BUDGETS
from amplitude_brevo.pipeline.queue import BatchQueue
from amplitude_brevo.sinks import budgets as budgets_module
from amplitude_brevo.sinks.budgets import Budget, Budgets, Rate
from amplitude_brevo.state import StateStore
from amplitude_brevo.state.usage import KEEP_MINUTES
from amplitude_brevo.usage import UsageRecorder, usage_components

from .conftest import FakeClock

MINUTE = 29_000_000  # an epoch minute (2025-02-20)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(MINUTE * 60.0 + 30)


async def test_a_budget_counts_the_requests_it_let_go_per_utc_minute(wall: FakeClock) -> None:
    budget = Budget("brevo_contacts", Rate(1000, 1), wall_clock=wall)
    for _ in range(3):
        await budget.acquire()
    wall.advance(40)  # into the next minute
    await budget.acquire()
    assert budget.take_usage() == [(MINUTE, 3), (MINUTE + 1, 1)]
    assert budget.take_usage() == []  # taken: cleared
    await budget.acquire()
    assert budget.take_usage() == [(MINUTE + 1, 1)]


async def test_a_request_refused_its_budget_is_not_counted(wall: FakeClock) -> None:
    budget = Budget("brevo_contacts", Rate(1000, 1), wall_clock=wall)
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(budgets_module.Stopping):
        await budget.acquire(stop)
    budget.pause_for(60)
    with pytest.raises(budgets_module.BudgetPaused):
        await budget.acquire(max_pause=1)
    assert budget.take_usage() == []


async def test_counts_nobody_takes_stay_bounded(wall: FakeClock) -> None:
    budget = Budget("brevo_contacts", Rate(1000, 1), wall_clock=wall)
    for _ in range(budgets_module.USAGE_MINUTES + 5):
        await budget.acquire()
        wall.advance(60)
    usage = budget.take_usage()
    assert len(usage) == budgets_module.USAGE_MINUTES
    assert usage[0][0] == MINUTE + 5 and usage[-1][0] == MINUTE + budgets_module.USAGE_MINUTES + 4  # the newest


async def test_budgets_take_usage_of_every_budget(wall: FakeClock) -> None:
    budgets = Budgets(PLAN_BUDGETS["general"], wall_clock=wall)
    await budgets["brevo_contacts"].acquire()
    await budgets["brevo_contacts"].acquire()
    await budgets["brevo_orders"].acquire()
    assert sorted(budgets.take_usage()) == [("brevo_contacts", MINUTE, 2), ("brevo_orders", MINUTE, 1)]
    assert budgets.take_usage() == []
    budgets.reconfigure(PLAN_BUDGETS["advanced"])  # a reload keeps counting on the same budgets
    await budgets["brevo_contacts"].acquire()
    assert budgets.take_usage() == [("brevo_contacts", MINUTE, 1)]


def _runtime(state: StateStore, wall: FakeClock) -> SimpleNamespace:
    """What the recorder uses of a Runtime: budgets, queues, state."""
    return SimpleNamespace(state=state, budgets=Budgets(PLAN_BUDGETS["general"], wall_clock=wall), queues={})


async def test_flush_writes_usage_and_queue_depths_and_prunes(state: StateStore, wall: FakeClock) -> None:
    rt = _runtime(state, wall)
    queue: BatchQueue[int] = BatchQueue("brevo_orders", max_items=10, max_wait=1, capacity=100)
    await queue.put_many(range(12))
    rt.queues["brevo_orders"] = queue
    old = MINUTE - KEEP_MINUTES - 1
    await state.record_usage([("brevo_contacts", old, 5)])
    recorder = UsageRecorder(rt, clock=wall)
    for _ in range(4):
        await rt.budgets["brevo_contacts"].acquire()
    assert await recorder.flush()
    await rt.budgets["brevo_contacts"].acquire()
    wall.advance(5)
    assert await recorder.flush()
    assert await state.usage_since(0) == {"brevo_contacts": [(MINUTE, 5)]}  # the old minute pruned
    assert await state.backlogs() == ({"brevo_orders": 12}, wall.now)


async def test_a_failed_write_keeps_the_counts_for_the_next_flush(tmp_path, wall: FakeClock) -> None:
    state = await StateStore.open(tmp_path / "state.db")
    rt = _runtime(state, wall)
    recorder = UsageRecorder(rt, clock=wall)
    await rt.budgets["brevo_events"].acquire()
    await state.close()
    assert not await recorder.flush()  # closed store: StateError, logged
    rt.state = state = await StateStore.open(tmp_path / "state.db")
    try:
        await rt.budgets["brevo_events"].acquire()
        assert await recorder.flush()
        assert await state.usage_since(0) == {"brevo_events": [(MINUTE, 2)]}
        assert recorder.failures == 1
    finally:
        await state.close()


async def test_stop_flushes_once_and_returns(state: StateStore, wall: FakeClock) -> None:
    rt = _runtime(state, wall)
    recorder = UsageRecorder(rt, every=3600, clock=wall)
    task = asyncio.create_task(recorder.run())
    await asyncio.sleep(0)
    await rt.budgets["brevo_orders"].acquire()
    recorder.stop()
    await asyncio.wait_for(task, 1)
    assert recorder.flushes == 1
    assert await state.usage_since(0) == {"brevo_orders": [(MINUTE, 1)]}


async def test_runs_every_interval(state: StateStore, wall: FakeClock) -> None:
    rt = _runtime(state, wall)
    recorder = UsageRecorder(rt, every=0.002, clock=wall)
    task = asyncio.create_task(recorder.run())
    try:
        await rt.budgets["brevo_orders"].acquire()
        async with asyncio.timeout(2):
            while not await state.usage_since(0):
                await asyncio.sleep(0.002)
    finally:
        recorder.stop()
        await task
    assert recorder.flushes >= 2
    assert await state.usage_since(0) == {"brevo_orders": [(MINUTE, 1)]}


async def test_in_a_daemon_it_flushes_at_shutdown_without_holding_it(make_daemon) -> None:
    daemon = make_daemon(components=usage_components, serve_admin=False)
    await daemon.startup()
    assert daemon.components["usage-recorder"].role != "producer"  # a backfill does not wait for it
    await daemon.runtime.budgets["brevo_contacts"].acquire()
    state_path = daemon.runtime.state.path
    daemon.request_stop()
    await daemon.run_until_stopped()
    started = time.monotonic()
    await daemon.shutdown()
    assert time.monotonic() - started < daemon.cfg.shutdown_timeout / 2
    async with await StateStore.open(state_path) as state:
        usage = await state.usage_since(0)
        snapshot, at = await state.backlogs()
    assert [(budget, sum(n for _, n in rows)) for budget, rows in usage.items()] == [("brevo_contacts", 1)]
    assert snapshot == {} and at is not None
