"""Ingest spool: request bodies accepted by the ingest endpoint, durable before its 200 (SPEC §6)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from amplitude_brevo.state.base import StoreBase, write_tx


class IngestSpool(StoreBase):
    async def spool_append(self, kind: str, bodies: Sequence[bytes]) -> list[int]:
        """Append request bodies to the spool; returns their ids in order.

        Durable when this returns: the COMMIT ran with ``synchronous=FULL``, i.e. the WAL was
        fsync'd. Only then may the ingest server answer 200 (SPEC §6).
        """
        if not bodies:
            return []
        return await self._run(_spool_append, kind, list(bodies), time.time())

    async def spool_read(self, after_id: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` spooled ``(id, kind, body)`` with ``id > after_id``, oldest first."""
        return await self._run(_spool_read, after_id, limit)

    async def spool_delete_through(self, id: int) -> int:
        """Delete spooled rows with ``id <= id``; returns the count."""
        return await self._run(_spool_delete_through, id)

    async def spool_depth(self) -> int:
        return await self._run(_spool_depth)


def _spool_append(conn: sqlite3.Connection, kind: str, bodies: list[bytes], now: float) -> list[int]:
    ids: list[int] = []
    # The COMMIT at the end of this block is the durability point (WAL fsync, synchronous=FULL).
    with write_tx(conn):
        for body in bodies:
            cur = conn.execute(
                "INSERT INTO ingest_spool (kind, body, received_at) VALUES (?, ?, ?)", (kind, body, now)
            )
            ids.append(int(cur.lastrowid))  # type: ignore[arg-type]
    return ids


def _spool_read(conn: sqlite3.Connection, after_id: int, limit: int) -> list[tuple[int, str, bytes]]:
    rows = conn.execute(
        "SELECT id, kind, body FROM ingest_spool WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
    )
    return [(id_, kind, bytes(body)) for id_, kind, body in rows]


def _spool_delete_through(conn: sqlite3.Connection, id_: int) -> int:
    with write_tx(conn):
        return conn.execute("DELETE FROM ingest_spool WHERE id <= ?", (id_,)).rowcount


def _spool_depth(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM ingest_spool").fetchone()[0])
