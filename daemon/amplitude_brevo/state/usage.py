"""What `status` reads about a running daemon: Brevo requests per budget and minute, queue depths, contacts pending.

The daemon's `UsageRecorder` (``usage.py``) writes them every few seconds; `amplitude-brevo status` reads them
from the state file without the writer lock, next to the running daemon.

- ``budget_usage``: requests let go per budget and UTC epoch minute (``int(time // 60)``), added to on every
  write (two writes for one minute sum up); minutes older than two hours are pruned.
- ``meta['status.backlogs']``: the last snapshot of the queue depths by sink name, with its time.
- ``contacts`` rows whose ``seq`` is above the ``contacts.written`` checkpoint: contacts with a Brevo write pending.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

import orjson

from amplitude_brevo.state.base import StoreBase, now_or, write_tx

BACKLOGS_KEY = "status.backlogs"
KEEP_MINUTES = 120  # what `prune_usage` callers keep: `status` shows the last hour

UsageRow = tuple[str, int, int]  # (budget, epoch minute, requests)


class BudgetUsage(StoreBase):
    async def record_usage(self, rows: Iterable[UsageRow]) -> None:
        """Add `requests` to each (budget, minute) in one transaction (a minute written twice sums up)."""
        rows = [(str(budget), int(minute), int(requests)) for budget, minute, requests in rows if requests]
        if rows:
            await self._run(_record_usage, rows)

    async def usage_since(self, minute: int) -> dict[str, list[tuple[int, int]]]:
        """Requests per budget for each minute from `minute` on (inclusive): `{budget: [(minute, requests)]}`."""
        return await self._run(_usage_since, int(minute))

    async def prune_usage(self, before_minute: int) -> int:
        """Forget the minutes before `before_minute`; returns how many rows went."""
        return await self._run(_prune_usage, int(before_minute))

    async def record_backlogs(self, snapshot: Mapping[str, int], *, now: float | None = None) -> None:
        """Replace the queue-depth snapshot (`{sink name: items queued}`), stamped with `now` (epoch seconds)."""
        value = orjson.dumps({"at": now_or(now), "queues": {str(k): int(v) for k, v in snapshot.items()}})
        await self._run(_put_meta, BACKLOGS_KEY, value.decode())

    async def backlogs(self) -> tuple[dict[str, int], float | None]:
        """The last queue-depth snapshot and when it was taken (epoch seconds); `({}, None)` if there is none."""
        value = await self._run(_get_meta, BACKLOGS_KEY)
        if value is None:
            return {}, None
        try:
            data = orjson.loads(value)
            return {str(k): int(v) for k, v in data["queues"].items()}, float(data["at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return {}, None

    async def contacts_pending(self, checkpoint_value: str | None) -> int:
        """Contacts whose `seq` is above `checkpoint_value` (the `contacts.written` checkpoint; None: all)."""
        after = -1 if checkpoint_value is None else int(checkpoint_value)
        return await self._run_apart(_contacts_pending, after)


def _record_usage(conn: sqlite3.Connection, rows: list[UsageRow]) -> None:
    with write_tx(conn):
        conn.executemany(
            "INSERT INTO budget_usage (budget, minute, requests) VALUES (?, ?, ?) "
            "ON CONFLICT (budget, minute) DO UPDATE SET requests = requests + excluded.requests",
            rows,
        )


def _usage_since(conn: sqlite3.Connection, minute: int) -> dict[str, list[tuple[int, int]]]:
    usage: dict[str, list[tuple[int, int]]] = {}
    for budget, at, requests in conn.execute(
        "SELECT budget, minute, requests FROM budget_usage WHERE minute >= ? ORDER BY budget, minute", (minute,)
    ):
        usage.setdefault(budget, []).append((at, requests))
    return usage


def _prune_usage(conn: sqlite3.Connection, before_minute: int) -> int:
    with write_tx(conn):
        return conn.execute("DELETE FROM budget_usage WHERE minute < ?", (before_minute,)).rowcount


def _put_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    with write_tx(conn):
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def _get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _contacts_pending(conn: sqlite3.Connection, after: int) -> int:
    return int(conn.execute("SELECT count(*) FROM contacts WHERE seq > ?", (after,)).fetchone()[0])
