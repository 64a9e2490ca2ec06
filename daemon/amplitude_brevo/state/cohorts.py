"""Cohort snapshots: the membership last synced per (cohort, list), which a mirror sync diffs against."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from amplitude_brevo.state.base import StoreBase, now_or, write_tx


class CohortSnapshots(StoreBase):
    async def cohort_members(self, cohort_id: str, list_id: int) -> set[str]:
        """Membership recorded by the last ``replace_cohort_members`` (empty if never synced)."""
        return await self._run(_cohort_members, cohort_id, list_id)

    async def replace_cohort_members(
        self, cohort_id: str, list_id: int, members: Iterable[str], now: float | None = None
    ) -> None:
        """Make the stored snapshot equal ``members`` and stamp the sync, in one transaction.

        Applied as a diff, so re-syncing a large, mostly unchanged cohort writes little.
        """
        await self._run(_replace_cohort_members, cohort_id, list_id, list(members), now_or(now))


def _cohort_members(conn: sqlite3.Connection, cohort_id: str, list_id: int) -> set[str]:
    rows = conn.execute(
        "SELECT member FROM cohort_members WHERE cohort_id = ? AND list_id = ?", (cohort_id, list_id)
    )
    return {row[0] for row in rows}


def _replace_cohort_members(
    conn: sqlite3.Connection, cohort_id: str, list_id: int, members: list[str], now: float
) -> None:
    new = set(members)
    with write_tx(conn):
        old = _cohort_members(conn, cohort_id, list_id)
        conn.executemany(
            "DELETE FROM cohort_members WHERE cohort_id = ? AND list_id = ? AND member = ?",
            ((cohort_id, list_id, member) for member in old - new),
        )
        conn.executemany(
            "INSERT INTO cohort_members (cohort_id, list_id, member) VALUES (?, ?, ?)",
            ((cohort_id, list_id, member) for member in new - old),
        )
        conn.execute(
            "INSERT INTO cohort_syncs (cohort_id, list_id, synced_at, members) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (cohort_id, list_id) DO UPDATE SET synced_at = excluded.synced_at, "
            "members = excluded.members",
            (cohort_id, list_id, now, len(new)),
        )
