"""What the per-table state modules share: the errors, the worker hand-off contract, one-transaction writes.

Each table module (``checkpoints``, ``dedupe``, ``dead_letters``, ``profiles``, ``cohorts``, ``spool``) holds
two halves: plain functions ``f(conn, ...)`` that run on the store's worker thread with its one connection,
and a mixin of public coroutines that hand those functions to the thread through :meth:`StoreBase._run`.
``StateStore`` (``store.py``) composes the mixins and owns the thread, the connection and the lifecycle, so
every table still shares ONE connection and ONE writer thread: a commit that touches several tables
(``commit_delivery`` writes keys and checkpoints) stays one transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")

# SQLite's historical bound on host parameters is 999; stay well under it.
MAX_IN_PARAMS = 500


def _has_json_each() -> bool:
    try:
        with closing(sqlite3.connect(":memory:")) as probe:
            probe.execute("SELECT count(*) FROM json_each('[]')").fetchone()
    except sqlite3.Error:
        return False
    return True


# JSON1 is built into SQLite ≥ 3.38 and compiled into most older distribution builds. With it, a list of keys
# goes to SQLite as one JSON array (`json_each(?)`, see `json_array`): one statement text however long the
# list, where `IN (?, …)` compiles (and caches) a statement per length. Without it, the tables fall back.
JSON_EACH = _has_json_each()


def json_array(keys: Iterable[str]) -> str:
    """Keys as the JSON array `json_each(?)` reads. Text, not bytes: SQLite ≥ 3.45 reads a BLOB as JSONB."""
    return orjson.dumps(list(keys)).decode()


class StateError(Exception):
    """The state file cannot be used (corrupt, foreign, too new) or a state operation failed."""


class StateLocked(StateError):
    """Another process holds the state file's writer lock (one writer per state file, SPEC §4)."""

    def __init__(self, message: str, *, path: Path, pid: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid


class StoreBase:
    """What a table mixin may use of :class:`~amplitude_brevo.state.store.StateStore`.

    ``_run(fn, *args)`` runs ``fn(conn, *args)`` on the writer thread (serialized, call order);
    ``_run_lookup(fn, *args)`` runs it on the read-only lookup connection and its own thread;
    ``_run_apart(fn, *args)`` on a read-only connection and thread of its own, opened for that one call —
    for long reads (counting a large table) that must hold up neither writes nor dedupe lookups.
    """

    path: Path
    _closed: bool

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    async def _run_lookup(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    async def _run_apart(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError


@contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction; every public write is exactly one of these (or one autocommit statement)."""
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


def chunks(items: Sequence[T], size: int = MAX_IN_PARAMS) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(n: int) -> str:
    return ",".join("?" * n)


def now_or(now: float | None) -> float:
    return time.time() if now is None else now
