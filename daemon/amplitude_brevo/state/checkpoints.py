"""Checkpoints table: where each source resumes (export hour, spool position), by name."""

from __future__ import annotations

import sqlite3
import time

from amplitude_brevo.state.base import StoreBase, write_tx

Checkpoint = tuple[str, str]


class Checkpoints(StoreBase):
    async def get_checkpoint(self, name: str) -> str | None:
        return await self._run(_get_checkpoint, name)

    async def set_checkpoint(self, name: str, value: str) -> None:
        await self._run(_set_checkpoint, name, value, time.time())

    async def checkpoints(self) -> dict[str, str]:
        return await self._run(_checkpoints)


def _get_checkpoint(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def _upsert_checkpoint(conn: sqlite3.Connection, name: str, value: str, now: float) -> None:
    """Write one checkpoint inside the caller's transaction.

    The other table modules call it through this module (``checkpoints_table._upsert_checkpoint``), looked
    up at call time, so a test can wrap it to watch every checkpoint write.
    """
    conn.execute(
        "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (name, value, now),
    )


def _set_checkpoint(conn: sqlite3.Connection, name: str, value: str, now: float) -> None:
    with write_tx(conn):
        _upsert_checkpoint(conn, name, value, now)


def _checkpoints(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT name, value FROM checkpoints ORDER BY name"))
