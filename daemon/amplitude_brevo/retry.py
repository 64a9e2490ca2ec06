"""The one backoff policy: exponential with full jitter, capped, with an optional floor (Brevo's reset)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

# Past this many doublings any base has passed any cap; the exponent stops growing there, so that attempt
# 10**9 costs what attempt 60 does (2 ** 1024 no longer fits a float: a long outage used to crash the sink).
_MAX_DOUBLINGS = 1000


@dataclass(frozen=True)
class Backoff:
    """`delay(attempt)` for attempt 1, 2, ...: uniform in [0, min(cap, base * 2**(attempt-1))], at least `floor`.

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter") spreads retries of many
    clients; the floor lets a server's explicit "come back in N seconds" win over a short random draw.
    `max_attempts=None` retries for ever: delivery paths never give up on retriable errors, they hold the
    checkpoint and back-pressure producers instead (SPEC §7).
    """

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int | None = None

    def delay(self, attempt: int, floor: float = 0.0, rng: random.Random | None = None) -> float:
        doublings = min(max(0, attempt - 1), _MAX_DOUBLINGS)
        ceiling = min(self.cap, self.base * 2.0**doublings)
        draw = (rng or random).uniform(0, ceiling)
        return max(floor, draw)

    def exhausted(self, attempt: int) -> bool:
        return self.max_attempts is not None and attempt >= self.max_attempts

    async def sleep(self, attempt: int, floor: float = 0.0, stop: asyncio.Event | None = None) -> bool:
        """Sleep before the next attempt; returns False at once if `stop` is set meanwhile."""
        seconds = self.delay(attempt, floor)
        if stop is None:
            await asyncio.sleep(seconds)
            return True
        try:
            await asyncio.wait_for(stop.wait(), seconds)
            return False
        except TimeoutError:
            return True
