"""Producer: tails Amplitude's Export API hour by hour and queues what each row maps to, for every sink.

Which hours, and how many per request, is `export_windows.WindowPlanner`'s business. Each window is streamed
to a file in the state directory and read member by member (`ReaderPool`: decoding and remapping in child
processes, or in this one); every row fans out into the items of every sink that wants it (today the Brevo
event), each queued with the ack token of its hour.

Delivery: the source's OffsetTracker counts what is outstanding per hour, in every sink. The Acknowledger
writes the checkpoint — the next hour to read after a restart — in the same SQLite transaction as the
dedupe keys of the request that completed it, so a restart resumes inside a multi-hour window, and rows
re-read that were already delivered are filtered by the daemon's dedupe record.
"""

from __future__ import annotations

import asyncio
import time
import zipfile
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..clients.amplitude import AmplitudeClient, ExportStatus, remove_stale_exports
from ..config import Config
from ..durations import hour_key, parse_hour
from ..logs import get_logger
from ..pipeline.acks import Acknowledger, OffsetTracker
from ..pipeline.claims import Candidates, ClaimingQueuer
from ..pipeline.dedupe import DedupeRecord
from ..pipeline.items import Item
from ..pipeline.queue import BatchQueue, QueueClosed
from ..pipeline.remap import PROFILES_SINK, MappingRules
from ..retry import Backoff
from ..state import DeadLetter
from .export_files import Member, list_members, open_export
from .export_reader import ReaderFailed, ReaderPool
from .export_windows import (
    HOUR,
    WindowPlanner,
    available_at,
    floor_hour,
    hours_between,
    latest_available_hour,
)
from .member_mapper import MappedChunk

log = get_logger("amplitude_export")

SOURCE = "export"  # dead letters' source
TAIL_CHECKPOINT = "export.next_hour"
CHUNK = 1000  # items looked up in the dedupe record per round trip (and queued at once)
READER_ATTEMPTS = 3  # reader failures a member may cause before it is dead-lettered
HEALTH_CHECK = "amplitude export"


@dataclass
class ExportStats:
    rows: int = 0
    mapped: int = 0
    deduplicated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    windows: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows, "mapped": self.mapped, "deduplicated": self.deduplicated,
            "skipped": dict(self.skipped), "dead_lettered": self.dead_lettered,
            "windows": self.windows, "bytes": self.bytes,
        }


