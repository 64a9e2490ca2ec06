"""Checkpoints table: where each source resumes (export hour, spool position), by name; forward only.

A checkpoint moves forward only, by construction: the one SQL statement that writes it
(:func:`_upsert_checkpoint`) refuses a value that is not greater than the stored one, so no ordering slip
between sinks, trackers or retried commits can send a source back over data it already finished — or,
worse, let a late, older commit hide a newer one. Moving back is a no-op (logged as
``state.checkpoint.not_moved_back``), never an error: the keys or dead letters committed in the same
transaction are still recorded.

Contract for writers: a checkpoint value is text whose TEXT order (SQLite's BINARY collation, i.e. byte
order) is the position order.

- Export hours are written ``YYYYMMDDTHH`` (``20261101T06``): fixed width, most significant first.
- Spool positions (ingest_spool ids) are written zero-padded to 20 digits (``f"{id:020d}"``, enough for
  any SQLite rowid), by the spool's ack tracker. Unpadded, ``"10"`` would sort before ``"9"`` and the
  checkpoint would stop moving at 9.

Going back on purpose (an operator re-reading a range) is :meth:`Checkpoints.reset_checkpoint`, which
deletes the checkpoint so the source starts from its configured start again.
"""

from __future__ import annotations

import sqlite3
import time

import structlog

from amplitude_brevo.state.base import StoreBase, write_tx

log = structlog.get_logger("amplitude_brevo.state")

Checkpoint = tuple[str, str]


def number_key(number: int) -> str:
    """A numbered position (a spool id, a contacts seq) as checkpoint text: zero-padded to 20 digits, enough
    for any SQLite rowid, so that the text order is the number order (see the module docstring)."""
    return f"{number:020d}"


def number_of(checkpoint: str | None) -> int:
    """The position `number_key` wrote; 0 for no checkpoint."""
    return int(checkpoint) if checkpoint else 0


class Checkpoints(StoreBase):
    async def get_checkpoint(self, name: str) -> str | None:
        return await self._run(read_checkpoint, name)

    async def set_checkpoint(self, name: str, value: str) -> None:
        """Move checkpoint ``name`` forward to ``value``; a value not past the stored one changes nothing."""
        await self._run(_set_checkpoint, name, value, time.time())

    async def checkpoints(self) -> dict[str, str]:
        return await self._run(_checkpoints)

    async def reset_checkpoint(self, name: str) -> bool:
        """Delete checkpoint ``name`` (explicit operator action only); True if it existed.

        The only way a checkpoint goes back: the source then resumes from its configured start.
        """
        return await self._run(_reset_checkpoint, name)


def read_checkpoint(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def _upsert_checkpoint(conn: sqlite3.Connection, name: str, value: str, now: float) -> None:
    """Move one checkpoint forward inside the caller's transaction; not past the stored value: no-op.

    The other table modules call it through this module (``checkpoints_table._upsert_checkpoint``), looked
    up at call time, so a test can wrap it to watch every checkpoint write.
    """
    moved = conn.execute(
        "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at "
        "WHERE excluded.value > checkpoints.value",
        (name, value, now),
    ).rowcount
    if not moved:
        # Rare (a writer passing the same value, or a bug upstream), so the extra read costs nothing
        # on the hot path; only a real move back is worth a warning.
        kept = read_checkpoint(conn, name)
        if kept is not None and kept > value:
            log.warning("state.checkpoint.not_moved_back", name=name, kept=kept, refused=value)


def _set_checkpoint(conn: sqlite3.Connection, name: str, value: str, now: float) -> None:
    with write_tx(conn):
        _upsert_checkpoint(conn, name, value, now)


def _checkpoints(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT name, value FROM checkpoints ORDER BY name"))


def _reset_checkpoint(conn: sqlite3.Connection, name: str) -> bool:
    with write_tx(conn):
        return conn.execute("DELETE FROM checkpoints WHERE name = ?", (name,)).rowcount > 0
