"""Rate budgets: path to bucket mapping, pacing by aiolimiter, pauses from x-sib-ratelimit-* headers."""

import asyncio
import time
from dataclasses import dataclass

import pytest

from amplitude_brevo.sinks.budgets import (
    Budget,
    BudgetPaused,
    Budgets,
    Rate,
    Stopping,
    bucket_for,
    window_for,
)


@pytest.mark.parametrize(
    ("method", "path", "bucket"),
    [
        ("POST", "/events", "brevo_events"),
        ("POST", "/v3/events", "brevo_events"),
        ("POST", "/events/batch", "brevo_other"),
        ("POST", "/contacts", "brevo_contacts"),
        ("POST", "/contacts/batch", "brevo_contacts"),
        ("POST", "/contacts/import", "brevo_contacts"),
        ("GET", "/contacts/attributes", "brevo_contacts"),
        ("POST", "/contacts/lists/11/contacts/add", "brevo_contacts"),
        ("POST", "/orders/status", "brevo_orders"),
        ("POST", "/orders/status/batch", "brevo_orders_batch"),
        ("GET", "/processes/4", "brevo_other"),
    ],
)
def test_bucket_for(method, path, bucket):
    assert bucket_for(method, path) == bucket


async def test_budget_paces_to_its_rate():
    budget = Budget("b", Rate(5, 0.25))  # 20 requests/s
    started = time.monotonic()
    for _ in range(10):
        await budget.acquire()
    # 5 fit in the first bucket at once; the next 5 need about one more period.
    assert time.monotonic() - started >= 0.2
    assert budget.acquired_total == 10


async def test_429_pauses_every_caller_for_the_reset():
    budget = Budget("b", Rate(1000, 1))
    started = time.monotonic()  # before observe(): a GC pause between the two must not shorten the wait
    delay = budget.observe(429, {"x-sib-ratelimit-reset": "0.2", "x-sib-ratelimit-remaining": "0"})
    assert delay == pytest.approx(0.2)
    await asyncio.gather(budget.acquire(), budget.acquire())
    assert time.monotonic() - started >= 0.19


async def test_429_without_headers_still_backs_off():
    budget = Budget("b", Rate(1000, 1))
    assert budget.observe(429, {}) == 1.0


def test_exhausted_window_pauses_and_healthy_response_does_not():
    budget = Budget("b", Rate(10, 1))
    assert budget.observe(200, {"x-sib-ratelimit-remaining": "3", "x-sib-ratelimit-reset": "1"}) is None
    assert budget.observe(200, {"x-sib-ratelimit-remaining": "0", "x-sib-ratelimit-reset": "2"}) == 2
    assert budget.observe(200, {"x-sib-ratelimit-remaining": "junk"}) is None


@dataclass
class _Limit:
    requests: int
    per: float


def test_budgets_reconfigure_and_report_waits():
    waits = []
    budgets = Budgets({"brevo_events": _Limit(10, 1), "brevo_contacts": _Limit(10, 1)}, on_wait=lambda n, s: waits.append(n))
    old = budgets["brevo_events"]
    budgets.reconfigure({"brevo_events": _Limit(20, 1), "brevo_contacts": _Limit(10, 1)})
    assert budgets["brevo_events"] is old and old.rate == Rate(20, 1.0)
    asyncio.run(budgets.for_request("POST", "/contacts").acquire())
    assert waits == ["brevo_contacts"]


async def test_requests_in_flight_count_against_the_servers_remaining():
    budget = Budget("b", Rate(100, 1))
    for _ in range(3):
        await budget.acquire()
    # The answer to the first says 2 left; the two still in flight will take them: the window is spent.
    assert budget.observe(200, {"x-sib-ratelimit-remaining": "2", "x-sib-ratelimit-reset": "1"}) == 1
    assert budget.seconds_until_resume() > 0.5

    fresh = Budget("f", Rate(100, 1))
    await fresh.acquire()
    assert fresh.observe(200, {"x-sib-ratelimit-remaining": "2", "x-sib-ratelimit-reset": "1"}) is None
    await fresh.acquire()
    fresh.release()  # a transport error: no answer will come for it
    assert fresh.observe(200, {"x-sib-ratelimit-remaining": "1", "x-sib-ratelimit-reset": "1"}) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {"x-sib-ratelimit-limit": str(limit), "x-sib-ratelimit-remaining": str(remaining),
            "x-sib-ratelimit-reset": str(reset)}