class ExportSource:
    """Tails (or, with `end`, backfills) export hours into the queues of `queues` (by sink name)."""

    role = "producer"

    def __init__(
        self,
        *,
        cfg: Config,
        client: AmplitudeClient,
        queues: Mapping[str, BatchQueue[Item]],
        dedupe: DedupeRecord,
        acks: Acknowledger,
        checkpoint_name: str = TAIL_CHECKPOINT,
        start: datetime | None = None,
        end: datetime | None = None,
        metrics: Any = None,
        health: Any = None,
        backoff: Backoff | None = None,
        now: Any = None,
        name: str = "amplitude_export",
        dry_run: bool = False,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.rules = MappingRules.from_config(cfg)
        self.client = client
        self.queues = dict(queues)
        self.dedupe = dedupe
        self.acks = acks
        self.state = acks.state
        self.checkpoint_name = checkpoint_name
        self.start_hour = start
        self.end = end  # inclusive last hour for a backfill; None tails for ever
        self.metrics = metrics
        self.health = health
        self.backoff = backoff or Backoff(base=1.0, cap=300.0)
        self._now = now or (lambda: datetime.now(UTC))
        self.stats = ExportStats()
        self.stopping = stopping or asyncio.Event()
        # A dry run reads and maps everything but records nothing: no checkpoint, no dead letters.
        self.dry_run = dry_run
        self.tracker = OffsetTracker(checkpoint_name, SOURCE, lambda hour: hour_key(hour + HOUR), record=not dry_run)
        self.tracker.on_advance = self._advanced
        self.reader = ReaderPool(cfg.export.readers, backlog=self._backlog)
        self.planner = WindowPlanner(_max_window_hours(cfg))
        self.finished = asyncio.Event()  # backfill: every hour through `end` resolved
        self.read_cursor: datetime | None = None
        # queues the chunks read, one behind its dedupe lookup
        self.queuer = ClaimingQueuer(queues=self.queues, dedupe=dedupe, tracker=self.tracker, stats=self.stats,
                                     metrics=metrics)
        self._bad_lines: dict[str, _BadLines] = {}  # this member's bad lines by kind, logged once per member

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(self.queues)

    @property
    def next_hour(self) -> datetime | None:
        """The first hour not yet fully delivered: what the checkpoint says, or is about to say."""
        head = self.tracker.head
        return head if head is not None else self.read_cursor

    # -- lifecycle --
    async def start(self) -> None:
        """Before READY: the temporary directory for export zips exists, and nothing stale is left in it."""
        temp_dir = self.client.temp_dir
        if temp_dir is not None:
            files, size = await asyncio.to_thread(remove_stale_exports, Path(temp_dir))
            if files:
                log.info("export.temp.cleaned", files=files, bytes=size, dir=str(temp_dir))

    def stop(self) -> None:
        """Stop reading at the next chunk; what is not queued yet is read again on the next start."""
        self.stopping.set()

    def reload(self, cfg: Config) -> None:
        amp = cfg.connectors.amplitude
        self.client.reconfigure(api_url=amp.api_url, api_key=amp.api_key, secret_key=amp.secret_key)
        self.cfg = cfg
        self.rules = MappingRules.from_config(cfg)  # members read from now on use the new mapping
        self.reader.workers = cfg.export.readers  # applied at the next member
        self.planner.resize(_max_window_hours(cfg))

    def collect_metrics(self) -> None:
        """At each /metrics scrape: the lag keeps growing while the checkpoint cannot move."""
        if self.metrics is not None and self.checkpoint_name == TAIL_CHECKPOINT and self.next_hour is not None:
            self.metrics.export_lag.set(max(0.0, (self._now() - self.next_hour).total_seconds()))

    def _advanced(self, hour: datetime) -> None:
        """The tracker dropped complete hours through `hour`."""
        if self.end is not None and hour >= self.end:
            self.finished.set()

    def _backlog(self) -> tuple[int, int]:
        """The fullest Brevo queue this source feeds, for the reader pool's pause policy. The profile folder's
        queue does not count: it is drained by local work on this process, which mapping in-process (what a
        pause means) would slow down further, not relieve."""
        brevo = [q for name, q in self.queues.items() if name != PROFILES_SINK]
        fullest = max(brevo, key=lambda q: len(q) / max(1, q.capacity), default=None)
        return (0, 1) if fullest is None else (len(fullest), fullest.capacity)

    async def _initial_hour(self) -> datetime:
        stored = await self.state.get_checkpoint(self.checkpoint_name)
        if stored:
            return parse_hour(stored)
        if self.start_hour is not None:
            return floor_hour(self.start_hour)
        if self.cfg.export.start is not None:
            return floor_hour(self.cfg.export.start)
        return latest_available_hour(self._now(), self.cfg.export.lag)

    # -- main loop --
    async def run(self) -> None:
        try:
            await self._run()
        except QueueClosed:
            log.info("export.stopped", reason="queue closed", next_hour=_key(self.next_hour))
        finally:
            self._discard_pending()
            await self.reader.close()

    async def _run(self) -> None:
        first = await self._initial_hour()
        self.read_cursor = first
        log.info("export.started", checkpoint=self.checkpoint_name, next_hour=hour_key(first),
                 end=_key(self.end), sinks=list(self.sinks))
        if self.end is not None and first > self.end:
            self.finished.set()
        while not self.stopping.is_set():
            if self.end is not None and self.read_cursor > self.end:
                await self._wait_finished()
                return
            latest = latest_available_hour(self._now(), self.cfg.export.lag)
            if self.end is not None:
                latest = min(latest, self.end)
            window = self.planner.next_window(self.read_cursor, latest)
            if window is None:
                await self._idle(self.read_cursor)
                continue
            start, end = window
            done = await self._fetch_window(start, end)
            if done is None:
                return  # stopping
            if done is False:
                self.planner.too_large(start, end)
                continue
            self.read_cursor = end + HOUR
            self.planner.read()

    async def _wait_finished(self) -> None:
        waiter = asyncio.ensure_future(self.finished.wait())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait([waiter, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stop.cancel()
        if self.finished.is_set():
            log.info("export.backfill.done", checkpoint=self.checkpoint_name, **self.stats.as_dict())

    async def _idle(self, waiting_for: datetime) -> None:
        seconds = (available_at(waiting_for, self.cfg.export.lag) - self._now()).total_seconds()
        seconds = max(1.0, min(self.cfg.export.poll_interval, seconds))
        log.debug("export.idle", next_hour=hour_key(waiting_for), sleep_seconds=round(seconds, 1))
        await self.reader.close()  # started again for the next window
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _fetch_window(self, start: datetime, end: datetime) -> bool | None:
        """Fetch and queue hours start..end. True: done; False: too large, shrink; None: stopping."""
        attempt = 0
        hours = (end - start) // HOUR + 1
        while not self.stopping.is_set():
            attempt += 1
            started = time.monotonic()
            result = await self.client.download_export(start, end)
            log_fields = {"start": hour_key(start), "end": hour_key(end), "hours": hours, "attempt": attempt}
            if result.status is ExportStatus.OK:
                assert result.path is not None
                try:
                    await self._read_window(result.path, start, end)
                except _StopReading:
                    # Hours of this window stay unsealed: the checkpoint cannot pass them.
                    log.info("export.window.interrupted", **log_fields)
                    return None
                except _BadArchive as exc:
                    # Starts like a zip but is not one (cut short, corrupt): nothing was queued, fetch it again.
                    result.status, result.reason = ExportStatus.RETRY, str(exc)
                else:
                    self._healthy()
                    self.stats.windows += 1
                    self.stats.bytes += result.size
                    log.info("export.window.done", **log_fields, bytes=result.size,
                             seconds=round(time.monotonic() - started, 3))
                    return True
                finally:
                    result.path.unlink(missing_ok=True)
            if result.status is ExportStatus.EMPTY:
                self._healthy()
                for hour in hours_between(start, end):
                    self.tracker.seal(hour)
                await self.acks.checkpoint(self.tracker)
                log.info("export.window.empty", **log_fields)
                return True
            if result.status is ExportStatus.TOO_LARGE:
                if hours > 1:
                    log.warning("export.window.too_large", **log_fields, reason=result.reason)
                    return False
                if result.http_status == 400:
                    # One hour the Export API cannot serve (over 4 GB): record it, loudly, and move on.
                    await self._dead_letter_hour(start, result.reason)
                    return True
                # A 504 for a single hour is a timeout, not a verdict on the hour: retry it like a 5xx.
            if result.status in (ExportStatus.RETRY, ExportStatus.TOO_LARGE):
                log.warning("export.window.retry", **log_fields, reason=result.reason)
            else:
                # Keys, region, host or path wrong: nothing is skipped, the window is retried until it works.
                hint = "check connectors.amplitude.api_key/secret_key, api_url and data_center"
                log.error("export.window.failed", **log_fields, reason=result.reason, hint=hint)
                if self.health is not None:
                    self.health.fail(HEALTH_CHECK, result.reason, hint)
            if self.metrics:
                self.metrics.errors.labels(component=self.name, kind=result.status.value).inc()
            if not await self.backoff.sleep(attempt, stop=self.stopping):
                return None
        return None

    def _healthy(self) -> None:
        if self.health is not None:
            self.health.ok(HEALTH_CHECK)

    async def _dead_letter_hour(self, hour: datetime, reason: str) -> None:
        self.tracker.seal(hour)
        letters = [] if self.dry_run else [DeadLetter(
            source=SOURCE, sink=",".join(self.sinks), item={"hour": hour_key(hour)},
            reason=f"export hour too large for the Export API: {reason}")]
        await self.acks.dead_letter(letters, self.tracker)
        self.stats.dead_lettered += 1
        log.error("export.hour.dead_lettered", hour=hour_key(hour), reason=reason)

    async def _read_window(self, path: Any, start: datetime, end: datetime) -> None:
        tracker = self.tracker
        try:
            archive = await asyncio.to_thread(open_export, path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise _BadArchive(f"HTTP 200 but the zip cannot be opened: {type(exc).__name__}: {exc}") from exc
        for hour in hours_between(start, end):
            tracker.open(hour)
        unsealed = start  # the first hour of the window still being read
        try:
            with archive:
                for member in list_members(archive):
                    # A member whose name gives no hour in this window is listed last: count it in the last
                    # hour, which stays open until the whole archive is read (an earlier hour may be
                    # complete already).
                    hour = member.hour if member.hour and start <= member.hour <= end else end
                    if hour > unsealed:
                        # Members come in hour order, so every hour before this member's is read in full:
                        # seal them now, so the checkpoint can move hour by hour inside a long (backfill)
                        # window. The chunk still waiting for its lookup is queued first: it counts.
                        await self._queue_pending()
                        while unsealed < hour:
                            tracker.seal(unsealed)
                            unsealed += HOUR
                        await self.acks.checkpoint(tracker)
                    await self._read_member(path, member, hour)
                await self._queue_pending()
        finally:
            self._discard_pending()  # stopping or failing: those rows were not queued, their hour stays open
        for hour in hours_between(unsealed, end):
            tracker.seal(hour)
        await self.acks.checkpoint(tracker)

    async def _read_member(self, path: Any, member: Member, hour: datetime) -> None:
        """Queue a member's items and store its dead letters; the reader pool decodes and remaps it."""
        for attempt in range(1, READER_ATTEMPTS + 1):
            batch = Candidates()
            counted = MappedChunk()  # rows and skips of this attempt, taken back if it fails
            self._bad_lines = {}
            try:
                async with aclosing(self.reader.map_member(path, member, self.rules)) as chunks:
                    async for chunk in chunks:
                        batch.add(chunk)
                        letters = self._take(chunk, member, hour, counted)
                        if len(batch) >= CHUNK or letters:
                            await self._flush(hour, batch, letters)
                            batch = Candidates()
                await self._flush(hour, batch, [])
                return
            except ReaderFailed as exc:
                # What the failed reader handed over is queued; reading the member again finds it in flight
                # or delivered. A member that fails every time is recorded, not retried for ever.
                log.error("export.reader.failed", member=member.name, attempt=attempt, error=str(exc))
                self.stats.rows -= counted.rows
                for reason, count in counted.skipped.items():
                    self.stats.skipped[reason] -= count
                if self.metrics:
                    self.metrics.errors.labels(component=self.name, kind="reader").inc()
                if attempt == READER_ATTEMPTS:
                    await self._flush(hour, Candidates(), [DeadLetter(
                        source=SOURCE, sink=",".join(self.sinks), item={"member": member.name, "hour": hour_key(hour)},
                        reason=f"the export reader failed {attempt} times on this member: {exc}")])
                elif not await self.backoff.sleep(attempt, stop=self.stopping):
                    raise _StopReading from exc
            finally:
                self._log_bad_lines(member)

    def _take(self, chunk: MappedChunk, member: Member, hour: datetime, counted: MappedChunk) -> list[DeadLetter]:
        """Count a chunk's rows and skips (also in `counted`), return its bad items as dead letters. Bad
        lines are logged once per member and kind, with a count and the first one as a sample (SPEC §7)."""
        stats = self.stats
        stats.rows += chunk.rows
        counted.rows += chunk.rows
        if self.metrics and chunk.rows:
            self.metrics.items_in.labels(source=SOURCE).inc(chunk.rows)
        for reason, count in chunk.skipped.items():
            stats.skipped[reason] = stats.skipped.get(reason, 0) + count
            counted.skipped[reason] = counted.skipped.get(reason, 0) + count
        letters = []
        sink = ",".join(self.sinks)
        for event, line, item, reason in chunk.letters:
            if event == "export.member.truncated":
                item["hour"] = hour_key(hour)
                log.error(event, member=member.name, lines_read=item["lines_read"], reason=reason)
            else:
                bad = self._bad_lines.get(event)
                if bad is None:
                    self._bad_lines[event] = _BadLines(line, reason)
                else:
                    bad.count += 1
            letters.append(DeadLetter(source=SOURCE, sink=sink, item=item, reason=reason))
        return letters

    def _log_bad_lines(self, member: Member) -> None:
        for event, bad in self._bad_lines.items():
            emit = log.error if event == "export.line.failed" else log.warning
            emit(event, member=member.name, count=bad.count, first_line=bad.line, first_reason=bad.reason,
                 hint="amplitude-brevo dlq list --source export")
        self._bad_lines = {}

    async def _flush(self, hour: datetime, batch: Candidates, letters: list[DeadLetter]) -> None:
        """Dead-letter `letters`; start the dedupe lookup of `batch` and queue the previous chunk.

        The lookup runs on the state thread while the next chunk is decoded (the event loop thread is what
        limits reading), and the chunk is queued at the next flush (`_queue_pending`)."""
        if self.stopping.is_set():
            raise _StopReading
        if letters:
            if not self.dry_run:
                await self.acks.dead_letter(letters)
            self.stats.dead_lettered += len(letters)
            if self.metrics:
                for sink in self.sinks:
                    self.metrics.items_out.labels(sink=sink, outcome="dead_lettered").inc(len(letters))
        if not len(batch):
            return
        await self.queuer.flush(hour, batch)
        await asyncio.sleep(0)  # let consumers and the admin server run between chunks

    async def _queue_pending(self) -> None:
        """Queue the new items of the chunk waiting for its dedupe lookup (see pipeline/claims.py)."""
        await self.queuer.queue_pending()

    def _discard_pending(self) -> None:
        self.queuer.discard_pending()


def _max_window_hours(cfg: Config) -> int:
    return max(1, int(cfg.export.max_window // 3600))


def _key(hour: datetime | None) -> str | None:
    return None if hour is None else hour_key(hour)


@dataclass(slots=True)
class _BadLines:
    line: int | None
    reason: str
    count: int = 1


class _StopReading(Exception):
    """The daemon is stopping: leave the rest of the window for the next start."""


class _BadArchive(Exception):
    """A downloaded window is not a readable zip although it looked like one."""
