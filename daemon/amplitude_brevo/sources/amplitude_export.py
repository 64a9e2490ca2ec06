"""Producer: tails Amplitude's Export API hour by hour and queues mapped events for Brevo.

The cursor is the server-upload hour (reference/amplitude-api.md §1). Hour H is requested once
now ≥ H + 1h + `export.lag`. While behind, one request spans up to `export.max_window` hours; a 400 or
504 halves the window, down to a single hour (a single hour answered 400 is dead-lettered, one answered 504
is retried), and each window read grows the next one back by doubling. Each window is streamed to a temporary file and read
member by member, line by line, decoding only the fields the pipeline uses.

Delivery: every queued event carries its hour. The HourTracker counts what is outstanding per hour and
the sink writes the checkpoint — the next hour to read after a restart — in the same SQLite transaction
as the dedupe keys of the batch that completed it. So a restart resumes inside a multi-hour window, and
re-read rows already delivered are filtered by the dedupe record.
"""

from __future__ import annotations

import asyncio
import time
import zipfile
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..clients.amplitude import AmplitudeClient, ExportStatus
from ..config import Config
from ..logs import get_logger
from ..pipeline.acks import HourTracker, hour_key
from ..pipeline.queue import BatchQueue
from ..pipeline.remap import EVENTS_NAMESPACE, EVENTS_SINK, BrevoEvent, MappingRules
from ..retry import Backoff
from ..state import DeadLetter, StateStore
from .export_files import Member, list_members, open_export
from .export_reader import ReaderFailed, ReaderPool
from .member_mapper import MappedChunk

log = get_logger("amplitude_export")

HOUR = timedelta(hours=1)
DEDUPE_PREFIX = "events:"
CHUNK = 1000  # dedupe lookups per round trip (and events queued at once)
READER_ATTEMPTS = 3  # reader failures a member may cause before it is dead-lettered


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def latest_available_hour(now: datetime, lag_seconds: float) -> datetime:
    """The newest hour H with now ≥ H + 1h + lag."""
    return floor_hour(now - HOUR - timedelta(seconds=lag_seconds))


