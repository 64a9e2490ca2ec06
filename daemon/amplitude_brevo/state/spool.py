"""Ingest spool: requests accepted by the ingest endpoint, durable before its 200 (SPEC §6).

One row per accepted request: ``kind`` names the endpoint (``httpapi``, ``batch``, ``identify``,
``groupidentify``), ``body`` is the entry the ingest server wrote (``ingest/entries.py``: the validated items,
the caller's address, the receive time), ``received_at`` the receive time in epoch seconds. Row ids are
positions: consumers checkpoint them and :meth:`IngestSpool.spool_delete_through` frees what all of them
are done with.

Two things on top of plain appends, both for the ingest server:

- **Group commit** (:class:`SpoolWriter`): requests that arrive while a commit runs wait for the next one and
  share it, so a burst of N concurrent requests pays for about two fsyncs, not N.
- **A size bound**: the spool's row and byte totals are kept in memory on the writer thread (counted once
  from the table, then moved by every append and delete in this process), so checking "is the spool full?"
  costs no scan. A process that deletes spool rows through another store object is not seen until the next
  open; none does (the CLI only reads the depth).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from amplitude_brevo.state.base import StateError, StoreBase, write_tx
from amplitude_brevo.state.checkpoints import read_checkpoint

log = structlog.get_logger("amplitude_brevo.state.spool")

# The spool's readers, each with its own checkpoint (the last spool id it is done with).
FORWARDED_CHECKPOINT = "ingest.forwarded"  # ingest/forwarder.py: to Amplitude
BREVO_CHECKPOINT = "ingest.brevo"  # sources/ingest_spool.py: into the Brevo sinks


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One request to spool: its endpoint, its stored body, when it was received (epoch seconds)."""

    kind: str
    body: bytes
    received_at: float


@dataclass(frozen=True, slots=True)
class SpoolSize:
    rows: int
    bytes: int


class _Totals:
    """The spool's row and byte counts; read and written only on the store's writer thread."""

    __slots__ = ("rows", "bytes", "known")

    def __init__(self) -> None:
        self.rows = 0
        self.bytes = 0
        self.known = False

    def ensure(self, conn: sqlite3.Connection) -> None:
        if not self.known:
            # length() of a BLOB comes from the record header: the bodies themselves are not read.
            rows, size = conn.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM ingest_spool").fetchone()
            self.rows, self.bytes, self.known = int(rows), int(size), True

    def snapshot(self) -> SpoolSize:
        return SpoolSize(self.rows, self.bytes)


