"""The one backoff policy: full-jitter exponential delays, their cap and floor, exhaustion, stopping."""

from __future__ import annotations

import asyncio
import random

import pytest

from amplitude_brevo.retry import Backoff


def test_delays_stay_within_the_exponential_ceiling_and_the_cap():
    backoff = Backoff(base=0.5, cap=30.0)
    rng = random.Random(1)
    for attempt in range(1, 40):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        for _ in range(50):
            assert 0 <= backoff.delay(attempt, rng=rng) <= ceiling


def test_late_attempts_are_drawn_from_the_whole_cap():
    backoff = Backoff(base=0.5, cap=30.0)
    rng = random.Random(2)
    draws = [backoff.delay(40, rng=rng) for _ in range(500)]
    assert max(draws) <= 30.0
    assert max(draws) > 25.0, "the ceiling reached the cap, so draws spread over all of it"


@pytest.mark.parametrize("attempt", [1_000, 1_025, 10_000, 10**9])
def test_huge_attempt_numbers_do_not_overflow(attempt):
    # Hours of outage (or a bad key) at a retry every few seconds reach attempt numbers like these.
    delay = Backoff(base=0.5, cap=30.0).delay(attempt, rng=random.Random(3))
    assert 0 <= delay <= 30.0


def test_the_floor_wins_over_a_short_draw():
    backoff = Backoff(base=0.001, cap=0.002)
    rng = random.Random(4)
    assert all(backoff.delay(1, floor=5.0, rng=rng) == 5.0 for _ in range(20))
    assert Backoff(base=1, cap=100).delay(30, floor=0.5, rng=random.Random(5)) >= 0.5


def test_jitter_varies_and_a_seed_repeats_it():
    backoff = Backoff(base=1.0, cap=60.0)
    first = [backoff.delay(5, rng=random.Random(6)) for _ in range(3)]
    rng = random.Random(6)
    draws = [backoff.delay(5, rng=rng) for _ in range(20)]
    assert len(set(draws)) == 20, "full jitter: every draw differs"
    assert first == [draws[0]] * 3, "the same seed gives the same draw"


def test_max_attempts_exhaustion():
    assert [Backoff(max_attempts=3).exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert not any(Backoff().exhausted(n) for n in (1, 1_000, 10**9)), "None retries for ever"


async def test_sleep_returns_false_at_once_when_stop_is_already_set():
    stop = asyncio.Event()
    stop.set()
    async with asyncio.timeout(1):
        assert await Backoff(base=60, cap=60).sleep(1, stop=stop) is False


async def test_sleep_returns_false_when_stop_is_set_meanwhile():
    stop = asyncio.Event()
    sleeping = asyncio.create_task(Backoff(base=60, cap=60).sleep(3, floor=60, stop=stop))
    await asyncio.sleep(0)  # let it start waiting
    assert not sleeping.done()
    stop.set()
    async with asyncio.timeout(1):
        assert await sleeping is False


async def test_sleep_returns_true_after_the_delay():
    stop = asyncio.Event()
    assert await Backoff(base=0, cap=0).sleep(1, stop=stop) is True
    assert await Backoff(base=0, cap=0).sleep(10**9) is True
