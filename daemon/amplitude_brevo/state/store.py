"""StateStore: the daemon's durable state in one SQLite file, served from one worker thread.

Everything that must survive ``kill -9`` lives here: export/spool checkpoints, the dedupe record
that makes Brevo delivery effectively-once, dead letters, per-user profiles, cohort snapshots and
the ingest spool (SPEC §6, §7).

Threading. SQLite calls block, so they never run on the event loop: each store owns a
``ThreadPoolExecutor(max_workers=1)`` whose single thread creates, uses and closes the one
connection (``check_same_thread`` stays on and would catch a slip). Every public coroutine hands
one self-contained function to that thread. Because that function opens and finishes its own
transaction, cancelling the awaiting coroutine can never leave a transaction half-open: work that
already started runs to COMMIT or ROLLBACK on the thread; work still queued is dropped. Operations
are serialized in call order.

Durability. WAL with ``synchronous=FULL`` fsyncs the WAL on every COMMIT, so once a write
coroutine returns, its data survives power loss — ``spool_append`` relies on this before the ingest
server answers 200, and ``commit_delivery`` before a checkpoint is considered advanced.

Errors. Opening a file that is not a usable SQLite database, a foreign SQLite database, or one
with a newer schema raises :class:`StateError` and leaves the file untouched; nothing is ever
reset or deleted to "recover". SQLite errors from later operations are raised as ``StateError``
too, with the ``sqlite3`` exception chained as ``__cause__``.

Usage::

    async with await StateStore.open(cfg.state.path) as state:
        await state.commit_delivery(keys, sink="brevo_events", checkpoint=("export", hour))
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson
import structlog

from amplitude_brevo.state import schema

log = structlog.get_logger("amplitude_brevo.state")

T = TypeVar("T")

# SQLite's historical bound on host parameters is 999; stay well under it.
MAX_IN_PARAMS = 500
# Dedupe expiry deletes in slices so one big purge cannot hold the write lock (and the worker
# thread) for seconds while the ingest server waits to spool a request.
EXPIRE_SLICE = 5000
BUSY_TIMEOUT_S = 10.0

Checkpoint = tuple[str, str]


class StateError(Exception):
    """The state file cannot be used (corrupt, foreign, too new) or a state operation failed."""


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


class StateStore:
    """Async facade over the state file; create with :meth:`open`, finish with :meth:`close`.

    Also an async context manager: ``async with await StateStore.open(path) as state: ...``
    closes the store on exit.
    """

    def __init__(self, path: Path, executor: ThreadPoolExecutor) -> None:
        self.path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread
        # Dedupe lookups read on a connection and thread of their own, so they never wait behind a write
        # (and a write — a delivery being recorded — never waits behind them). Opened on first use.
        self._lookups = ThreadPoolExecutor(1, thread_name_prefix="amplitude-brevo-state-lookup")
        self._lookup_conn: sqlite3.Connection | None = None  # touched only on the lookup thread
        self._schema_version = 0
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r}, schema_version={self._schema_version})"

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> StateStore:
        """Open (creating or migrating as needed) the state file at ``path``.

        A missing parent directory is created with mode 0700 and a new file with mode 0600.
        Raises :class:`StateError` if the file is not a usable amplitude-brevo state file; in
        that case the file is left exactly as it was.
        """
        store = cls(Path(os.fspath(path)), ThreadPoolExecutor(1, thread_name_prefix="amplitude-brevo-state"))
        loop = asyncio.get_running_loop()
        try:
            found, version, created = await loop.run_in_executor(store._executor, store._open_on_worker)
        except Exception:
            # The worker already closed whatever it opened; its thread is idle.
            store._closed = True
            store._executor.shutdown(wait=True)
            store._lookups.shutdown(wait=True)
            raise
        except BaseException:
            # Cancelled while the worker may still be opening: queue the cleanup behind it.
            store._closed = True
            store._executor.submit(store._discard_on_worker)
            store._executor.shutdown(wait=False)
            store._lookups.shutdown(wait=False)
            raise
        store._schema_version = version
        if found != version:
            log.info("state.migrated", path=str(store.path), from_version=found, to_version=version)
        log.info("state.opened", path=str(store.path), schema_version=version, created=created)
        return store

    async def close(self) -> None:
        """Checkpoint the WAL into the main file, close the connection, stop the thread.

        Idempotent; concurrent callers all wait for the same close. Operations queued before
        ``close()`` finish first (the worker runs in call order).
        """
        if self._close_task is None:
            self._closed = True
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # The lookup connection first: the final WAL checkpoint needs no reader in the way.
            await loop.run_in_executor(self._lookups, self._close_lookups)
            await loop.run_in_executor(self._executor, self._close_on_worker)
        finally:
            # The workers have nothing left to do, so joining them is immediate.
            self._lookups.shutdown(wait=True)
            self._executor.shutdown(wait=True)
        log.info("state.closed", path=str(self.path))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def schema_version(self) -> int:
        return self._schema_version

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ checkpoints

    async def get_checkpoint(self, name: str) -> str | None:
        return await self._run(_get_checkpoint, name)

    async def set_checkpoint(self, name: str, value: str) -> None:
        await self._run(_set_checkpoint, name, value, time.time())

    async def checkpoints(self) -> dict[str, str]:
        return await self._run(_checkpoints)

    # ------------------------------------------------------------------ dedupe record

    async def unseen(self, keys: Sequence[str]) -> set[str]:
        """The subset of ``keys`` that is not in the dedupe record (i.e. not delivered yet)."""
        if not keys:
            return set()
        if self._closed:
            raise StateError(f"state store {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._lookups, self._unseen_on_lookup_thread, list(keys))

    async def commit_delivery(
        self,
        keys: Sequence[str],
        *,
        sink: str,
        checkpoint: Checkpoint | None = None,
        checkpoints: Sequence[Checkpoint] = (),
        now: float | None = None,
    ) -> None:
        """Record ``keys`` as delivered to ``sink`` and optionally advance one checkpoint.

        Both happen in ONE transaction — the delivery guarantee of SPEC §7: after a crash either
        the keys and the checkpoint are both on disk, or neither is and the batch is re-read and
        re-sent (and then stopped by the dedupe record if Brevo got it). A key already present
        gets its ``delivered_at`` refreshed.
        """
        moves = [*([checkpoint] if checkpoint else []), *checkpoints]
        await self._run(_commit_delivery, list(keys), sink, moves, _now(now))

    async def expire_dedupe(self, older_than: float) -> int:
        """Delete dedupe records delivered before unix time ``older_than``; returns the count."""
        total = 0
        while True:
            # One slice per worker call so spool writes can interleave with a large purge.
            deleted = await self._run(_expire_dedupe_slice, older_than, EXPIRE_SLICE)
            total += deleted
            if deleted < EXPIRE_SLICE:
                return total

    # ------------------------------------------------------------------ dead letters

    async def add_dead_letters(
        self,
        letters: Sequence[DeadLetter],
        checkpoint: Checkpoint | None = None,
        *,
        checkpoints: Sequence[Checkpoint] = (),
        now: float | None = None,
    ) -> list[int]:
        """Store dead letters (and optionally advance a checkpoint) in one transaction.

        Dead-lettering counts as "handled" for checkpoint purposes (SPEC §7), so a batch whose
        items were partly delivered and partly rejected can move its checkpoint atomically with
        the rejected items being recorded.
        """
        rows = [(d.source, d.sink, _encode_item(d.item), d.reason) for d in letters]
        moves = [*([checkpoint] if checkpoint else []), *checkpoints]
        if not rows and not moves:
            return []
        return await self._run(_add_dead_letters, rows, moves, _now(now))

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
            await self._run(_mark_replayed, list(ids), _now(now))

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

    # ------------------------------------------------------------------ profiles

    async def get_profile(self, user_id: str) -> dict | None:
        return await self._run(_get_profile, user_id)

    async def put_profiles(self, profiles: Mapping[str, dict], *, now: float | None = None) -> None:
        """Upsert whole profiles (replacing the stored dict per user) in one transaction."""
        rows = [(user_id, orjson.dumps(props)) for user_id, props in profiles.items()]
        if rows:
            await self._run(_put_profiles, rows, _now(now))

    async def delete_user(self, user_id: str) -> None:
        """GDPR/CCPA forget: drop the user's profile and cohort snapshot rows.

        Dead letters and spooled request bodies are opaque blobs and are not searched here.
        """
        await self._run(_delete_user, user_id)

    # ------------------------------------------------------------------ cohort snapshots

    async def cohort_members(self, cohort_id: str, list_id: int) -> set[str]:
        """Membership recorded by the last ``replace_cohort_members`` (empty if never synced)."""
        return await self._run(_cohort_members, cohort_id, list_id)

    async def replace_cohort_members(
        self, cohort_id: str, list_id: int, members: Iterable[str], now: float | None = None
    ) -> None:
        """Make the stored snapshot equal ``members`` and stamp the sync, in one transaction.

        Applied as a diff, so re-syncing a large, mostly unchanged cohort writes little.
        """
        await self._run(_replace_cohort_members, cohort_id, list_id, list(members), _now(now))

    # ------------------------------------------------------------------ ingest spool

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

    # ------------------------------------------------------------------ worker plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the worker thread and await its result."""
        if self._closed:
            raise StateError(f"state store {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call_on_worker, fn, args)

    def _call_on_worker(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._conn
        if conn is None:
            raise StateError(f"state store {self.path} is closed")
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            name = getattr(fn, "__name__", "operation").lstrip("_")
            raise StateError(f"state {name} failed on {self.path}: {exc}") from exc

    def _open_on_worker(self) -> tuple[int, int, bool]:
        created = _prepare_file(self.path)
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state file {self.path}: {exc}") from exc
        try:
            found = _check_file(conn, self.path)
            _configure(conn, self.path)
            try:
                found, version = schema.migrate(conn)
            except sqlite3.Error as exc:
                raise StateError(
                    f"migrating state file {self.path} from schema version {found} failed: {exc}; "
                    f"each migration is one transaction, so the file stays at the last version that "
                    f"completed"
                ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return found, version, created

    def _unseen_on_lookup_thread(self, keys: list[str]) -> set[str]:
        try:
            if self._lookup_conn is None:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                conn.execute("PRAGMA query_only = ON")
                self._lookup_conn = conn
            return _unseen(self._lookup_conn, keys)
        except sqlite3.Error as exc:
            raise StateError(f"state unseen failed on {self.path}: {exc}") from exc

    def _close_lookups(self) -> None:
        conn, self._lookup_conn = self._lookup_conn, None
        if conn is not None:
            conn.close()

    def _discard_on_worker(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _close_on_worker(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            # Fold the WAL back into the main file so a stopped daemon leaves one
            # self-contained file (backups and copies of state.db alone are then complete).
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.warning("state.wal_checkpoint.busy", path=str(self.path))
        except sqlite3.Error as exc:
            # Not fatal: committed data is safe in the WAL and is checkpointed on next open.
            log.warning("state.wal_checkpoint.failed", path=str(self.path), error=str(exc))
        finally:
            conn.close()


# ---------------------------------------------------------------------- opening


def _prepare_file(path: Path) -> bool:
    """Create the parent directory (0700) and an empty file (0600) if missing; True if created."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Creating the file ourselves fixes its mode; SQLite gives -wal/-shm the same mode.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StateError(f"cannot create state file {path}: {exc}") from exc
    os.close(fd)
    return True


UNTOUCHED = (
    "the file was left untouched; restore it from a backup, move it aside, or point state.path elsewhere"
)


def _check_file(conn: sqlite3.Connection, path: Path) -> int:
    """Refuse anything but a healthy amplitude-brevo state file this build understands.

    Runs before any pragma or statement that could write, so a refused file keeps its bytes.
    Returns the file's schema version.
    """
    try:
        version = schema.user_version(conn)
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    except sqlite3.DatabaseError as exc:
        raise StateError(f"state file {path} is not a usable SQLite database ({exc}); {UNTOUCHED}") from exc

    foreign = (
        app_id not in (0, schema.APPLICATION_ID)
        or (version > 0 and app_id != schema.APPLICATION_ID)
        or (version == 0 and has_tables)
    )
    if foreign:
        raise StateError(
            f"state file {path} is a SQLite database but not an amplitude-brevo state file "
            f"(application_id {app_id:#x}, user_version {version}); {UNTOUCHED}"
        )
    latest = schema.latest_version()
    if version > latest:
        raise StateError(
            f"state file {path} has schema version {version}, this build supports up to {latest}; "
            f"upgrade amplitude-brevo or point state.path elsewhere (the file was left untouched)"
        )
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        raise StateError(f"state file {path} is corrupt ({exc}); {UNTOUCHED}") from exc
    if problems != ["ok"]:
        raise StateError(f"state file {path} is corrupt ({'; '.join(problems)}); {UNTOUCHED}")
    return version


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StateError(
            f"cannot enable WAL on state file {path} (journal_mode stays {mode!r}); "
            f"put state.path on a local filesystem"
        )
    # FULL: fsync the WAL on every COMMIT. NORMAL would be faster but may lose the last
    # transactions on power loss — unacceptable for the spool (a 200 was already sent) and for
    # the dedupe record (a lost record means a duplicate in Brevo).
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


# ---------------------------------------------------------------------- worker-side operations
# Each runs on the worker thread with the store's connection (autocommit mode). Writes go through
# _write_tx so that every public call is exactly one transaction.


@contextmanager
def _write_tx(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: with another process on the file (the CLI's
    # `dlq` or `forget`), a deferred transaction could fail on lock upgrade mid-way instead of
    # waiting out busy_timeout at BEGIN.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # Some errors (disk full, I/O) make SQLite roll back by itself; don't roll back twice.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _chunks(items: Sequence[T], size: int = MAX_IN_PARAMS) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _encode_item(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    return orjson.dumps(item)


def _get_checkpoint(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def _upsert_checkpoint(conn: sqlite3.Connection, name: str, value: str, now: float) -> None:
    conn.execute(
        "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (name, value, now),
    )


def _set_checkpoint(conn: sqlite3.Connection, name: str, value: str, now: float) -> None:
    with _write_tx(conn):
        _upsert_checkpoint(conn, name, value, now)


def _checkpoints(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT name, value FROM checkpoints ORDER BY name"))


def _has_json_each() -> bool:
    try:
        with closing(sqlite3.connect(":memory:")) as probe:
            probe.execute("SELECT count(*) FROM json_each('[]')").fetchone()
    except sqlite3.Error:
        return False
    return True


# JSON1 is built into SQLite ≥ 3.38 and compiled into most older distribution builds; without it the
# per-key statements below are used.
_JSON_EACH = _has_json_each()


def _unseen(conn: sqlite3.Connection, keys: list[str]) -> set[str]:
    # One statement over a JSON array of the keys rather than `IN (?, …)` slices: the worker thread then
    # needs the GIL once per call, not once per key or parameter, which matters while the event loop thread
    # is busy decoding (each hand-off can wait out the 5 ms switch interval).
    wanted = set(keys)
    if not _JSON_EACH:
        seen: set[str] = set()
        for chunk in _chunks(list(wanted)):
            rows = conn.execute(f"SELECT key FROM dedupe WHERE key IN ({_marks(len(chunk))})", chunk)
            seen.update(row[0] for row in rows)
        return wanted - seen
    rows = conn.execute(
        "SELECT key FROM dedupe WHERE key IN (SELECT value FROM json_each(?))", (_json_array(wanted),)
    ).fetchall()
    return wanted.difference(row[0] for row in rows)


def _json_array(keys: Iterable[str]) -> str:
    # Text, not bytes: SQLite ≥ 3.45 would read a BLOB argument as JSONB.
    return orjson.dumps(list(keys)).decode()


def _commit_delivery(
    conn: sqlite3.Connection, keys: list[str], sink: str, checkpoints: list[Checkpoint], now: float
) -> None:
    # One transaction for keys and checkpoint. Keys without the checkpoint only cause a harmless
    # re-read after a crash (the keys stop the re-send). A checkpoint without its keys would skip
    # the re-read, yet leave nothing to stop the same event arriving again by another path
    # (ingest and export) — a duplicate in Brevo. Both or neither.
    if not checkpoints and keys and _JSON_EACH:
        # Keys alone: ONE statement, its own (autocommit) transaction, as atomic and durable as
        # BEGIN … COMMIT. Every statement makes this thread give up and retake the GIL, and retaking it
        # can wait out the switch interval (or a long C call) while the event loop thread is busy decoding,
        # so three statements fewer is most of a commit's latency under load.
        conn.execute(_INSERT_KEYS, (sink, now, _json_array(keys)))
        return
    with _write_tx(conn):
        if keys and _JSON_EACH:
            conn.execute(_INSERT_KEYS, (sink, now, _json_array(keys)))
        elif keys:
            conn.executemany(
                "INSERT INTO dedupe (key, sink, delivered_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET sink = excluded.sink, delivered_at = excluded.delivered_at",
                [(key, sink, now) for key in keys],
            )
        for name, value in checkpoints:
            _upsert_checkpoint(conn, name, value, now)


# All keys in one statement (see _unseen); `WHERE true` lets SQLite parse the upsert after a SELECT.
_INSERT_KEYS = (
    "INSERT INTO dedupe (key, sink, delivered_at) SELECT value, ?, ? FROM json_each(?) WHERE true "
    "ON CONFLICT (key) DO UPDATE SET sink = excluded.sink, delivered_at = excluded.delivered_at"
)


def _expire_dedupe_slice(conn: sqlite3.Connection, older_than: float, limit: int) -> int:
    with _write_tx(conn):
        cur = conn.execute(
            "DELETE FROM dedupe WHERE key IN "
            "(SELECT key FROM dedupe WHERE delivered_at < ? ORDER BY delivered_at LIMIT ?)",
            (older_than, limit),
        )
        return cur.rowcount


def _add_dead_letters(
    conn: sqlite3.Connection,
    rows: list[tuple[str, str, bytes, str]],
    checkpoints: list[Checkpoint],
    now: float,
) -> list[int]:
    ids: list[int] = []
    with _write_tx(conn):
        for source, sink, item, reason in rows:
            cur = conn.execute(
                "INSERT INTO dead_letters (source, sink, item, reason, created_at) VALUES (?, ?, ?, ?, ?)",
                (source, sink, item, reason, now),
            )
            ids.append(int(cur.lastrowid))  # type: ignore[arg-type]
        for name, value in checkpoints:
            _upsert_checkpoint(conn, name, value, now)
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
    with _write_tx(conn):
        for chunk in _chunks(ids):
            conn.execute(
                f"UPDATE dead_letters SET replayed_at = ? WHERE id IN ({_marks(len(chunk))})", (now, *chunk)
            )


def _purge_dead_letters(conn: sqlite3.Connection, ids: list[int] | None, source: str | None) -> int:
    source_clause = "" if source is None else " AND source = ?"
    source_params: tuple[str, ...] = () if source is None else (source,)
    deleted = 0
    with _write_tx(conn):
        if ids is None:
            deleted = conn.execute(f"DELETE FROM dead_letters WHERE 1{source_clause}", source_params).rowcount
        else:
            for chunk in _chunks(ids):
                deleted += conn.execute(
                    f"DELETE FROM dead_letters WHERE id IN ({_marks(len(chunk))}){source_clause}",
                    (*chunk, *source_params),
                ).rowcount
    return deleted


def _dead_letter_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT source, count(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY source ORDER BY source"
        )
    )


def _get_profile(conn: sqlite3.Connection, user_id: str) -> dict | None:
    row = conn.execute("SELECT properties FROM profiles WHERE user_id = ?", (user_id,)).fetchone()
    return None if row is None else orjson.loads(row[0])


def _put_profiles(conn: sqlite3.Connection, rows: list[tuple[str, bytes]], now: float) -> None:
    with _write_tx(conn):
        conn.executemany(
            "INSERT INTO profiles (user_id, properties, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET properties = excluded.properties, "
            "updated_at = excluded.updated_at",
            ((user_id, props, now) for user_id, props in rows),
        )


def _delete_user(conn: sqlite3.Connection, user_id: str) -> None:
    with _write_tx(conn):
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


def _cohort_members(conn: sqlite3.Connection, cohort_id: str, list_id: int) -> set[str]:
    rows = conn.execute(
        "SELECT member FROM cohort_members WHERE cohort_id = ? AND list_id = ?", (cohort_id, list_id)
    )
    return {row[0] for row in rows}


def _replace_cohort_members(
    conn: sqlite3.Connection, cohort_id: str, list_id: int, members: list[str], now: float
) -> None:
    new = set(members)
    with _write_tx(conn):
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


def _spool_append(conn: sqlite3.Connection, kind: str, bodies: list[bytes], now: float) -> list[int]:
    ids: list[int] = []
    # The COMMIT at the end of this block is the durability point (WAL fsync, synchronous=FULL).
    with _write_tx(conn):
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
    with _write_tx(conn):
        return conn.execute("DELETE FROM ingest_spool WHERE id <= ?", (id_,)).rowcount


def _spool_depth(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM ingest_spool").fetchone()[0])
