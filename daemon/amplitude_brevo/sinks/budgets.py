"""One rate budget per Brevo rate bucket: an aiolimiter leaky bucket plus the server's own word on pacing."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

# Which budget a Brevo path spends (reference/brevo-api.md §6). Every /contacts/* call shares one bucket.
_EVENTS = "brevo_events"
_CONTACTS = "brevo_contacts"
_ORDERS = "brevo_orders"
_OTHER = "brevo_other"


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
    # /events/batch, /orders/status/batch, /processes ...: "all other endpoints" until headers say otherwise.
    return _OTHER


@dataclass(frozen=True)
class Rate:
    requests: int
    per: float


class Budget:
    """A leaky-bucket limiter that also honours `x-sib-ratelimit-*` feedback.

    The limiter spreads our own requests evenly; the server's headers tell us when its window is spent
    (remaining 0) or when we were refused (429), and then every caller waits until the window resets.
    """

    def __init__(self, name: str, rate: Rate, on_wait: Callable[[str, float], None] | None = None) -> None:
        self.name = name
        self._on_wait = on_wait
        self.rate = rate
        self._limiter = AsyncLimiter(rate.requests, rate.per)
        self._resume_at = 0.0  # monotonic time before which nobody may send
        self._in_flight = 0  # requests sent whose answer has not been observed yet
        self.wait_seconds_total = 0.0
        self.acquired_total = 0

    def reconfigure(self, rate: Rate) -> None:
        if rate != self.rate:
            # Callers already waiting on the old limiter finish on it; new callers use the new rate.
            self.rate = rate
            self._limiter = AsyncLimiter(rate.requests, rate.per)

    async def acquire(self) -> float:
        """Wait for permission to send one request; returns the seconds waited."""
        started = time.monotonic()
        while (delay := self._resume_at - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        await self._limiter.acquire()
        # The server may have said "window spent" while we waited for a token: honour it before sending.
        while (delay := self._resume_at - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        self._in_flight += 1
        waited = time.monotonic() - started
        self.wait_seconds_total += waited
        self.acquired_total += 1
        if self._on_wait is not None:
            self._on_wait(self.name, waited)
        return waited

    def has_capacity(self, amount: int = 1) -> bool:
        """True when `amount` requests could go out now without waiting."""
        return self.seconds_until_resume() == 0 and self._limiter.has_capacity(amount)

    def seconds_until_resume(self) -> float:
        return max(0.0, self._resume_at - time.monotonic())

    def pause_for(self, seconds: float) -> None:
        """Nobody sends on this budget for `seconds` (e.g. after a 429)."""
        self._resume_at = max(self._resume_at, time.monotonic() + max(0.0, seconds))

    def release(self) -> None:
        """A request got no answer (transport error): stop counting it as in flight."""
        self._in_flight = max(0, self._in_flight - 1)

    def observe(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Read `x-sib-ratelimit-*` from a response; returns the reset delay applied, if any.

        `remaining` counts what the server has seen; requests of ours still on their way will spend it
        too, so the window is treated as spent once `remaining` does not exceed them.
        """
        self.release()
        reset = _number(headers.get("x-sib-ratelimit-reset"))
        remaining = _number(headers.get("x-sib-ratelimit-remaining"))
        if status == 429:
            delay = reset if reset is not None and reset > 0 else 1.0
            self.pause_for(delay)
            return delay
        if remaining is not None and remaining <= self._in_flight and reset is not None:
            self.pause_for(reset)
            return reset
        return None


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
        self, rate_limits: Mapping[str, object], on_wait: Callable[[str, float], None] | None = None
    ) -> None:
        self._budgets: dict[str, Budget] = {}
        self._on_wait = on_wait
        self.reconfigure(rate_limits)

    def reconfigure(self, rate_limits: Mapping[str, object]) -> None:
        for name, limit in rate_limits.items():
            rate = Rate(int(limit.requests), float(limit.per))  # type: ignore[attr-defined]
            if name in self._budgets:
                self._budgets[name].reconfigure(rate)
            else:
                self._budgets[name] = Budget(name, rate, self._on_wait)

    def __getitem__(self, name: str) -> Budget:
        return self._budgets[name]

    def for_request(self, method: str, path: str) -> Budget:
        return self._budgets[bucket_for(method, path)]

    def __iter__(self) -> Iterator[Budget]:
        return iter(self._budgets.values())
