"""Dedupe record: the keys delivered to Brevo, which make event and order delivery effectively-once (SPEC §7).

Lookups (:meth:`DedupeRecord.unseen`) read on the store's second, read-only connection and thread, so they
never wait behind a write; recording (:meth:`DedupeRecord.commit_delivery`) is a write on the one writer
thread, in the same transaction as the checkpoints it moves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from amplitude_brevo.state import checkpoints as checkpoints_table
from amplitude_brevo.state.base import JSON_EACH as _JSON_EACH  # a module global: tests switch it off
from amplitude_brevo.state.base import StateError, StoreBase, chunks, json_array, marks, now_or, write_tx
from amplitude_brevo.state.checkpoints import Checkpoint

# Dedupe expiry deletes in slices so one big purge cannot hold the write lock (and the worker
# thread) for seconds while the ingest server waits to spool a request.
EXPIRE_SLICE = 5000


class DedupeRecord(StoreBase):
    async def unseen(self, keys: Sequence[str]) -> set[str]:
        """The subset of ``keys`` that is not in the dedupe record (i.e. not delivered yet)."""
        if not keys:
            return set()
        if self._closed:
            raise StateError(f"state store {self.path} is closed")
        return await self._run_lookup(_unseen, list(keys))

    async def commit_delivery(
        self,
        keys: Sequence[str],
        *,
        sink: str,
        checkpoint: Checkpoint | None = None,
        checkpoints: Sequence[Checkpoint] = (),
        now: float | None = None,
    ) -> None:
        """Record ``keys`` as delivered to ``sink`` and optionally advance checkpoints.

        All of it happens in ONE transaction — the delivery guarantee of SPEC §7: after a crash either
        the keys and the checkpoints are all on disk, or none is and the batch is re-read and
        re-sent (and then stopped by the dedupe record if Brevo got it). A key already present
        gets its ``delivered_at`` refreshed. ``checkpoint`` (one) and ``checkpoints`` (several) add up;
        each moves forward only (a value not past the stored one is ignored, the keys are still recorded).
        """
        moves = [*([checkpoint] if checkpoint else []), *checkpoints]
        await self._run(_commit_delivery, list(keys), sink, moves, now_or(now))

    async def expire_dedupe_slice(self, older_than: float, limit: int) -> int:
        """Delete up to ``limit`` of the oldest records delivered before unix time ``older_than``.

        ONE bounded DELETE on the writer thread, found through the ``delivered_at`` index, so its cost is
        that of ``limit`` rows whatever the size of the record: the daemon calls it periodically and spool
        writes and commits interleave between slices. Returns the count; below ``limit`` means caught up.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        return await self._run(_expire_dedupe_slice, older_than, limit)

    async def expire_dedupe(self, older_than: float) -> int:
        """Delete every record delivered before unix time ``older_than``, slice by slice; returns the count."""
        total = 0
        while True:
            # One slice per worker call so spool writes can interleave with a large purge.
            deleted = await self.expire_dedupe_slice(older_than, EXPIRE_SLICE)
            total += deleted
            if deleted < EXPIRE_SLICE:
                return total

    async def dedupe_count(self) -> int:
        """How many keys the record holds (for status and metrics, not for a hot path).

        Reads the whole ``delivered_at`` index (the smallest b-tree holding every key): for 5.8 million
        keys, 0.2 s from the page cache and 1.6 s from disk (bench/state_startup.py). So it runs on a
        connection and thread of its own, and holds up neither writes nor dedupe lookups.
        """
        return await self._run_apart(_dedupe_count)


def _unseen(conn: sqlite3.Connection, keys: list[str]) -> set[str]:
    # One statement over a JSON array of the keys rather than `IN (?, …)` slices: the worker thread then
    # needs the GIL once per call, not once per key or parameter, which matters while the event loop thread
    # is busy decoding (each hand-off can wait out the 5 ms switch interval).
    wanted = set(keys)
    if not _JSON_EACH:
        seen: set[str] = set()
        for chunk in chunks(list(wanted)):
            rows = conn.execute(f"SELECT key FROM dedupe WHERE key IN ({marks(len(chunk))})", chunk)
            seen.update(row[0] for row in rows)
        return wanted - seen
    rows = conn.execute(
        "SELECT key FROM dedupe WHERE key IN (SELECT value FROM json_each(?))", (json_array(wanted),)
    ).fetchall()
    return wanted.difference(row[0] for row in rows)


def _commit_delivery(
    conn: sqlite3.Connection, keys: list[str], sink: str, moves: list[Checkpoint], now: float
) -> None:
    # One transaction for keys and checkpoint. Keys without the checkpoint only cause a harmless
    # re-read after a crash (the keys stop the re-send). A checkpoint without its keys would skip
    # the re-read, yet leave nothing to stop the same event arriving again by another path
    # (ingest and export) — a duplicate in Brevo. Both or neither.
    if not moves and keys and _JSON_EACH:
        # Keys alone: ONE statement, its own (autocommit) transaction, as atomic and durable as
        # BEGIN … COMMIT. Every statement makes this thread give up and retake the GIL, and retaking it
        # can wait out the switch interval (or a long C call) while the event loop thread is busy decoding,
        # so three statements fewer is most of a commit's latency under load.
        conn.execute(_INSERT_KEYS, (sink, now, json_array(keys)))
        return
    with write_tx(conn):
        if keys and _JSON_EACH:
            conn.execute(_INSERT_KEYS, (sink, now, json_array(keys)))
        elif keys:
            conn.executemany(
                "INSERT INTO dedupe (key, sink, delivered_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET sink = excluded.sink, delivered_at = excluded.delivered_at",
                [(key, sink, now) for key in keys],
            )
        for name, value in moves:
            checkpoints_table._upsert_checkpoint(conn, name, value, now)


# All keys in one statement (see _unseen); `WHERE true` lets SQLite parse the upsert after a SELECT.
_INSERT_KEYS = (
    "INSERT INTO dedupe (key, sink, delivered_at) SELECT value, ?, ? FROM json_each(?) WHERE true "
    "ON CONFLICT (key) DO UPDATE SET sink = excluded.sink, delivered_at = excluded.delivered_at"
)


# The subquery walks the delivered_at index from its oldest entry and stops after `limit` rows; each key
# is then deleted through the primary key. (DELETE … ORDER BY … LIMIT is a compile-time option of SQLite.)
_EXPIRE_SLICE_SQL = (
    "DELETE FROM dedupe WHERE key IN "
    "(SELECT key FROM dedupe WHERE delivered_at < ? ORDER BY delivered_at LIMIT ?)"
)


def _expire_dedupe_slice(conn: sqlite3.Connection, older_than: float, limit: int) -> int:
    with write_tx(conn):
        return conn.execute(_EXPIRE_SLICE_SQL, (older_than, limit)).rowcount


def _dedupe_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM dedupe").fetchone()[0])
