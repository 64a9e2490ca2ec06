"""Versioned SQLite schema of the state file: ordered migrations keyed by ``PRAGMA user_version``."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from amplitude_brevo import __version__

# Marks the file as ours in the SQLite header (bytes 68-71: "AmBr"), so a foreign SQLite
# database that happens to use user_version too is refused instead of being migrated.
APPLICATION_ID = 0x416D4272

# MIGRATIONS[i] takes a file from schema version i to i + 1. Append only: never edit a shipped
# migration, because files in the field already carry its result.
MIGRATIONS: list[Sequence[str]] = [
    # 1: initial schema
    [
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT
        )""",
        """CREATE TABLE checkpoints (
            name       TEXT PRIMARY KEY,
            value      TEXT NOT NULL,
            updated_at REAL
        )""",
        # WITHOUT ROWID: the key is the only lookup path, one B-tree instead of two.
        """CREATE TABLE dedupe (
            key          TEXT PRIMARY KEY,
            sink         TEXT,
            delivered_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX dedupe_delivered_at ON dedupe (delivered_at)",
        """CREATE TABLE dead_letters (
            id          INTEGER PRIMARY KEY,
            source      TEXT,
            sink        TEXT,
            item        BLOB,
            reason      TEXT,
            created_at  REAL,
            replayed_at REAL NULL
        )""",
        "CREATE INDEX dead_letters_source ON dead_letters (source, id)",
        """CREATE TABLE profiles (
            user_id    TEXT PRIMARY KEY,
            properties BLOB,
            updated_at REAL
        )""",
        """CREATE TABLE cohort_members (
            cohort_id TEXT,
            list_id   INTEGER,
            member    TEXT,
            PRIMARY KEY (cohort_id, list_id, member)
        ) WITHOUT ROWID""",
        # GDPR deletes look members up across all cohorts.
        "CREATE INDEX cohort_members_member ON cohort_members (member)",
        """CREATE TABLE cohort_syncs (
            cohort_id TEXT,
            list_id   INTEGER,
            synced_at REAL,
            members   INTEGER,
            PRIMARY KEY (cohort_id, list_id)
        )""",
        # AUTOINCREMENT: ids are never reused after spool_delete_through, so a spool position
        # stored as a checkpoint can never point at a newer, unrelated row.
        """CREATE TABLE ingest_spool (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            kind        TEXT,
            body        BLOB,
            received_at REAL
        )""",
    ],
    # 2: contacts and revenue (issue 8), rate-budget usage for `status`
    [
        # One row per Amplitude user the export (or ingest) has told us about: the newest row folded, the
        # contact attributes as converted for Brevo, and what is known of the contact in Brevo. `seq` orders
        # writes: a row whose seq is above the `contacts.written` checkpoint has a Brevo write pending.
        """CREATE TABLE contacts (
            user_id     TEXT PRIMARY KEY,
            seen        TEXT NOT NULL,
            first_seen  TEXT,
            last_active TEXT,
            email       TEXT,
            sources     BLOB,
            attributes  BLOB,
            seq         INTEGER NOT NULL,
            brevo_email TEXT,
            brevo_id    INTEGER,
            in_brevo    INTEGER NOT NULL DEFAULT 0,
            updated_at  REAL
        )""",
        "CREATE INDEX contacts_seq ON contacts (seq)",
        # Every revenue event counted, by dedupe key: a key is counted into its user's totals once, ever.
        """CREATE TABLE revenue (
            key     TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            amount  REAL NOT NULL,
            at      TEXT
        ) WITHOUT ROWID""",
        """CREATE TABLE revenue_totals (
            user_id TEXT PRIMARY KEY,
            ltv     REAL NOT NULL,
            orders  INTEGER NOT NULL,
            refunds INTEGER NOT NULL
        ) WITHOUT ROWID""",
        # Brevo requests sent per budget and UTC minute (epoch minute), for `status`.
        """CREATE TABLE budget_usage (
            budget   TEXT NOT NULL,
            minute   INTEGER NOT NULL,
            requests INTEGER NOT NULL,
            PRIMARY KEY (budget, minute)
        ) WITHOUT ROWID""",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


def latest_version() -> int:
    """The schema version this build migrates to (read at call time, so tests can extend MIGRATIONS)."""
    return len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the schema up to ``latest_version()``; returns (version found, version now).

    ``conn`` must be in autocommit mode (``isolation_level=None``). Each migration runs in its
    own ``BEGIN IMMEDIATE`` transaction together with the ``user_version`` bump, so a crash or a
    failing statement leaves the file at the previous version, never half-migrated. The version
    is re-read after the write lock is taken, so two processes opening the same new file do not
    both apply a migration.
    """
    found = user_version(conn)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = user_version(conn)
            if current >= latest_version():
                conn.execute("ROLLBACK")
                return found, current
            for statement in MIGRATIONS[current]:
                conn.execute(statement)
            if current == 0:
                now = repr(time.time())
                conn.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    [("created_by", f"amplitude-brevo {__version__}"), ("created_at", now)],
                )
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (f"migrated_to_{current + 1}_by", f"amplitude-brevo {__version__}"),
            )
            # PRAGMA values cannot be bound as parameters; current is an int we computed.
            conn.execute(f"PRAGMA user_version = {current + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
