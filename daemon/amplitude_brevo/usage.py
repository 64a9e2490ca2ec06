"""The usage recorder: what `amplitude-brevo status` shows of a running daemon, written to the state file.

Every `every` seconds it adds the Brevo requests each budget let go (per UTC minute, `Budgets.take_usage()`)
to table `budget_usage`, replaces the queue-depth snapshot (`{sink: items queued}`), and prunes minutes older
than two hours. `status` reads both from the state file without the writer lock.

A component of the daemon like a sink, but it holds nothing: it is not a producer (a backfill does not wait
for it), and on `stop()` it writes once more and returns at once. A failed write is logged and retried at the
next interval; it never stops the daemon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .logs import get_logger
from .state.usage import KEEP_MINUTES, UsageRow

if TYPE_CHECKING:
    from .app import Component, Runtime
    from .config import Config

log = get_logger("usage")

EVERY = 10.0  # seconds between writes
MAX_PENDING = 10_000  # usage rows kept for a retry while the state file refuses writes


class UsageRecorder:
    """Writes budget usage and queue depths to the state file every `every` seconds (see the module docstring)."""

    name = "usage-recorder"
    role = "consumer"  # not a producer: burst mode (backfill) and shutdown do not wait for it to be "done"

    def __init__(self, runtime: Runtime, every: float = EVERY, *, clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.every = every
        self._clock = clock
        self._stop = asyncio.Event()
        self._pending: list[UsageRow] = []  # taken from the budgets, not yet written
        self.flushes = 0
        self.failures = 0

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.every)
            except TimeoutError:
                pass
            await self.flush()

    def stop(self) -> None:
        self._stop.set()

    def reload(self, cfg: Config) -> None:
        pass

    async def flush(self) -> bool:
        """Write what the budgets counted since the last flush, the queue depths, and prune; True if written."""
        rt = self.runtime
        self._pending.extend(rt.budgets.take_usage())
        queues = {name: len(queue) for name, queue in rt.queues.items()}
        now = self._clock()
        try:
            await rt.state.record_usage(self._pending)
            self._pending.clear()
            await rt.state.record_backlogs(queues, now=now)
            await rt.state.prune_usage(int(now // 60) - KEEP_MINUTES)
        except Exception as exc:  # the state file is busy or failing: keep the counts for the next try
            self.failures += 1
            del self._pending[:-MAX_PENDING]
            log.warning("usage.write_failed", error=str(exc), pending=len(self._pending))
            return False
        self.flushes += 1
        return True


def usage_components(runtime: Runtime) -> list[Component]:
    """The components that record what `status` shows: one UsageRecorder."""
    return [UsageRecorder(runtime)]