@pytest.mark.parametrize(("reset", "window"), [(0, 1.0), (1, 1.0), (0.4, 1.0), (2, 60.0), (60, 60.0),
                                                (61, 3600.0), (3500, 3600.0), (86400, 86400.0), (90000, 90000.0)])
def test_window_for(reset, window):
    assert window_for(reset) == window


def test_a_budget_starts_at_its_configured_rate_and_learns_brevos_per_second_window():
    from structlog.testing import capture_logs

    clock = Clock()
    budget = Budget("brevo_events_batch", Rate(100, 3600), clock=clock)
    assert budget.rate == Rate(100, 3600.0)
    with capture_logs() as logs:
        for remaining in (9, 8, 7):
            budget.observe(202, answer(10, remaining, 1))
            clock.now += 0.1
    assert budget.rate == Rate(10, 1.0) and budget.configured == Rate(100, 3600.0)
    learned = [e for e in logs if e["event"] == "brevo.budget.learned"]
    assert [(e["budget"], e["requests"], e["per"], e["was"]) for e in learned] == [
        ("brevo_events_batch", 10, 1.0, "100/3600s")
    ], "logged once per change"


def test_an_hourly_window_is_learned_from_a_countdown_seen_after_it_opened():
    clock = Clock()
    budget = Budget("brevo_events_batch", Rate(1000, 1), clock=clock)
    budget.observe(202, answer(100, 57, 3500))
    assert budget.rate == Rate(100, 3600.0)
    clock.now += 10
    budget.observe(202, answer(100, 56, 3490))
    assert budget.rate == Rate(100, 3600.0)


def test_a_new_limit_is_learned_again():
    from structlog.testing import capture_logs

    budget = Budget("b", Rate(10, 1), clock=Clock())
    with capture_logs() as logs:
        budget.observe(202, answer(10, 9, 1))  # what was configured: nothing to learn
        budget.observe(202, answer(100, 99, 3599))
        budget.observe(202, answer(10, 9, 1))
    assert budget.rate == Rate(10, 1.0)
    assert [(e["requests"], e["per"]) for e in logs if e["event"] == "brevo.budget.learned"] == [(100, 3600.0), (10, 1.0)]


def test_answers_without_the_headers_keep_the_configured_rate():
    budget = Budget("b", Rate(5, 1), clock=Clock())
    budget.observe(204, {})
    budget.observe(204, {"x-sib-ratelimit-limit": "junk", "x-sib-ratelimit-reset": "1"})
    budget.observe(204, {"x-sib-ratelimit-limit": "0", "x-sib-ratelimit-reset": "1"})
    assert budget.rate == Rate(5, 1.0)


def test_reload_restarts_from_a_new_configured_rate_and_keeps_what_was_learned_otherwise():
    budget = Budget("b", Rate(100, 3600), clock=Clock())
    budget.observe(202, answer(10, 9, 1))
    budget.reconfigure(Rate(100, 3600))
    assert budget.rate == Rate(10, 1.0), "same config: what Brevo said still holds"
    budget.reconfigure(Rate(20, 1))
    assert budget.rate == Rate(20, 1.0) == budget.configured
    budget.observe(202, answer(10, 9, 1))
    assert budget.rate == Rate(10, 1.0), "and is learned again"


@pytest.mark.parametrize(
    ("answers", "resume_in"),
    [
        # This request opened the window: it ends within 1 s of that answer, however `reset` rounds up.
        ([(0, 202, 9), (0.6, 202, 0)], 0.4),
        # No answer seen opened it: the countdown, rounded up to the second.
        ([(0, 202, 3), (0.6, 202, 0)], 1.0),
        # The next window's opening says nothing about the pause for this one.
        ([(0, 202, 3), (0.6, 202, 0), (0.7, 202, 9)], 0.3),
        # After a 429, at least its x-sib-ratelimit-reset (SPEC §7), whatever the window suggests.
        ([(0, 202, 9), (0.5, 429, 0)], 1.0),
    ],
    ids=["window-opened", "reset", "next-window", "429"],
)
def test_a_spent_one_second_window_pauses_until_it_ends(answers, resume_in):
    clock = Clock()
    budget = Budget("b", Rate(10, 1), clock=clock)
    for advance, status, remaining in answers:
        clock.now += advance
        budget.observe(status, answer(10, remaining, 1))
    assert budget.seconds_until_resume() == pytest.approx(resume_in)


