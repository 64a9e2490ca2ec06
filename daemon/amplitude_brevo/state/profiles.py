"""Per-user profiles (the user properties ingest/identify operations are applied to), and GDPR forget."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

import orjson

from amplitude_brevo.state.base import StoreBase, now_or, write_tx


class Profiles(StoreBase):
    async def get_profile(self, user_id: str) -> dict | None:
        return await self._run(_get_profile, user_id)

    async def put_profiles(self, profiles: Mapping[str, dict], *, now: float | None = None) -> None:
        """Upsert whole profiles (replacing the stored dict per user) in one transaction."""
        rows = [(user_id, orjson.dumps(props)) for user_id, props in profiles.items()]
        if rows:
            await self._run(_put_profiles, rows, now_or(now))

    async def delete_user(self, user_id: str) -> None:
        """GDPR/CCPA forget: drop the user's profile and cohort snapshot rows, in one transaction.

        Dead letters and spooled request bodies are opaque blobs and are not searched here.
        """
        await self._run(_delete_user, user_id)


def _get_profile(conn: sqlite3.Connection, user_id: str) -> dict | None:
    row = conn.execute("SELECT properties FROM profiles WHERE user_id = ?", (user_id,)).fetchone()
    return None if row is None else orjson.loads(row[0])


def _put_profiles(conn: sqlite3.Connection, rows: list[tuple[str, bytes]], now: float) -> None:
    with write_tx(conn):
        conn.executemany(
            "INSERT INTO profiles (user_id, properties, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET properties = excluded.properties, "
            "updated_at = excluded.updated_at",
            ((user_id, props, now) for user_id, props in rows),
        )


def _delete_user(conn: sqlite3.Connection, user_id: str) -> None:
    with write_tx(conn):
        conn.execute("DELETE FROM profiles WHERE user_id = ?", (user_id,))
        affected = conn.execute(
            "SELECT DISTINCT cohort_id, list_id FROM cohort_members WHERE member = ?", (user_id,)
        ).fetchall()
        conn.execute("DELETE FROM cohort_members WHERE member = ?", (user_id,))
        # Keep the recorded snapshot sizes consistent with the rows that remain.
        conn.executemany(
            "UPDATE cohort_syncs SET members = (SELECT count(*) FROM cohort_members "
            "WHERE cohort_id = ?1 AND list_id = ?2) WHERE cohort_id = ?1 AND list_id = ?2",
            affected,
        )
