"""`amplitude-brevo backfill`: one export range through the same path as `run`, resumable, then a summary."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

from .app import Component, Daemon, Runtime, StartupError
from .components import backfill_checkpoint, export_source, sink_components
from .config import Config
from .sources.amplitude_export import ExportSource
from .usage import usage_components


class BackfillError(StartupError):
    """The backfill cannot run as configured; the message says why."""


@dataclass
class BackfillResult:
    exit_code: int
    seconds: float
    source: dict[str, Any] = field(default_factory=dict)
    sink: dict[str, Any] = field(default_factory=dict)  # the events sink's stats (the first sink's)
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)  # every component's stats, by name
    rate_limited: int = 0
    complete: bool = False


class _Progress:
    """A one-line progress bar on stderr, redrawn twice a second (only when stderr is a TTY)."""

    def __init__(self, source: ExportSource, sinks: Sequence[Any], start: datetime, end: datetime, out: TextIO):
        self.source, self.start, self.end, self.out = source, start, end, out
        self.sinks = [c for c in sinks if hasattr(getattr(c, "stats", None), "delivered")]
        self.total = int((end - start) / timedelta(hours=1)) + 1

    def draw(self) -> None:
        next_hour = self.source.next_hour
        done = 0 if next_hour is None else int((next_hour - self.start) / timedelta(hours=1))
        done = max(0, min(self.total, done))
        width = 30
        filled = width * done // self.total
        bar = "#" * filled + "-" * (width - filled)
        s = self.source.stats
        delivered = sum(c.stats.delivered for c in self.sinks)
        dead = s.dead_lettered + sum(c.stats.dead_lettered for c in self.sinks)
        self.out.write(
            f"\r[{bar}] {done}/{self.total} h  rows {s.rows:,}  delivered {delivered:,}"
            f"  dedup {s.deduplicated:,}  dlq {dead:,} "
        )
        self.out.flush()

    async def run(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(0.5)


async def run_backfill(
    cfg: Config,
    *,
    start: datetime,
    end: datetime,
    dry_run: bool = False,
    config_path: str | None = None,
    progress: bool | None = None,
    install_signal_handlers: bool = True,
) -> BackfillResult:
    """Run the export path once over start..end (inclusive hours) and wait until all of it is delivered."""
    parts: dict[str, Any] = {}

    def components(runtime: Runtime) -> Sequence[Component]:
        source = export_source(
            runtime, checkpoint_name=backfill_checkpoint(start, end), start=start, end=end, dry_run=dry_run
        )
        if source is None:
            raise BackfillError("nothing to backfill: the config maps no export rows to Brevo (check "
                                "connectors.amplitude.enabled, sync.*, event_mapping, property_mapping, revenue)")
        sinks = sink_components(runtime, dry_run=dry_run, historical=True, upstream=source.finished)
        parts.update(source=source, sink=sinks[0], sinks=sinks, runtime=runtime)
        return [*sinks, *usage_components(runtime), source]

    daemon = Daemon(cfg, config_path=config_path, components=components, burst=True, admin=False,
                    install_signal_handlers=install_signal_handlers)
    show = sys.stderr.isatty() if progress is None else progress
    started = time.monotonic()
    bar_task = None
    await daemon.startup()
    try:
        if show:
            bar = _Progress(parts["source"], parts["sinks"], start, end, sys.stderr)
            bar_task = asyncio.create_task(bar.run())
        await daemon.run_until_stopped()
    finally:
        if bar_task:
            bar_task.cancel()
        rate_limited = sum(getattr(getattr(c, "client", None), "rate_limited_total", 0)
                           for c in parts.get("sinks", ()))
        await daemon.shutdown()
        if bar_task:
            bar.draw()  # the final figures, after the last acknowledgements
            sys.stderr.write("\n")
    source: ExportSource = parts["source"]
    return BackfillResult(
        exit_code=daemon.exit_code,
        seconds=time.monotonic() - started,
        source=source.stats.as_dict(),
        sink=parts["sink"].stats.as_dict() if hasattr(parts["sink"], "stats") else {},
        sinks={c.name: _stats(c) for c in parts["sinks"]},
        rate_limited=rate_limited,
        complete=source.finished.is_set(),
    )


def _stats(component: Any) -> dict[str, Any]:
    stats = getattr(component, "stats", None)
    if stats is not None and hasattr(stats, "as_dict"):
        return stats.as_dict()
    totals = getattr(component, "totals", None)  # the profile folder
    if totals is not None:
        return {"new": totals.new, "changed": totals.changed, "unchanged": totals.unchanged,
                "revenue_counted": totals.revenue_counted, "dropped": dict(component.dropped_total)}
    return {"queued": getattr(component, "queued", 0)}