class IngestSpool(StoreBase):
    _spool_totals_: _Totals | None = None

    @property
    def _spool_totals(self) -> _Totals:
        # Created on the event loop, then only touched by functions that run on the writer thread.
        if self._spool_totals_ is None:
            self._spool_totals_ = _Totals()
        return self._spool_totals_

    async def spool_append(self, kind: str, bodies: Sequence[bytes]) -> list[int]:
        """Append request bodies to the spool; returns their ids in order.

        Durable when this returns: the COMMIT ran with ``synchronous=FULL``, i.e. the WAL was
        fsync'd. Only then may the ingest server answer 200 (SPEC §6).
        """
        if not bodies:
            return []
        now = time.time()
        ids, _ = await self.spool_append_entries([SpoolEntry(kind, body, now) for body in bodies])
        return ids

    async def spool_append_entries(self, entries: Sequence[SpoolEntry]) -> tuple[list[int], SpoolSize]:
        """Append entries in ONE transaction (one fsync); returns their ids in order and the spool's size after.

        Durable when this returns, like :meth:`spool_append`.
        """
        if not entries:
            return [], await self.spool_size()
        return await self._run(_spool_append, list(entries), self._spool_totals)

    async def spool_read(self, after_id: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` spooled ``(id, kind, body)`` with ``id > after_id``, oldest first."""
        return await self._run(_spool_read, after_id, limit)

    async def spool_delete_through(self, id: int) -> int:
        """Delete spooled rows with ``id <= id``; returns the count."""
        return await self._run(_spool_delete_through, id, self._spool_totals)

    async def spool_release(self, consumers: Sequence[str]) -> int:
        """Delete the spooled rows every consumer is done with: through the lowest of the checkpoints named
        `consumers` (spool positions, e.g. `ingest.forwarded` and `ingest.brevo`). Nothing while one of them
        has no checkpoint yet. Returns the rows deleted."""
        return await self._run(_spool_release, list(consumers), self._spool_totals)

    async def spool_depth(self) -> int:
        return await self._run(_spool_depth)

    async def spool_size(self) -> SpoolSize:
        """Rows and body bytes in the spool (counted once per open, then kept up to date)."""
        return await self._run(_spool_size, self._spool_totals)

    def spool_size_known(self) -> SpoolSize | None:
        """The size as last moved by a committed append or delete, without waiting for the writer thread
        (None until counted). Read across threads: it may lag a commit finishing at this very moment, which
        is as good as the answer a hop to the thread would give a moment later."""
        totals = self._spool_totals
        return totals.snapshot() if totals.known else None


def _spool_append(conn: sqlite3.Connection, entries: list[SpoolEntry], totals: _Totals) -> tuple[list[int], SpoolSize]:
    totals.ensure(conn)
    ids: list[int] = []
    # The COMMIT at the end of this block is the durability point (WAL fsync, synchronous=FULL).
    with write_tx(conn):
        for entry in entries:
            cur = conn.execute(
                "INSERT INTO ingest_spool (kind, body, received_at) VALUES (?, ?, ?)",
                (entry.kind, entry.body, entry.received_at),
            )
            ids.append(int(cur.lastrowid))  # type: ignore[arg-type]
    # Only after the COMMIT: a rolled-back append changes nothing.
    totals.rows += len(entries)
    totals.bytes += sum(len(entry.body) for entry in entries)
    return ids, totals.snapshot()


def _spool_read(conn: sqlite3.Connection, after_id: int, limit: int) -> list[tuple[int, str, bytes]]:
    rows = conn.execute(
        "SELECT id, kind, body FROM ingest_spool WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
    )
    return [(id_, kind, bytes(body)) for id_, kind, body in rows]


def _spool_delete_through(conn: sqlite3.Connection, id_: int, totals: _Totals) -> int:
    totals.ensure(conn)
    with write_tx(conn):
        rows, size = conn.execute(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM ingest_spool WHERE id <= ?", (id_,)
        ).fetchone()
        deleted = conn.execute("DELETE FROM ingest_spool WHERE id <= ?", (id_,)).rowcount
    totals.rows -= int(rows)
    totals.bytes -= int(size)
    return deleted


def _spool_release(conn: sqlite3.Connection, consumers: list[str], totals: _Totals) -> int:
    if not consumers:
        return 0
    positions = []
    for name in consumers:
        value = read_checkpoint(conn, name)
        if not value:
            return 0  # that consumer has not finished anything yet
        positions.append(int(value))
    through = min(positions)
    return _spool_delete_through(conn, through, totals) if through > 0 else 0


def _spool_depth(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM ingest_spool").fetchone()[0])


def _spool_size(conn: sqlite3.Connection, totals: _Totals) -> SpoolSize:
    totals.ensure(conn)
    return totals.snapshot()


# ---------------------------------------------------------------------- group commit and the size bound


@dataclass(frozen=True, slots=True)
class SpoolLimits:
    """The spool is full when it holds MORE than ``max_rows`` rows or ``max_bytes`` body bytes (None: no bound).

    (decision) Defaults: one million requests or 1 GiB, whichever comes first — hours of traffic at the
    issue's 20,000 events/s target with 100-event requests, and a size any state disk should have.
    """

    max_rows: int | None = 1_000_000
    max_bytes: int | None = 1024**3

    def exceeded_by(self, size: SpoolSize) -> bool:
        return (self.max_rows is not None and size.rows > self.max_rows) or (
            self.max_bytes is not None and size.bytes > self.max_bytes
        )


class SpoolWriter:
    """Appends entries to the spool with group commit, and says when the spool is full.

    :meth:`append` returns once its entry is committed. While a commit runs, new entries queue; when it ends,
    everything queued goes in the next commit. There is never more than one commit in flight, so the writer
    thread is not flooded with one transaction per request, and each fsync covers every request that waited
    for it. ``commits`` and ``entries`` count what happened (tests, metrics).

    A caller cancelled while waiting does not take its entry back: it may still be committed. That is harmless
    (the client, having no 200, resends; Amplitude and the dedupe record drop the repeat by ``insert_id``) and
    it is the only way to never answer 200 for something not committed.
    """

    def __init__(self, spool: IngestSpool, limits: SpoolLimits | None = None) -> None:
        self._spool = spool
        self.limits = limits or SpoolLimits()
        self._queued: list[tuple[SpoolEntry, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0
        self.entries = 0

    @property
    def queued(self) -> int:
        """Entries waiting for the next commit (not the one running)."""
        return len(self._queued)

    async def full(self) -> bool:
        """True if the spool is over its limits.

        Costs no hop to the writer thread once the spool has been counted: a request must not wait behind
        the commit in flight just to learn there is room. Rows freed by consumers count at once.
        """
        size = self._spool.spool_size_known()
        if size is None:
            size = await self._spool.spool_size()
        return self.limits.exceeded_by(size)

    async def append(self, entry: SpoolEntry) -> int:
        """Queue ``entry`` for the next commit; returns its spool id once that commit is durable.

        Raises :class:`StateError` if the commit failed (nothing of that commit was kept).
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued.append((entry, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="spool-group-commit")
        # Shielded: the flusher owns the future and resolves it whatever happens to this caller.
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Wait for the commits already queued to finish."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        batch: list[tuple[SpoolEntry, asyncio.Future[int]]] = []
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    ids, _ = await self._spool.spool_append_entries([entry for entry, _ in batch])
                except Exception as exc:
                    log.error("ingest.spool.commit_failed", requests=len(batch), error=str(exc))
                    for _, future in batch:
                        future.set_exception(exc if isinstance(exc, StateError) else StateError(str(exc)))
                        # The caller may be gone (cancelled): nobody else would retrieve the exception.
                        future.exception()
                    continue
                self.commits += 1
                self.entries += len(batch)
                for (_, future), id_ in zip(batch, ids, strict=True):
                    future.set_result(id_)
        except BaseException as exc:
            # Cancelled (shutdown): the running commit may or may not land; what is queued has not been tried.
            for _, future in [*batch, *self._queued]:
                if not future.done():
                    future.set_exception(StateError(f"spool writer stopped: {exc!r}"))
                    future.exception()
            self._queued = []
            raise
        finally:
            self._flusher = None