def test_requests_of_ours_in_flight_spend_the_window_too():
    clock = Clock()
    budget = Budget("b", Rate(10, 1), clock=clock)
    budget._in_flight = 4  # four requests on their way at once
    budget.observe(202, answer(10, 9, 1))
    assert budget.seconds_until_resume() == 0, "9 left, 3 of ours still coming"
    clock.now += 0.3
    budget.observe(202, answer(10, 2, 1))
    assert budget.seconds_until_resume() == pytest.approx(0.7), "2 left, 2 of ours still coming: spent"


async def test_can_send_within_counts_the_limiters_refill():
    budget = Budget("b", Rate(2, 1.0))  # a short window: paced evenly, one request every 0.5 s, no burst
    assert budget.can_send_within(0, 1) and not budget.can_send_within(0, 2)
    assert budget.can_send_within(1.0, 3) and not budget.can_send_within(1.0, 4), "two more drip in within a second"
    hourly = Budget("h", Rate(100, 3600.0))  # a long window bursts, as Brevo's window allows
    assert hourly.can_send_within(0, 100) and not hourly.can_send_within(0, 101)
    budget.pause_for(10)
    assert not budget.can_send_within(5) and budget.can_send_within(11)


async def test_acquire_stops_at_once_when_stop_is_already_set():
    stop = asyncio.Event()
    stop.set()
    with pytest.raises(Stopping):
        await Budget("b", Rate(1000, 1)).acquire(stop)


async def test_a_caller_waiting_for_a_token_stops_when_stop_is_set():
    budget = Budget("b", Rate(1, 3600))
    stop = asyncio.Event()
    await budget.acquire(stop)  # the hour's one token
    waiting = asyncio.create_task(budget.acquire(stop))
    await asyncio.sleep(0)
    assert not waiting.done()
    stop.set()
    async with asyncio.timeout(1):
        with pytest.raises(Stopping):
            await waiting
    assert budget.acquired_total == 1


async def test_a_caller_waiting_for_a_spent_window_stops_when_stop_is_set():
    budget = Budget("b", Rate(1000, 1))
    budget.pause_for(3600)
    stop = asyncio.Event()
    waiting = asyncio.create_task(budget.acquire(stop))
    await asyncio.sleep(0)
    stop.set()
    async with asyncio.timeout(1):
        with pytest.raises(Stopping):
            await waiting


async def test_a_caller_waiting_on_the_old_rate_moves_to_the_learned_one():
    budget = Budget("b", Rate(1, 3600))
    await budget.acquire()
    waiting = asyncio.create_task(budget.acquire())  # the next token of 1 an hour: in an hour
    await asyncio.sleep(0)
    budget.observe(202, answer(1000, 999, 1))
    async with asyncio.timeout(1):
        await waiting


async def test_acquire_with_max_pause_refuses_a_long_wait():
    budget = Budget("b", Rate(1, 3600))
    await budget.acquire(max_pause=5)
    with pytest.raises(BudgetPaused):
        await budget.acquire(max_pause=5)
    budget = Budget("c", Rate(1000, 1))
    budget.pause_for(60)
    with pytest.raises(BudgetPaused) as paused:
        await budget.acquire(max_pause=5)
    assert paused.value.seconds == pytest.approx(60, abs=1)


async def test_a_saturated_budget_still_serves_a_late_caller_in_its_turn():
    # The contacts sink keeps the contacts budget busy (workers that take a token as soon as they have sent);
    # an attribute read arriving meanwhile waits behind the requests already waiting, not for ever.
    budget = Budget("brevo_contacts", Rate(20, 1.0))  # one request every 50 ms
    stop = asyncio.Event()
    sent: list[str] = []

    async def worker() -> None:
        while not stop.is_set():
            await budget.acquire(stop)
            budget.release()
            sent.append("sink")

    workers = [asyncio.create_task(worker()) for _ in range(6)]
    await asyncio.sleep(0.2)
    before = len(sent)
    await asyncio.wait_for(budget.acquire(), 1.0)  # about 6 turns ahead of it: 0.3 s
    budget.release()
    sent.append("read")
    stop.set()
    await asyncio.gather(*workers, return_exceptions=True)
    assert sent.index("read") - before <= 8, "served in its turn among the sink's waiters"
