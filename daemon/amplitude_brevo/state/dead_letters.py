"""Dead-letter queue: items a sink could not deliver, with the reason, until replayed or purged (SPEC §7)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from amplitude_brevo.state import checkpoints as checkpoints_table
from amplitude_brevo.state.base import StoreBase, chunks, marks, now_or, write_tx
from amplitude_brevo.state.checkpoints import Checkpoint


@dataclass(frozen=True)
class DeadLetter:
    """An item a sink could not deliver, with the reason (e.g. the Brevo 4xx body)."""

    source: str
    sink: str
    item: bytes | dict
    reason: str


@dataclass(frozen=True)
class StoredDeadLetter:
    id: int
    source: str
    sink: str
    item: bytes
    reason: str
    created_at: float
    replayed_at: float | None


class DeadLetters(StoreBase):
    async def add_dead_letters(
        self,
        letters: Sequence[DeadLetter],
        checkpoint: Checkpoint | None = None,
        *,
        checkpoints: Sequence[Checkpoint] = (),
        now: float | None = None,
    ) -> list[int]:
        """Store dead letters (and optionally advance checkpoints) in one transaction.

        Dead-lettering counts as "handled" for checkpoint purposes (SPEC §7), so a batch whose
        items were partly delivered and partly rejected can move its checkpoint atomically with
        the rejected items being recorded. ``checkpoint`` (one) and ``checkpoints`` (several) add up;
        each moves forward only (a value not past the stored one is ignored, the letters are still stored).
        """
        rows = [(d.source, d.sink, _encode_item(d.item), d.reason) for d in letters]
        moves = [*([checkpoint] if checkpoint else []), *checkpoints]
        if not rows and not moves:
            return []
        return await self._run(_add_dead_letters, rows, moves, now_or(now))

    async def list_dead_letters(
        self,
        *,
        source: str | None = None,
        include_replayed: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[StoredDeadLetter]:
        """Dead letters oldest first, optionally by source; replayed ones only on request."""
        return await self._run(_list_dead_letters, source, include_replayed, limit, offset)

    async def get_dead_letter(self, id: int) -> StoredDeadLetter | None:
        return await self._run(_get_dead_letter, id)

    async def mark_replayed(self, ids: Sequence[int], *, now: float | None = None) -> None:
        if ids:
            await self._run(_mark_replayed, list(ids), now_or(now))

    async def purge_dead_letters(self, *, ids: Sequence[int] | None = None, source: str | None = None) -> int:
        """Delete dead letters; returns the count.

        ``ids`` and ``source`` narrow the purge (both given: both must match). With neither,
        every dead letter is deleted — that is what ``dlq purge`` without filters asks for.
        """
        if ids is not None and not ids:
            return 0
        return await self._run(_purge_dead_letters, None if ids is None else list(ids), source)

    async def dead_letter_counts(self) -> dict[str, int]:
        """Not-yet-replayed dead letters by source."""
        return await self._run(_dead_letter_counts)


def _encode_item(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    return orjson.dumps(item)


def _add_dead_letters(
    conn: sqlite3.Connection,
    rows: list[tuple[str, str, bytes, str]],
    moves: list[Checkpoint],
    now: float,
) -> list[int]:
    ids: list[int] = []
    with write_tx(conn):
        for source, sink, item, reason in rows:
            cur = conn.execute(
                "INSERT INTO dead_letters (source, sink, item, reason, created_at) VALUES (?, ?, ?, ?, ?)",
                (source, sink, item, reason, now),
            )
            ids.append(int(cur.lastrowid))  # type: ignore[arg-type]
        for name, value in moves:
            checkpoints_table._upsert_checkpoint(conn, name, value, now)
    return ids


_DEAD_LETTER_COLUMNS = "id, source, sink, item, reason, created_at, replayed_at"


def _dead_letter(row: tuple[Any, ...]) -> StoredDeadLetter:
    id_, source, sink, item, reason, created_at, replayed_at = row
    return StoredDeadLetter(id_, source, sink, bytes(item), reason, created_at, replayed_at)


def _list_dead_letters(
    conn: sqlite3.Connection, source: str | None, include_replayed: bool, limit: int, offset: int
) -> list[StoredDeadLetter]:
    where, params = [], []
    if source is not None:
        where.append("source = ?")
        params.append(source)
    if not include_replayed:
        where.append("replayed_at IS NULL")
    sql = f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id LIMIT ? OFFSET ?"
    return [_dead_letter(row) for row in conn.execute(sql, (*params, limit, offset))]


def _get_dead_letter(conn: sqlite3.Connection, id_: int) -> StoredDeadLetter | None:
    row = conn.execute(f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?", (id_,)).fetchone()
    return None if row is None else _dead_letter(row)


def _mark_replayed(conn: sqlite3.Connection, ids: list[int], now: float) -> None:
    with write_tx(conn):
        for chunk in chunks(ids):
            conn.execute(
                f"UPDATE dead_letters SET replayed_at = ? WHERE id IN ({marks(len(chunk))})", (now, *chunk)
            )


def _purge_dead_letters(conn: sqlite3.Connection, ids: list[int] | None, source: str | None) -> int:
    source_clause = "" if source is None else " AND source = ?"
    source_params: tuple[str, ...] = () if source is None else (source,)
    deleted = 0
    with write_tx(conn):
        if ids is None:
            deleted = conn.execute(f"DELETE FROM dead_letters WHERE 1{source_clause}", source_params).rowcount
        else:
            for chunk in chunks(ids):
                deleted += conn.execute(
                    f"DELETE FROM dead_letters WHERE id IN ({marks(len(chunk))}){source_clause}",
                    (*chunk, *source_params),
                ).rowcount
    return deleted


def _dead_letter_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT source, count(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY source ORDER BY source"
        )
    )