@dataclass(slots=True)
class QueuedEvent:
    """An event on its way to Brevo, with what it must acknowledge when it gets there."""

    event: BrevoEvent
    hour: datetime
    source: ExportSource


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
    """Tails (or, with `end`, backfills) export hours into the `brevo_events` queue."""

    role = "producer"

    def __init__(
        self,
        *,
        cfg: Config,
        state: StateStore,
        client: AmplitudeClient,
        queue: BatchQueue[QueuedEvent],
        stopping: asyncio.Event,
        checkpoint_name: str = "export.next_hour",
        start: datetime | None = None,
        end: datetime | None = None,
        metrics: Any = None,
        backoff: Backoff | None = None,
        now: Any = None,
        name: str = "amplitude_export",
        dry_run: bool = False,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.rules = MappingRules.from_config(cfg)
        self.state = state
        self.client = client
        self.queue = queue
        self.stopping = stopping
        self.checkpoint_name = checkpoint_name
        self.start = start
        self.end = end  # inclusive last hour for a backfill; None tails for ever
        self.metrics = metrics
        self.backoff = backoff or Backoff(base=1.0, cap=300.0)
        self._now = now or (lambda: datetime.now(UTC))
        self.stats = ExportStats()
        self.tracker: HourTracker | None = None
        self.inflight: set[str] = set()
        # The last chunk read, waiting for its dedupe lookup (see _flush), and every chunk whose lookup is in
        # flight: each collects the keys committed meanwhile (its lookup's answer may predate them).
        self._pending: _PendingChunk | None = None
        self._looking_up: list[_PendingChunk] = []
        # Decode and remap members in child processes; in this one while the queue is backed up.
        self.reader = ReaderPool(cfg.export.readers, backlog=lambda: (len(self.queue), self.queue.capacity))
        self.finished = asyncio.Event()  # backfill: every hour through `end` delivered
        self.read_cursor: datetime | None = None
        # A dry run reads and maps everything but records nothing: no checkpoint, no dead letters.
        self.dry_run = dry_run

    def reload(self, cfg: Config) -> None:
        amp = cfg.connectors.amplitude
        self.client.reconfigure(api_url=amp.api_url, api_key=amp.api_key, secret_key=amp.secret_key)
        self.cfg = cfg
        self.rules = MappingRules.from_config(cfg)  # members read from now on use the new mapping
        self.reader.workers = cfg.export.readers  # applied at the next member

    # -- acknowledgements, called by the sink --
    def acknowledge(self, hour: datetime, count: int, keys: list[str]) -> str | None:
        """Items of `hour` are delivered or dead-lettered; returns the new checkpoint value, if it moved.

        The keys stay in `inflight` until `committed()`: a dedupe lookup submitted before the sink's commit
        would not see them in SQLite, so until then only `inflight` stops a repeated row being sent twice.
        """
        assert self.tracker is not None
        self.tracker.done(hour, count)
        return self._advance()

    def committed(self, keys: list[str]) -> None:
        """The sink's commit of these keys is in SQLite; from now on dedupe lookups see them."""
        self.inflight.difference_update(keys)
        for chunk in self._looking_up:
            chunk.committed_meanwhile.update(keys)

    def _advance(self) -> str | None:
        assert self.tracker is not None
        moved = self.tracker.advance()
        if moved is not None:
            self._lag_metric()
            if self.end is not None and self.tracker.next_hour > self.end:
                self.finished.set()
        return moved

    def _lag_metric(self) -> None:
        if self.metrics and self.tracker:
            lag = (self._now() - self.tracker.next_hour).total_seconds()
            self.metrics.export_lag.set(max(0.0, lag))

    async def _initial_hour(self) -> datetime:
        stored = await self.state.get_checkpoint(self.checkpoint_name)
        if stored:
            return datetime.strptime(stored, "%Y%m%dT%H").replace(tzinfo=UTC)
        if self.start is not None:
            return floor_hour(self.start)
        if self.cfg.export.start is not None:
            return floor_hour(self.cfg.export.start)
        return latest_available_hour(self._now(), self.cfg.export.lag)

    # -- main loop --
    async def run(self) -> None:
        try:
            await self._run()
        finally:
            await self.reader.close()

    async def _run(self) -> None:
        first = await self._initial_hour()
        self.tracker = HourTracker(first)
        self.read_cursor = first
        window_hours = self._max_window_hours()
        log.info("export.started", checkpoint=self.checkpoint_name, next_hour=hour_key(first),
                 end=hour_key(self.end) if self.end else None)
        if self.end is not None and first > self.end:
            self.finished.set()
        while not self.stopping.is_set():
            if self.end is not None and self.read_cursor > self.end:
                await self._wait_finished()
                return
            latest = latest_available_hour(self._now(), self.cfg.export.lag)
            if self.end is not None:
                latest = min(latest, self.end)
            if self.read_cursor > latest:
                await self._idle(self.read_cursor)
                continue
            window_hours = min(window_hours, self._max_window_hours())
            end = min(self.read_cursor + (window_hours - 1) * HOUR, latest)
            done = await self._fetch_window(self.read_cursor, end)
            if done is None:
                return  # stopping
            if done is False:
                window_hours = max(1, ((end - self.read_cursor) // HOUR + 1) // 2)
                continue
            self.read_cursor = end + HOUR
            # Grow back gradually: hours that were too large are usually followed by more of the same, and
            # jumping straight back to max_window would pay the whole halving sequence again for each window.
            window_hours = min(self._max_window_hours(), window_hours * 2)

    def _max_window_hours(self) -> int:
        return max(1, int(self.cfg.export.max_window // 3600))

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
        available_at = waiting_for + HOUR + timedelta(seconds=self.cfg.export.lag)
        seconds = max(1.0, min(self.cfg.export.poll_interval, (available_at - self._now()).total_seconds()))
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
                    self.stats.windows += 1
                    self.stats.bytes += result.size
                    log.info("export.window.done", **log_fields, bytes=result.size,
                             seconds=round(time.monotonic() - started, 3))
                    return True
                finally:
                    result.path.unlink(missing_ok=True)
            if result.status is ExportStatus.EMPTY:
                for hour in _hours(start, end):
                    self.tracker.open(hour)  # type: ignore[union-attr]
                    self.tracker.seal(hour)  # type: ignore[union-attr]
                await self._commit_empty_progress()
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
            if result.status is ExportStatus.FATAL:
                log.error("export.window.failed", **log_fields, reason=result.reason,
                          hint="check the Amplitude api_key/secret_key and connectors.amplitude.data_center")
            else:
                log.warning("export.window.retry", **log_fields, reason=result.reason)
            if self.metrics:
                self.metrics.errors.labels(component=self.name, kind=result.status.value).inc()
            if not await self.backoff.sleep(attempt, stop=self.stopping):
                return None
        return None

    async def _commit_empty_progress(self) -> None:
        moved = self._advance()
        if moved is not None and not self.dry_run:
            await self.state.set_checkpoint(self.checkpoint_name, moved)

    async def _dead_letter_hour(self, hour: datetime, reason: str) -> None:
        assert self.tracker is not None
        self.tracker.open(hour)
        self.tracker.seal(hour)
        moved = self._advance()
        if not self.dry_run:
            await self.state.add_dead_letters(
                [DeadLetter(source="export", sink="brevo_events", item={"hour": hour_key(hour)},
                            reason=f"export hour too large for the Export API: {reason}")],
                checkpoint=(self.checkpoint_name, moved) if moved else None,
            )
        self.stats.dead_lettered += 1
        log.error("export.hour.dead_lettered", hour=hour_key(hour), reason=reason)

    async def _read_window(self, path: Any, start: datetime, end: datetime) -> None:
        tracker = self.tracker
        assert tracker is not None
        try:
            archive = await asyncio.to_thread(open_export, path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise _BadArchive(f"HTTP 200 but the zip cannot be opened: {type(exc).__name__}: {exc}") from exc
        for hour in _hours(start, end):
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
                        await self._commit_empty_progress()
                    await self._read_member(path, member, hour)
                await self._queue_pending()
        finally:
            self._discard_pending()  # stopping or failing: those rows were not queued, their hour stays open
        for hour in _hours(unsealed, end):
            tracker.seal(hour)
        await self._commit_empty_progress()

    async def _read_member(self, path: Any, member: Member, hour: datetime) -> None:
        """Queue a member's events and store its dead letters; the reader child decodes and remaps it."""
        for attempt in range(1, READER_ATTEMPTS + 1):
            candidates: list[BrevoEvent] = []
            counted = MappedChunk()  # rows and skips of this attempt, taken back if it fails
            try:
                async with aclosing(self.reader.map_member(path, member, self.rules)) as chunks:
                    async for chunk in chunks:
                        out = chunk.outputs.get(EVENTS_SINK)
                        if out is not None:  # its keys are in the record's namespace; a BrevoEvent's are not
                            bare = len(EVENTS_NAMESPACE)
                            candidates.extend(map(BrevoEvent, [key[bare:] for key in out.keys], out.bodies))
                        letters = self._take(chunk, member, hour, counted)
                        if len(candidates) >= CHUNK or letters:
                            await self._flush(hour, candidates, letters)
                            candidates = []
                await self._flush(hour, candidates, [])
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
                    await self._flush(hour, [], [DeadLetter(
                        source="export", sink="brevo_events", item={"member": member.name, "hour": hour_key(hour)},
                        reason=f"the export reader failed {attempt} times on this member: {exc}")])
                elif not await self.backoff.sleep(attempt, stop=self.stopping):
                    raise _StopReading from exc

    def _take(self, chunk: MappedChunk, member: Member, hour: datetime, counted: MappedChunk) -> list[DeadLetter]:
        """Count a chunk's rows and skips (also in `counted`), log its bad items, return them as dead letters."""
        stats = self.stats
        stats.rows += chunk.rows
        counted.rows += chunk.rows
        if self.metrics and chunk.rows:
            self.metrics.items_in.labels(source="export").inc(chunk.rows)
        for reason, count in chunk.skipped.items():
            stats.skipped[reason] = stats.skipped.get(reason, 0) + count
            counted.skipped[reason] = counted.skipped.get(reason, 0) + count
        letters = []
        for event, line, item, reason in chunk.letters:
            if event == "export.member.truncated":
                item["hour"] = hour_key(hour)
                log.error(event, member=member.name, lines_read=item["lines_read"], reason=reason)
            elif event == "export.line.failed":
                log.error(event, member=member.name, line=line, reason=reason)
            else:
                log.warning(event, member=member.name, line=line, reason=reason)
            letters.append(DeadLetter(source="export", sink="brevo_events", item=item, reason=reason))
        return letters

    async def _flush(self, hour: datetime, candidates: list[BrevoEvent], letters: list[DeadLetter]) -> None:
        """Dead-letter `letters`; start the dedupe lookup of `candidates` and queue the previous chunk.

        The lookup runs on the state thread while the next chunk is decoded (the event loop thread is what
        limits reading), and the chunk is queued at the next flush (`_queue_pending`)."""
        if self.stopping.is_set():
            raise _StopReading
        if letters:
            if not self.dry_run:
                await self.state.add_dead_letters(letters)
            self.stats.dead_lettered += len(letters)
            if self.metrics:
                self.metrics.items_out.labels(sink="brevo_events", outcome="dead_lettered").inc(len(letters))
        if not candidates:
            return
        self.stats.mapped += len(candidates)
        keys = [DEDUPE_PREFIX + c.dedupe_key for c in candidates]
        lookup = asyncio.ensure_future(self.state.unseen(keys))
        lookup.add_done_callback(ignore_exception)
        chunk = _PendingChunk(hour, candidates, keys, lookup)
        self._looking_up.append(chunk)
        await self._queue_pending()
        self._pending = chunk
        await asyncio.sleep(0)  # let consumers and the admin server run between chunks

    async def _queue_pending(self) -> None:
        """Queue the events of the chunk waiting for its dedupe lookup that are new: not in the dedupe record,
        not committed since the lookup started, not on their way already."""
        chunk, self._pending = self._pending, None
        if chunk is None:
            return
        try:
            unseen = await chunk.lookup
        finally:
            self._looking_up.remove(chunk)
        unseen.difference_update(chunk.committed_meanwhile)
        inflight = self.inflight
        fresh: list[QueuedEvent] = []
        for candidate, key in zip(chunk.candidates, chunk.keys, strict=True):
            if key not in unseen or key in inflight:
                continue
            inflight.add(key)
            fresh.append(QueuedEvent(candidate, chunk.hour, self))
        deduplicated = len(chunk.candidates) - len(fresh)
        if deduplicated:
            self.stats.deduplicated += deduplicated
            if self.metrics:
                self.metrics.items_out.labels(sink="brevo_events", outcome="deduplicated").inc(deduplicated)
        assert self.tracker is not None
        self.tracker.add(chunk.hour, len(fresh))
        await self.queue.put_many(fresh)

    def _discard_pending(self) -> None:
        chunk, self._pending = self._pending, None
        if chunk is not None:
            chunk.lookup.cancel()
            self._looking_up.remove(chunk)


def ignore_exception(future: asyncio.Future[Any]) -> None:
    """A done-callback marking a lookup's exception as seen: a discarded chunk's lookup is never awaited, and
    asyncio would log it as never retrieved. Whoever awaits the lookup still gets the exception."""
    if not future.cancelled():
        future.exception()


@dataclass(slots=True, eq=False)  # compared by identity (list.remove)
class _PendingChunk:
    hour: datetime
    candidates: list[BrevoEvent]
    keys: list[str]
    lookup: asyncio.Future[set[str]]
    committed_meanwhile: set[str] = field(default_factory=set)


class _StopReading(Exception):
    """The daemon is stopping: leave the rest of the window for the next start."""


class _BadArchive(Exception):
    """A downloaded window is not a readable zip although it looked like one."""


def _hours(start: datetime, end: datetime) -> list[datetime]:
    return [start + i * HOUR for i in range((end - start) // HOUR + 1)]
