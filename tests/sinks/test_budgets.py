"""Rate budgets: path to bucket mapping, pacing by aiolimiter, pauses from x-sib-ratelimit-* headers."""

import asyncio
import time
from dataclasses import dataclass

import pytest

from amplitude_brevo.sinks.budgets import Budget, Budgets, Rate, bucket_for


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
        ("POST", "/orders/status/batch", "brevo_other"),
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
