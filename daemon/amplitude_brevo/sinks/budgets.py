"""One rate budget per Brevo rate bucket: an aiolimiter leaky bucket, paced by what Brevo's answers say.

A budget starts at its configured rate (`rate_limits`, from the plan's published table) and then learns the
real one from `x-sib-ratelimit-limit` / `-reset` on its answers: `/events/batch` and `/orders/status/batch` are
in no published bucket, and may turn out to allow 10 requests a second where the table suggests 100 an hour
(or the other way round). Brevo's windows are fixed: `remaining` counts down within one and `reset` says when
it ends; the budget pauses every caller while a window is spent, and after a 429 for at least its `reset`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from ..logs import get_logger

log = get_logger("budgets")

# Which budget a Brevo path spends (reference/brevo-api.md §6). Every /contacts/* call shares one bucket.
_EVENTS = "brevo_events"
_CONTACTS = "brevo_contacts"
_ORDERS = "brevo_orders"
_OTHER = "brevo_other"

# Minutes of request counts a budget keeps when nobody takes them (`Budgets.take_usage`): `status` shows two hours.
USAGE_MINUTES = 180

# Brevo states its limits per second and per hour; a countdown seen a while into a window reads shorter
# than the window, so the window learned is the smallest of these that holds the longest countdown seen.
_WINDOWS = (1.0, 60.0, 3600.0, 86400.0)


def bucket_for(method: str, path: str) -> str:
    """The budget name for a Brevo API path relative to the base URL (e.g. `/contacts/batch`)."""
    path = "/" + path.lstrip("/")
    if path.startswith("/v3/"):
        path = path[3:]
    if path.startswith("/contacts"):
        return _CONTACTS
    if method.upper() == "POST" and path == "/events":
        return _EVENTS
    if method.upper() == "POST" and path == "/orders/status":
        return _ORDERS
    if method.upper() == "POST" and path == "/orders/status/batch":
        return "brevo_orders_batch"  # unpublished bucket: 100 an hour until its headers say otherwise
    # /events/batch, /orders/status/batch, /processes ...: "all other endpoints" until headers say otherwise.
    return _OTHER


class Stopping(Exception):
    """The daemon is stopping: a request that was waiting for its budget or its retry will not be sent."""


class BudgetPaused(Exception):
    """The budget is paused for longer than the caller is willing to wait (it may use another endpoint)."""

    def __init__(self, budget: str, seconds: float) -> None:
        super().__init__(f"{budget} paused for {seconds:.0f} s")
        self.budget, self.seconds = budget, seconds


@dataclass(frozen=True)
class Rate:
    requests: int
    per: float

    def __str__(self) -> str:
        return f"{self.requests}/{self.per:g}s"


SMOOTH_WINDOW = 10.0  # seconds: budgets with windows this short are paced evenly, without bursts


def _limiter_for(rate: Rate) -> AsyncLimiter:
    """The limiter of a rate. A short window (10 requests a second) is paced evenly, one request every
    1/10 s: a leaky bucket that may burst its whole allowance would put up to twice the allowance into one
    of Brevo's fixed windows (the burst at its end, the refill in the next's start... or both in one), which
    Brevo answers with 429s. A long window (100 an hour) bursts, as its window allows, and paces from
    `x-sib-ratelimit-remaining`."""
    if rate.per <= SMOOTH_WINDOW:
        return AsyncLimiter(1, rate.per / rate.requests)
    return AsyncLimiter(rate.requests, rate.per)


def window_for(longest_reset: float) -> float:
    """The window length a `x-sib-ratelimit-reset` countdown of up to `longest_reset` seconds belongs to."""
    for window in _WINDOWS:
        if longest_reset <= window:
            return window
    return longest_reset


class Budget:
    """A leaky-bucket limiter for one Brevo bucket that also honours `x-sib-ratelimit-*` feedback.

    The limiter spreads our own requests; the server's headers say how large its window really is
    (learned, see the module docstring), when the window is spent (`remaining` no larger than our requests
    still in flight) and when we were refused (429). Then every caller waits: until the window ends, or
    after a 429 at least `reset` seconds. A window's end is known to the second from `reset`, and more
    closely from the answer that opened the window (`remaining == limit - 1`): it ends at most one window
    length after that answer. Pausing for a whole rounded-up second at the end of each 1-second window
    would halve the rate.
    """

    def __init__(
        self, name: str, rate: Rate, on_wait: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._on_wait = on_wait
        self._clock = clock
        self._wall_clock = wall_clock  # what request counts are bucketed by: UTC epoch minutes
        self._usage: dict[int, int] = {}  # epoch minute -> requests let go, since the last take_usage()
        self.configured = rate  # the starting point (config); `rate` is what is in use
        self.rate = rate
        self._limiter = _limiter_for(rate)
        self._renewed = asyncio.Event()  # set (and replaced) when the limiter is: its waiters move over
        self._limit_seen: int | None = None  # x-sib-ratelimit-limit of the last answer that had one
        self._longest_reset = 0.0  # the longest countdown seen with that limit
        self._spent_until = 0.0  # clock time until which the server's window is spent
        self._refused_until = 0.0  # clock time before which nobody may send after a 429
        self._window_ends = 0.0  # clock time by which the server's current window ends (0: unknown)
        self._in_flight = 0  # requests sent whose answer has not been observed yet
        self.wait_seconds_total = 0.0
        self.acquired_total = 0

    def __repr__(self) -> str:
        return f"Budget({self.name!r}, rate={self.rate}, configured={self.configured})"

    def reconfigure(self, rate: Rate) -> None:
        """A new configured rate (reload): it replaces what was learned, which is then learned again."""
        if rate != self.configured:
            self.configured = rate
            self._limit_seen, self._longest_reset = None, 0.0
            self._use(rate)

    def _use(self, rate: Rate) -> None:
        if rate != self.rate:
            self.rate = rate
            self._limiter = _limiter_for(rate)
            self._renewed.set()
            self._renewed = asyncio.Event()

    # -- waiting --
    async def acquire(self, stop: asyncio.Event | None = None, max_pause: float | None = None) -> float:
        """Wait for permission to send one request; returns the seconds waited.

        Raises `Stopping` if `stop` is set before permission is given (at once if it is set already), and
        `BudgetPaused` if the wait would be longer than `max_pause`.
        """
        started = self._clock()
        await self._wait_resume(stop, max_pause)
        if max_pause is not None and not self.can_send_within(max_pause):
            raise BudgetPaused(self.name, self.rate.per / self.rate.requests)
        await self._take_token(stop)
        # The server may have said "window spent" while we waited for a token: honour it before sending.
        await self._wait_resume(stop, max_pause)
        self._in_flight += 1
        waited = self._clock() - started
        self.wait_seconds_total += waited
        self.acquired_total += 1
        self._count_request()
        if self._on_wait is not None:
            self._on_wait(self.name, waited)
        return waited

    def _count_request(self) -> None:
        minute = int(self._wall_clock() // 60)
        usage = self._usage
        usage[minute] = usage.get(minute, 0) + 1
        if len(usage) > USAGE_MINUTES:  # nobody is taking them: keep the newest minutes only
            del usage[min(usage)]

    def take_usage(self) -> list[tuple[int, int]]:
        """The requests let go per UTC epoch minute since the last call, `[(minute, requests), ...]`; cleared."""
        usage, self._usage = self._usage, {}
        return sorted(usage.items())

    async def _wait_resume(self, stop: asyncio.Event | None, max_pause: float | None) -> None:
        while (delay := self.seconds_until_resume()) > 0:
            if max_pause is not None and delay > max_pause:
                raise BudgetPaused(self.name, delay)
            if not await _wait_unless(asyncio.sleep(delay), stop):
                raise Stopping(f"{self.name}: stopped while waiting {delay:.1f} s for the rate window")
        if stop is not None and stop.is_set():
            raise Stopping(f"{self.name}: stopped before sending")

    async def _take_token(self, stop: asyncio.Event | None) -> None:
        while True:
            limiter, renewed = self._limiter, self._renewed
            if limiter.has_capacity():
                await limiter.acquire()  # does not wait
                return
            # Wait for a token, unless the daemon stops or the rate changes (then on the new limiter).
            events = (stop, renewed) if stop is not None else (renewed,)
            if await _wait_unless(limiter.acquire(), *events):
                return
            if stop is not None and stop.is_set():
                raise Stopping(f"{self.name}: stopped while waiting for a token")

    def can_send_within(self, seconds: float, amount: int = 1) -> bool:
        """True when `amount` more requests could go out within `seconds` (counting the limiter's refill)."""
        if self.seconds_until_resume() > seconds:
            return False
        return self._limiter.has_capacity(amount - seconds * self.rate.requests / self.rate.per)

    def has_capacity(self, amount: int = 1) -> bool:
        """True when `amount` requests could go out now without waiting."""
        return self.can_send_within(0.0, amount)

    def seconds_until_resume(self) -> float:
        return max(0.0, self._spent_until - self._clock(), self._refused_until - self._clock())

    def pause_for(self, seconds: float) -> None:
        """Nobody sends on this budget for `seconds` (e.g. after a 429)."""
        self._refused_until = max(self._refused_until, self._clock() + max(0.0, seconds))

    def release(self) -> None:
        """A request got no answer (transport error): stop counting it as in flight."""
        self._in_flight = max(0, self._in_flight - 1)

    # -- the server's word --
    def observe(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Read `x-sib-ratelimit-*` from an answer; returns the pause it caused (seconds), if any.

        `remaining` counts what the server has seen; requests of ours still on their way will spend it
        too, so the window is treated as spent once `remaining` does not exceed them.
        """
        self.release()
        now = self._clock()
        limit = _number(headers.get("x-sib-ratelimit-limit"))
        reset = _number(headers.get("x-sib-ratelimit-reset"))
        remaining = _number(headers.get("x-sib-ratelimit-remaining"))
        if limit is not None and limit >= 1 and reset is not None and reset >= 0:
            self._learn(int(limit), reset)
            if status != 429 and remaining == limit - 1:
                # This request opened the window: it ends within one window of now, however `reset` rounds.
                self._window_ends = now + self.rate.per
        if status == 429:
            delay = reset if reset is not None and reset > 0 else 1.0
            self.pause_for(delay)
            return delay
        if remaining is not None and remaining <= self._in_flight and reset is not None:
            until = now + reset
            if now < self._window_ends < until:
                until = self._window_ends
            self._spent_until = max(self._spent_until, until)
            return until - now
        return None

    def _learn(self, limit: int, reset: float) -> None:
        if limit != self._limit_seen:
            self._limit_seen, self._longest_reset = limit, 0.0
        self._longest_reset = max(self._longest_reset, reset)
        learned = Rate(limit, window_for(self._longest_reset))
        if learned != self.rate:
            log.info("brevo.budget.learned", budget=self.name, requests=learned.requests, per=learned.per,
                     was=str(self.rate), configured=str(self.configured))
            self._use(learned)


async def _wait_unless(awaitable: object, *events: asyncio.Event | None) -> bool:
    """Await `awaitable` unless one of `events` is set first (then it is cancelled); True if it completed."""
    waiting = [e for e in events if e is not None]
    if not waiting:
        await awaitable  # type: ignore[misc]
        return True
    if any(e.is_set() for e in waiting):
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        return False
    main = asyncio.ensure_future(awaitable)  # type: ignore[arg-type]
    watchers = [asyncio.ensure_future(e.wait()) for e in waiting]
    try:
        await asyncio.wait([main, *watchers], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (main, *watchers):
            if not task.done():
                task.cancel()
    if not main.done() or main.cancelled():
        await asyncio.gather(main, return_exceptions=True)
        return False
    main.result()  # its error, if any
    return True


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class Budgets:
    """The set of budgets, built from `config.rate_limits` and reconfigurable on reload."""

    def __init__(
        self, rate_limits: Mapping[str, object], on_wait: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._budgets: dict[str, Budget] = {}
        self._on_wait = on_wait
        self._clock = clock
        self._wall_clock = wall_clock
        self.reconfigure(rate_limits)

    def reconfigure(self, rate_limits: Mapping[str, object]) -> None:
        for name, limit in rate_limits.items():
            rate = Rate(int(limit.requests), float(limit.per))  # type: ignore[attr-defined]
            if name in self._budgets:
                self._budgets[name].reconfigure(rate)
            else:
                self._budgets[name] = Budget(name, rate, self._on_wait, self._clock, self._wall_clock)

    def __getitem__(self, name: str) -> Budget:
        return self._budgets[name]

    def for_request(self, method: str, path: str) -> Budget:
        return self._budgets[bucket_for(method, path)]

    def __iter__(self) -> Iterator[Budget]:
        return iter(self._budgets.values())

    def take_usage(self) -> list[tuple[str, int, int]]:
        """Requests let go per budget and UTC epoch minute since the last call: `[(budget, minute, requests)]`.

        What it returns is cleared; the caller (`usage.UsageRecorder`) adds it to the state file for `status`.
        """
        return [(budget.name, minute, requests) for budget in self for minute, requests in budget.take_usage()]
