"""StateStore: the daemon's durable state in one SQLite file, served from one worker thread.

Everything that must survive ``kill -9`` lives here: export/spool checkpoints, the dedupe record
that makes Brevo delivery effectively-once, dead letters, per-user profiles, cohort snapshots and
the ingest spool (SPEC §6, §7).

Layout. Each table's SQL and public coroutines live in a module of their own (``checkpoints``,
``dedupe``, ``dead_letters``, ``profiles``, ``cohorts``, ``spool``), as mixins this class composes;
this module keeps what they share: the file, the one writer connection and its thread, the lookup
connection and its thread, and the checks at open and close.

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

One writer. ``open(path)`` takes an exclusive ``flock`` on ``<path>.lock`` (``state/lock.py``) and holds
it until ``close()``; a second process opening the same file gets :class:`StateLocked` naming the holder's
pid, before the state file is even read. ``open(path, lock=False)`` takes no lock: the CLI's ``status`` and
``dlq`` commands read (and purge) while the daemon runs, SQLite serializing their transactions. Such a
store never migrates the schema behind a running daemon: if the file needs migrating it takes the lock
for the migration only, or refuses.

Errors. Opening a file that is not a usable SQLite database, a foreign SQLite database, one
with a newer schema, or one whose checks at open fail (bounded checks, whatever the file's size:
see ``_check_structure``) raises :class:`StateError` and leaves the file untouched; nothing is ever
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog

from amplitude_brevo.state import schema
from amplitude_brevo.state.base import StateError, StateLocked
from amplitude_brevo.state.checkpoints import Checkpoints
from amplitude_brevo.state.cohorts import CohortSnapshots
from amplitude_brevo.state.contacts import ContactsState
from amplitude_brevo.state.dead_letters import DeadLetter, DeadLetters, StoredDeadLetter
from amplitude_brevo.state.dedupe import DedupeRecord
from amplitude_brevo.state.lock import WriterLock
from amplitude_brevo.state.profiles import Profiles
from amplitude_brevo.state.spool import IngestSpool
from amplitude_brevo.state.usage import BudgetUsage

__all__ = ["DeadLetter", "StateError", "StateLocked", "StateStore", "StoredDeadLetter"]

log = structlog.get_logger("amplitude_brevo.state")

T = TypeVar("T")

BUSY_TIMEOUT_S = 10.0


class StateStore(
    Checkpoints, DedupeRecord, DeadLetters, Profiles, ContactsState, CohortSnapshots, IngestSpool, BudgetUsage
):
    """Async facade over the state file; create with :meth:`open`, finish with :meth:`close`.

    The public operations come from one mixin per table (see ``state/base.py``); this class owns the
    file, the writer thread with its one connection, the lookup thread, and the checks at open.

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
        self._writer_lock: WriterLock | None = None  # held from open to close when opened with lock=True
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r}, schema_version={self._schema_version})"

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, lock: bool = True) -> StateStore:
        """Open (creating or migrating as needed) the state file at ``path``.

        A missing parent directory is created with mode 0700 and a new file with mode 0600.
        Raises :class:`StateError` if the file is not a usable amplitude-brevo state file; in
        that case the file is left exactly as it was.

        ``lock=True`` (the daemon, and anything that must be the only writer) takes the file's writer
        lock until :meth:`close`, or raises :class:`StateLocked` naming the process that has it.
        ``lock=False`` (read-mostly commands that run beside the daemon) takes none.
        """
        store = cls(Path(os.fspath(path)), ThreadPoolExecutor(1, thread_name_prefix="amplitude-brevo-state"))
        loop = asyncio.get_running_loop()
        try:
            found, version, created = await loop.run_in_executor(store._executor, store._open_on_worker, lock)
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
        log.info("state.opened", path=str(store.path), schema_version=version, created=created, locked=lock)
        return store

    async def close(self) -> None:
        """Close the store: as the writer, fold the WAL into the main file and release the lock; stop the threads.

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

    def _open_on_worker(self, lock: bool) -> tuple[int, int, bool]:
        _prepare_directory(self.path)
        # The lock comes before the first byte of the state file is read or created: a refused
        # process leaves the file exactly as the holder has it.
        held = WriterLock.acquire(self.path) if lock else None
        try:
            created = _prepare_file(self.path)
            try:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            except sqlite3.Error as exc:
                raise StateError(f"cannot open state file {self.path}: {exc}") from exc
            try:
                found = _check_file(conn, self.path)
                _configure(conn, self.path)
                if held is None and found < schema.latest_version():
                    # A migration is a writer's job: never change the schema under a running daemon.
                    with _migration_lock(self.path, found):
                        found, version = _migrate(conn, self.path, found)
                else:
                    found, version = _migrate(conn, self.path, found)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            if held is not None:
                held.release()
            raise
        self._conn = conn
        self._writer_lock = held
        return found, version, created

    async def _run_lookup(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the read-only lookup connection, on its own thread."""
        if self._closed:
            raise StateError(f"state store {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._lookups, self._call_on_lookup_thread, fn, args)

    def _call_on_lookup_thread(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            if self._lookup_conn is None:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                conn.execute("PRAGMA query_only = ON")
                self._lookup_conn = conn
            return fn(self._lookup_conn, *args)
        except sqlite3.Error as exc:
            name = getattr(fn, "__name__", "lookup").lstrip("_")
            raise StateError(f"state {name} failed on {self.path}: {exc}") from exc

    async def _run_apart(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a read-only connection of its own, in a thread of its own."""
        if self._closed:
            raise StateError(f"state store {self.path} is closed")
        return await asyncio.to_thread(self._call_apart, fn, args)

    def _call_apart(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)) as conn:
                conn.execute("PRAGMA query_only = ON")
                return fn(conn, *args)
        except sqlite3.Error as exc:
            name = getattr(fn, "__name__", "read").lstrip("_")
            raise StateError(f"state {name} failed on {self.path}: {exc}") from exc

    def _close_lookups(self) -> None:
        conn, self._lookup_conn = self._lookup_conn, None
        if conn is not None:
            conn.close()

    def _discard_on_worker(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._release_lock()

    def _release_lock(self) -> None:
        held, self._writer_lock = self._writer_lock, None
        if held is not None:
            held.release()

    def _close_on_worker(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._writer_lock is None:
            # Not the writer: the daemon may be running, and a TRUNCATE checkpoint would wait for it
            # (up to busy_timeout). SQLite checkpoints by itself when the last connection closes.
            conn.close()
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
            # Only after the connection is closed: the next writer finds the WAL folded in.
            self._release_lock()


# ---------------------------------------------------------------------- opening


def _prepare_directory(path: Path) -> None:
    """Create the parent directory (0700) if missing: the lock file and the state file live in it."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create the directory of state file {path}: {exc}") from exc


def _prepare_file(path: Path) -> bool:
    """Create an empty state file (0600) if missing; True if created."""
    try:
        # Creating the file ourselves fixes its mode; SQLite gives -wal/-shm the same mode.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StateError(f"cannot create state file {path}: {exc}") from exc
    os.close(fd)
    return True


@contextmanager
def _migration_lock(path: Path, found: int) -> Iterator[None]:
    """The writer lock for the length of a migration by a store opened with ``lock=False``."""
    why = f"needs migrating from schema version {found} to {schema.latest_version()}, which only its writer may do"
    held = WriterLock.acquire(path, why=why)
    try:
        yield
    finally:
        held.release()


def _migrate(conn: sqlite3.Connection, path: Path, found: int) -> tuple[int, int]:
    try:
        return schema.migrate(conn)
    except sqlite3.Error as exc:
        raise StateError(
            f"migrating state file {path} from schema version {found} failed: {exc}; "
            f"each migration is one transaction, so the file stays at the last version that "
            f"completed"
        ) from exc


UNTOUCHED = (
    "the file was left untouched; restore it from a backup, move it aside, or point state.path elsewhere"
)


def _check_file(conn: sqlite3.Connection, path: Path) -> int:
    """Refuse anything but a healthy amplitude-brevo state file this build understands.

    Runs before any pragma or statement that could write, so a refused file keeps its bytes.
    Returns the file's schema version. Its cost does not grow with the file (see :func:`_check_structure`).
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
    if version > 0:
        _check_structure(conn, path, version)
    return version


# Tables that stay a handful of rows whatever the traffic: checked in full at every open.
SMALL_TABLES = ("meta", "checkpoints", "cohort_syncs")


def _check_structure(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Checks whose cost does not grow with the file, so start-up stays fast with a large state file.

    A full ``PRAGMA quick_check`` reads every page: ~1 s for a 1 GB file in the page cache, ~10 s from
    disk (bench/state_startup.py). Instead, at open:

    - the schema b-tree (page 1 and its overflow), and the small tables with their indexes, get a full
      ``quick_check`` (SQLite ≥ 3.33 takes a table name: the check is limited to that table's b-trees);
    - every table and index the file's schema version must have is present;
    - every b-tree is entered at both ends (its first and last entry), which reads its root page and the
      pages down its outer edges: a handful of pages per b-tree, O(log size).

    What this cannot see — a damaged page inside a large table — SQLite reports as SQLITE_CORRUPT when that
    page is next read, and the operation fails with :class:`StateError`; it never returns wrong data.
    A full check is `PRAGMA quick_check` on a copy (``amplitude-brevo backup``) or on the stopped file.
    """
    try:
        # Older SQLite reads a table name as "no error limit" and would check the whole file.
        limited = () if sqlite3.sqlite_version_info < (3, 33, 0) else ("sqlite_master", *SMALL_TABLES)
        problems = [
            row[0] for table in limited for row in conn.execute(f'PRAGMA quick_check("{table}")') if row[0] != "ok"
        ]
        if problems:
            raise StateError(f"state file {path} is corrupt ({'; '.join(problems[:5])}); {UNTOUCHED}")
        objects = conn.execute("SELECT type, name, tbl_name, sql, rootpage FROM sqlite_master").fetchall()
        missing = sorted(_expected_objects(version) - {row[1] for row in objects})
        if missing:
            raise StateError(
                f"state file {path} is incomplete: schema version {version} lacks {', '.join(missing)}; "
                f"{UNTOUCHED}"
            )
        for probe in _edge_probes(conn, objects):
            conn.execute(probe).fetchall()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"state file {path} is corrupt ({exc}); {UNTOUCHED}") from exc


def _expected_objects(version: int) -> set[str]:
    """Names of the tables and indexes that migrations 1..version create (replayed on an in-memory database)."""
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as memory:
        for migration in schema.MIGRATIONS[:version]:
            for statement in migration:
                memory.execute(statement)
        return {row[0] for row in memory.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}


def _edge_probes(conn: sqlite3.Connection, objects: list[tuple[str, str, str, str | None, int]]) -> list[str]:
    """For each table and index: two queries that read its first and its last entry through that b-tree."""
    probes = []
    for kind, name, table, sql, rootpage in objects:
        if not rootpage:
            continue  # views, triggers, virtual tables: no b-tree of their own
        if kind == "table":
            if sql is not None and "WITHOUT ROWID" in " ".join(sql.upper().split()):
                key = next(col for _, col, _, _, _, pk in conn.execute(f'PRAGMA table_info("{name}")') if pk == 1)
                column = f'"{key}"'
            else:
                column = "rowid"
            source = f'"{name}" NOT INDEXED'
        elif kind == "index":
            first = conn.execute(f'PRAGMA index_info("{name}")').fetchone()
            if first is None or first[2] is None:
                continue  # an expression index: none in our schema
            column = f'"{first[2]}"'
            source = f'"{table}" INDEXED BY "{name}"'
        else:
            continue
        # Ordered by the b-tree's own first column with LIMIT 1: SQLite walks in from one end and stops.
        probes += [f"SELECT {column} FROM {source} ORDER BY {column} {order} LIMIT 1" for order in ("ASC", "DESC")]
    return probes


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
