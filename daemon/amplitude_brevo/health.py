"""Readiness: named checks that components fail and clear; `/readyz` answers 503 while any is failing.

A circuit breaker in a client (a path answering 404 as if it did not exist, an upstream that keeps failing)
does not drop or dead-letter anything: it keeps retrying, and says so here, in one log line when the check
starts failing and one when it recovers, so an operator's probe sees the outage while no data is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .logs import get_logger

log = get_logger("health")


@dataclass(frozen=True)
class Failure:
    reason: str
    hint: str
    since: float


class Health:
    def __init__(self) -> None:
        self._failing: dict[str, Failure] = {}

    def fail(self, check: str, reason: str, hint: str = "") -> None:
        """Mark `check` failing (logged once, when it starts)."""
        if check not in self._failing:
            log.error("health.failing", check=check, reason=reason, hint=hint)
            self._failing[check] = Failure(reason, hint, time.time())

    def ok(self, check: str) -> None:
        """`check` works again (logged once, if it was failing)."""
        failure = self._failing.pop(check, None)
        if failure is not None:
            log.info("health.recovered", check=check, seconds=round(time.time() - failure.since, 1))

    @property
    def failing(self) -> dict[str, Failure]:
        return dict(self._failing)

    @property
    def healthy(self) -> bool:
        return not self._failing
