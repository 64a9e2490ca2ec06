"""Tests for StateStore against real SQLite files: schema, durability pragmas, atomicity, refusals."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
from contextlib import closing
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from amplitude_brevo.state import SCHEMA_VERSION, DeadLetter, StateError, StateStore, schema
from amplitude_brevo.state import dedupe as dedupe_module
from amplitude_brevo.state import store as store_module


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def st(state: StateStore, db_path: Path) -> StateStore:
    """The root conftest's `state`: a store open on db_path, closed after the test."""
    assert state.path == db_path
    return state


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection for poking at the file behind the store's back."""
    return sqlite3.connect(path, isolation_level=None)


# Plain-function file helpers: the tests are async, but these small local reads are not loop work.


def sidecars(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def size_or_zero(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# ---------------------------------------------------------------------- opening, schema, pragmas


async def test_new_file_gets_schema_wal_and_private_modes(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "state.db"
    async with await StateStore.open(path) as st:
        assert st.path == path
        assert st.schema_version == SCHEMA_VERSION == 2
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
        # SQLite gives the WAL the main file's mode.
        await st.set_checkpoint("x", "1")
        assert mode(Path(f"{path}-wal")) == 0o600

        pragmas = await st._run(
            lambda conn: {
                name: conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        )
        assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 10000}

    with raw(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {
            "checkpoints",
            "dedupe",
            "dead_letters",
            "profiles",
            "cohort_members",
            "cohort_syncs",
            "ingest_spool",
            "meta",
        } <= tables
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta["created_by"].startswith("amplitude-brevo ")
    conn.close()
    # close() checkpointed the WAL with TRUNCATE.
    assert size_or_zero(Path(f"{path}-wal")) == 0


async def test_reopen_keeps_data(db_path: Path) -> None:
    async with await StateStore.open(db_path) as st:
        await st.set_checkpoint("export", "2026-11-01T10")
        await st.commit_delivery(["a", "b"], sink="brevo_events")
        [dl_id] = await st.add_dead_letters([DeadLetter("export", "brevo_events", {"x": 1}, "400 bad")])
        await st.put_profiles({"u1": {"plan": "pro"}})
        await st.replace_cohort_members("c1", 7, ["u1", "u2"])
        await st.spool_append("httpapi", [b"{}"])

    async with await StateStore.open(db_path) as st:
        assert st.schema_version == SCHEMA_VERSION
        assert await st.checkpoints() == {"export": "2026-11-01T10"}
        assert await st.unseen(["a", "b", "c"]) == {"c"}
        stored = await st.get_dead_letter(dl_id)
        assert stored is not None and orjson.loads(stored.item) == {"x": 1}
        assert await st.get_profile("u1") == {"plan": "pro"}
        assert await st.cohort_members("c1", 7) == {"u1", "u2"}
        assert await st.spool_depth() == 1


async def test_migrates_an_empty_v0_file(db_path: Path) -> None:
    write_bytes(db_path, b"")  # zero bytes: SQLite's empty database, user_version 0
    async with await StateStore.open(db_path) as st:
        assert st.schema_version == SCHEMA_VERSION
        await st.set_checkpoint("a", "b")
        assert await st.get_checkpoint("a") == "b"


async def test_migrates_a_v0_database_without_tables(db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("DROP TABLE t")
    conn.close()
    async with await StateStore.open(db_path) as st:
        assert st.schema_version == SCHEMA_VERSION


async def test_migration_to_a_later_version_keeps_data(db_path: Path, monkeypatch) -> None:
    async with await StateStore.open(db_path) as st:
        await st.set_checkpoint("export", "h1")
    monkeypatch.setattr(
        schema, "MIGRATIONS", [*schema.MIGRATIONS, ["ALTER TABLE checkpoints ADD COLUMN note TEXT"]]
    )
    async with await StateStore.open(db_path) as st:
        assert st.schema_version == SCHEMA_VERSION + 1
        assert await st.get_checkpoint("export") == "h1"
        cols = await st._run(lambda c: [r[1] for r in c.execute("PRAGMA table_info(checkpoints)")])
        assert "note" in cols


async def test_failed_migration_rolls_back_to_previous_version(db_path: Path, monkeypatch) -> None:
    async with await StateStore.open(db_path) as st:
        await st.set_checkpoint("export", "h1")
    monkeypatch.setattr(
        schema, "MIGRATIONS", [*schema.MIGRATIONS, ["CREATE TABLE half_done (x)", "THIS IS NOT SQL"]]
    )
    with pytest.raises(StateError, match="from schema version 2 failed"):
        await StateStore.open(db_path)
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0
        assert conn.execute("SELECT value FROM checkpoints").fetchone()[0] == "h1"
    conn.close()


async def test_garbage_file_is_refused_and_left_untouched(db_path: Path) -> None:
    garbage = b"this is not an SQLite database\n" * 200
    write_bytes(db_path, garbage)
    with pytest.raises(StateError) as info:
        await StateStore.open(db_path)
    message = str(info.value)
    assert str(db_path) in message
    assert "untouched" in message
    assert read_bytes(db_path) == garbage
    assert sidecars(db_path) == ["state.db.lock"], "no -wal or -shm; the writer lock file stays (never deleted)"
    with pytest.raises(StateError, match="not a usable SQLite database"):
        await StateStore.open(db_path)  # the lock of the failed open was released


async def test_corrupt_pages_are_refused_and_left_untouched(db_path: Path) -> None:
    async with await StateStore.open(db_path) as st:
        await st.add_dead_letters(
            [DeadLetter("export", "brevo_events", b"x" * 500, f"r{i}") for i in range(400)]
        )
    data = bytearray(read_bytes(db_path))
    page_size = int.from_bytes(data[16:18], "big")
    assert len(data) > 4 * page_size
    # Keep the header page intact, scribble over the b-tree pages after it.
    data[page_size : 4 * page_size] = b"\xa5" * (3 * page_size)
    write_bytes(db_path, bytes(data))

    with pytest.raises(StateError) as info:
        await StateStore.open(db_path)
    assert str(db_path) in str(info.value)
    assert "untouched" in str(info.value)
    assert read_bytes(db_path) == bytes(data)


async def test_a_corrupt_root_page_of_any_table_or_index_is_refused(tmp_path: Path) -> None:
    """The open-time check enters every b-tree; scribbling over any one root page is caught."""
    pristine = tmp_path / "pristine.db"
    async with await StateStore.open(pristine) as st:
        await st.commit_delivery([f"k{i}" for i in range(2000)], sink="brevo_events", checkpoint=("export", "h1"))
        await st.add_dead_letters([DeadLetter("export", "brevo_events", b"x" * 300, "r")] * 50)
        await st.put_profiles({"u1": {"plan": "pro"}})
        await st.replace_cohort_members("c1", 7, ["u1", "u2"])
        await st.spool_append("httpapi", [b"{}"])
    with raw(pristine) as conn:
        roots = conn.execute("SELECT name, rootpage FROM sqlite_master WHERE rootpage > 1").fetchall()
    conn.close()
    assert len(roots) >= 16, roots
    data = read_bytes(pristine)
    page_size = int.from_bytes(data[16:18], "big")

    for name, root in roots:
        db_path = tmp_path / f"{name}.db"
        damaged = bytearray(data)
        damaged[(root - 1) * page_size : root * page_size] = b"\xa5" * page_size
        write_bytes(db_path, bytes(damaged))
        with pytest.raises(StateError, match="is corrupt") as info:
            await StateStore.open(db_path)
        assert "untouched" in str(info.value), name
        assert read_bytes(db_path) == bytes(damaged), name


async def test_a_state_file_missing_a_table_is_refused(db_path: Path) -> None:
    async with await StateStore.open(db_path) as st:
        await st.spool_append("httpapi", [b"{}"])
    with raw(db_path) as conn:
        conn.execute("DROP TABLE ingest_spool")
    conn.close()
    before = read_bytes(db_path)
    with pytest.raises(StateError) as info:
        await StateStore.open(db_path)
    assert str(info.value) == (
        f"state file {db_path} is incomplete: schema version 2 lacks ingest_spool; "
        f"{store_module.UNTOUCHED}"
    )
    assert read_bytes(db_path) == before


async def test_the_open_time_check_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Counted in SQLite VM steps (deterministic, unlike time): a 40x bigger file costs the same to check."""

    def check_steps(path: Path) -> int:
        counted = [0]

        def tick() -> int:
            counted[0] += 1
            return 0

        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.set_progress_handler(tick, 10)
            assert store_module._check_file(conn, path) == SCHEMA_VERSION
        return counted[0]

    small, large = tmp_path / "small.db", tmp_path / "large.db"
    for path, scale in ((small, 1), (large, 40)):
        async with await StateStore.open(path) as st:
            await st.commit_delivery([f"events:{i:033d}" for i in range(1000 * scale)], sink="brevo_events")
            await st.add_dead_letters([DeadLetter("export", "brevo_events", b"x" * 1000, "r")] * (50 * scale))
    assert large.stat().st_size > 20 * small.stat().st_size
    small_steps, large_steps = check_steps(small), check_steps(large)
    assert large_steps < 2 * small_steps, (small_steps, large_steps)


async def test_the_edge_probes_walk_each_btree_in_order(st: StateStore) -> None:
    def plans(conn: sqlite3.Connection) -> dict[str, list[str]]:
        objects = conn.execute("SELECT type, name, tbl_name, sql, rootpage FROM sqlite_master").fetchall()
        return {probe: _plan(conn, probe, ()) for probe in store_module._edge_probes(conn, objects)}

    probes = await st._run(plans)
    assert len(probes) == 2 * 22, "both ends of every table and index"
    for probe, plan in probes.items():
        assert len(plan) == 1 and "TEMP B-TREE" not in plan[0], (probe, plan)


async def test_newer_schema_is_refused(db_path: Path) -> None:
    async with await StateStore.open(db_path) as st:
        await st.set_checkpoint("export", "h1")
    with raw(db_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = read_bytes(db_path)

    with pytest.raises(StateError) as info:
        await StateStore.open(db_path)
    message = str(info.value)
    assert "schema version 99" in message
    assert f"supports up to {SCHEMA_VERSION}" in message
    assert "upgrade amplitude-brevo or point state.path elsewhere" in message
    assert read_bytes(db_path) == before


async def test_foreign_sqlite_database_is_refused(db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.close()
    before = read_bytes(db_path)
    with pytest.raises(StateError, match="not an amplitude-brevo state file"):
        await StateStore.open(db_path)
    assert read_bytes(db_path) == before


async def test_close_is_idempotent_and_later_calls_fail(db_path: Path) -> None:
    st = await StateStore.open(db_path)
    await asyncio.gather(st.close(), st.close())
    await st.close()
    assert st.closed
    with pytest.raises(StateError, match="closed"):
        await st.get_checkpoint("x")


async def test_operations_queued_before_close_complete(db_path: Path) -> None:
    st = await StateStore.open(db_path)
    write = asyncio.ensure_future(st.set_checkpoint("export", "h9"))
    await asyncio.sleep(0)  # let the write reach the worker queue
    await st.close()
    await write
    async with await StateStore.open(db_path) as st2:
        assert await st2.get_checkpoint("export") == "h9"


# ---------------------------------------------------------------------- threading


async def test_all_work_runs_on_one_worker_thread(st: StateStore) -> None:
    idents = {await st._run(lambda conn: threading.get_ident()) for _ in range(5)}
    assert len(idents) == 1
    assert idents != {threading.get_ident()}


async def test_slow_db_operation_does_not_block_event_loop(st: StateStore) -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    release = threading.Event()

    def slow(conn: sqlite3.Connection) -> bool:
        # A real statement that stays inside SQLite until the test releases it. The 5 s cap
        # only matters if the store regressed to running on the loop thread.
        conn.create_function("wait_for_release", 0, lambda: release.wait(5))
        loop.call_soon_threadsafe(started.set)
        return bool(conn.execute("SELECT wait_for_release()").fetchone()[0])

    slow_task = asyncio.ensure_future(st._run(slow))
    queued_read = asyncio.ensure_future(st.get_checkpoint("x"))
    await started.wait()

    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 5
    assert not slow_task.done()
    assert not queued_read.done()  # one worker: the read waits its turn behind the slow call

    release.set()
    assert await slow_task is True
    assert await queued_read is None


# ---------------------------------------------------------------------- checkpoints and dedupe


async def test_checkpoints(st: StateStore) -> None:
    assert await st.get_checkpoint("export") is None
    await st.set_checkpoint("export", "2026-11-01T10")
    await st.set_checkpoint("export", "2026-11-01T11")
    await st.set_checkpoint("spool", "42")
    assert await st.get_checkpoint("export") == "2026-11-01T11"
    assert await st.checkpoints() == {"export": "2026-11-01T11", "spool": "42"}


async def test_set_checkpoint_never_moves_back(st: StateStore) -> None:
    await st.set_checkpoint("export.next_hour", "20261101T10")
    await st.set_checkpoint("export.next_hour", "20261101T09")
    assert await st.get_checkpoint("export.next_hour") == "20261101T10", "moving back is a no-op"
    await st.set_checkpoint("export.next_hour", "20261101T10")
    await st.set_checkpoint("export.next_hour", "20261101T11")
    assert await st.get_checkpoint("export.next_hour") == "20261101T11", "moving forward works"
    stamps = await st._run(lambda conn: conn.execute("SELECT updated_at FROM checkpoints").fetchall())
    assert len(stamps) == 1


async def test_a_refused_move_back_keeps_updated_at_and_is_logged(st: StateStore) -> None:
    await st.commit_delivery([], sink="brevo_events", checkpoint=("spool", "00000000000000000042"), now=100.0)
    with capture_logs() as logs:
        await st.commit_delivery([], sink="brevo_events", checkpoint=("spool", "00000000000000000041"), now=200.0)
        await st.commit_delivery([], sink="brevo_events", checkpoint=("spool", "00000000000000000042"), now=300.0)
    row = await st._run(lambda conn: conn.execute("SELECT value, updated_at FROM checkpoints").fetchone())
    assert row == ("00000000000000000042", 100.0)
    refused = [e for e in logs if e["event"] == "state.checkpoint.not_moved_back"]
    assert len(refused) == 1, "moving back is logged; re-writing the same value is not"
    assert refused[0]["name"] == "spool"
    assert (refused[0]["kept"], refused[0]["refused"]) == ("00000000000000000042", "00000000000000000041")


async def test_commit_delivery_moving_a_checkpoint_back_still_records_the_keys(st: StateStore) -> None:
    await st.commit_delivery(["k1"], sink="brevo_events", checkpoints=[("export", "h5"), ("spool", "s5")])
    # One batch: keys, one checkpoint forward, one back — in one transaction.
    await st.commit_delivery(
        ["k2", "k3"], sink="brevo_events", checkpoint=("export", "h4"), checkpoints=[("spool", "s6")]
    )
    assert await st.unseen(["k1", "k2", "k3", "k4"]) == {"k4"}
    assert await st.checkpoints() == {"export": "h5", "spool": "s6"}


async def test_dead_letters_moving_a_checkpoint_back_still_store_the_letters(st: StateStore) -> None:
    await st.set_checkpoint("export", "h5")
    [letter] = await st.add_dead_letters(
        [DeadLetter("export", "brevo_events", b"x", "r")], ("export", "h3"), checkpoints=[("other", "a")]
    )
    assert await st.get_dead_letter(letter) is not None
    assert await st.checkpoints() == {"export": "h5", "other": "a"}
    await st.add_dead_letters([], checkpoints=[("export", "h6"), ("other", "0")])
    assert await st.checkpoints() == {"export": "h6", "other": "a"}


async def test_spool_positions_padded_to_20_digits_order_as_numbers(st: StateStore) -> None:
    # The contract of state/checkpoints.py: text order is position order, so spool ids are zero-padded.
    for position in (9, 10, 99, 100, 2**63 - 1):
        await st.set_checkpoint("spool", f"{position:020d}")
    await st.set_checkpoint("spool", f"{100:020d}")
    assert int(await st.get_checkpoint("spool")) == 2**63 - 1


async def test_reset_checkpoint_deletes_it(st: StateStore) -> None:
    await st.set_checkpoint("export", "20261101T10")
    await st.set_checkpoint("spool", "1")
    assert await st.reset_checkpoint("export") is True
    assert await st.reset_checkpoint("export") is False
    assert await st.checkpoints() == {"spool": "1"}
    # After an explicit reset the checkpoint may start again from an earlier position.
    await st.set_checkpoint("export", "20261101T00")
    assert await st.get_checkpoint("export") == "20261101T00"


async def test_commit_delivery_writes_keys_and_checkpoint(st: StateStore) -> None:
    await st.commit_delivery(["k1", "k2"], sink="brevo_events", checkpoint=("export", "h1"), now=100.0)
    assert await st.unseen(["k1", "k2", "k3"]) == {"k3"}
    assert await st.get_checkpoint("export") == "h1"
    await st.commit_delivery([], sink="brevo_events", checkpoint=("export", "h2"))
    assert await st.get_checkpoint("export") == "h2"


async def test_commit_delivery_is_atomic_on_constraint_failure(st: StateStore) -> None:
    await st.set_checkpoint("export", "h1")
    with pytest.raises(StateError, match="NOT NULL") as info:
        await st.commit_delivery(["k1", "k2"], sink="brevo_events", checkpoint=("export", None))  # type: ignore[arg-type]
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    assert await st.unseen(["k1", "k2"]) == {"k1", "k2"}
    assert await st.get_checkpoint("export") == "h1"


async def test_commit_delivery_is_atomic_when_checkpoint_write_fails(st: StateStore) -> None:
    # The keys are written first; a failure at the checkpoint must take them back out.
    def add_trigger(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TEMP TRIGGER fail_checkpoint BEFORE INSERT ON checkpoints "
            "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
        )

    await st._run(add_trigger)
    with pytest.raises(StateError, match="simulated failure"):
        await st.commit_delivery(["k1", "k2"], sink="brevo_events", checkpoint=("export", "h1"))
    assert await st.unseen(["k1", "k2"]) == {"k1", "k2"}
    assert await st.get_checkpoint("export") is None
    # The connection is usable afterwards (no transaction left open).
    assert await st._run(lambda conn: conn.in_transaction) is False
    await st.commit_delivery(["k3"], sink="brevo_events")
    assert await st.unseen(["k3"]) == set()


@pytest.fixture(params=["json_each", "per-key"])
def key_statements(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the one-statement JSON1 path, and again with the per-key fallback (SQLite without JSON1)."""
    if request.param == "json_each":
        assert dedupe_module._JSON_EACH, "this SQLite has JSON1"
    else:
        monkeypatch.setattr(dedupe_module, "_JSON_EACH", False)
    return request.param


async def test_unseen_with_more_keys_than_one_in_list(st: StateStore, key_statements: str) -> None:
    keys = [f"insert-{i}" for i in range(1234)]
    await st.commit_delivery(keys[::2], sink="brevo_events")

    statements: list[str] = []
    await st.unseen(["opens the lookup connection"])
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(st._lookups, lambda: st._lookup_conn.set_trace_callback(statements.append))
    try:
        result = await st.unseen(keys + keys[:10])  # duplicates are fine
    finally:
        await loop.run_in_executor(st._lookups, lambda: st._lookup_conn.set_trace_callback(None))
    assert result == set(keys[1::2])
    selects = [s for s in statements if s.startswith("SELECT key FROM dedupe")]
    # JSON1: one statement whatever the count; without: 1234 distinct keys in slices of <= 500
    assert len(selects) == (1 if key_statements == "json_each" else 3)
    assert await st.unseen([]) == set()


async def test_commit_delivery_of_many_keys_is_one_statement(st: StateStore, key_statements: str) -> None:
    keys = [f"insert-{i}" for i in range(1234)] + ['quote"d', "back\\slash", "caf\u00e9", "insert-1"]
    await st.commit_delivery(keys[:10], sink="brevo_events", now=50.0)
    statements: list[str] = []
    await st._run(lambda conn: conn.set_trace_callback(statements.append))
    try:
        await st.commit_delivery(keys, sink="brevo_events", checkpoint=("export", "h9"), now=100.0)
    finally:
        await st._run(lambda conn: conn.set_trace_callback(None))
    inserts = [s for s in statements if s.startswith("INSERT INTO dedupe")]
    assert len(inserts) == (1 if key_statements == "json_each" else len(keys))
    assert await st.unseen(keys + ["other"]) == {"other"}
    stored = await st._run(lambda conn: dict(conn.execute("SELECT key, delivered_at FROM dedupe")))
    assert set(stored) == set(keys), "every key verbatim"
    assert set(stored.values()) == {100.0}, "keys already present get delivered_at refreshed"
    assert await st.get_checkpoint("export") == "h9"


async def test_expire_dedupe(st: StateStore) -> None:
    await st.commit_delivery(["old1", "old2"], sink="brevo_events", now=100.0)
    await st.commit_delivery(["mid"], sink="brevo_orders", now=200.0)
    await st.commit_delivery(["new"], sink="brevo_events", now=300.0)
    assert await st.expire_dedupe(250.0) == 3
    assert await st.unseen(["old1", "old2", "mid", "new"]) == {"old1", "old2", "mid"}
    assert await st.expire_dedupe(250.0) == 0


async def test_expire_dedupe_in_several_slices(st: StateStore, monkeypatch) -> None:
    monkeypatch.setattr(dedupe_module, "EXPIRE_SLICE", 100)
    await st.commit_delivery([f"k{i}" for i in range(250)], sink="brevo_events", now=1.0)
    await st.commit_delivery(["keep"], sink="brevo_events", now=5.0)
    assert await st.expire_dedupe(2.0) == 250
    assert await st.unseen(["k0", "k249", "keep"]) == {"k0", "k249"}


async def test_expire_dedupe_slice_deletes_the_oldest_up_to_limit(st: StateStore) -> None:
    await st.commit_delivery([f"old{i}" for i in range(5)], sink="brevo_events", now=100.0)
    await st.commit_delivery(["older"], sink="brevo_events", now=50.0)
    await st.commit_delivery(["new"], sink="brevo_events", now=300.0)
    assert await st.expire_dedupe_slice(200.0, 2) == 2
    assert await st.unseen(["older", "new"]) == {"older"}, "oldest first"
    assert await st.expire_dedupe_slice(200.0, 100) == 4
    assert await st.expire_dedupe_slice(200.0, 100) == 0
    assert await st.unseen(["new"]) == set()
    with pytest.raises(ValueError):
        await st.expire_dedupe_slice(200.0, 0)


def _plan(conn: sqlite3.Connection, sql: str, params: tuple) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


async def test_expire_dedupe_slice_searches_the_delivered_at_index(st: StateStore) -> None:
    plan = await st._run(_plan, dedupe_module._EXPIRE_SLICE_SQL, (1.0, 10))
    assert any("USING COVERING INDEX dedupe_delivered_at (delivered_at<?)" in step for step in plan), plan
    assert any("USING PRIMARY KEY (key=?)" in step for step in plan), plan
    assert not any(step.startswith("SCAN") for step in plan), plan


async def test_expire_dedupe_slice_cost_does_not_grow_with_the_table(st: StateStore) -> None:
    """Counted in SQLite VM steps (deterministic, unlike time): a slice over 20x the rows costs the same."""

    def steps_of_one_slice(conn: sqlite3.Connection) -> int:
        counted = [0]

        def tick() -> int:
            counted[0] += 1
            return 0

        conn.set_progress_handler(tick, 10)
        try:
            assert dedupe_module._expire_dedupe_slice(conn, 10.0, 20) == 20
        finally:
            conn.set_progress_handler(None, 0)
        return counted[0]

    await st.commit_delivery([f"old{i}" for i in range(100)], sink="brevo_events", now=1.0)
    await st.commit_delivery([f"live{i}" for i in range(1_000)], sink="brevo_events", now=100.0)
    small = await st._run(steps_of_one_slice)
    await st.commit_delivery([f"more{i}" for i in range(20_000)], sink="brevo_events", now=100.0)
    large = await st._run(steps_of_one_slice)
    assert large < 2 * small + 10, (small, large)


async def test_dedupe_count(st: StateStore) -> None:
    assert await st.dedupe_count() == 0
    await st.commit_delivery(["a", "b", "c"], sink="brevo_events")
    await st.commit_delivery(["c", "d"], sink="brevo_orders")
    assert await st.dedupe_count() == 4


async def test_dedupe_count_holds_up_neither_the_writer_nor_the_lookups(st: StateStore, monkeypatch) -> None:
    threads: list[int] = []
    count = dedupe_module._dedupe_count

    def recording_count(conn: sqlite3.Connection) -> int:
        threads.append(threading.get_ident())
        return count(conn)

    monkeypatch.setattr(dedupe_module, "_dedupe_count", recording_count)
    await st.commit_delivery(["a"], sink="brevo_events")
    assert await st.dedupe_count() == 1
    writer = await st._run(lambda conn: threading.get_ident())
    lookup = await st._run_lookup(lambda conn: threading.get_ident())
    assert threads and threads[0] not in (writer, lookup, threading.get_ident())
    await st.close()
    with pytest.raises(StateError, match="closed"):
        await st.dedupe_count()


async def test_redelivery_refreshes_dedupe_time(st: StateStore) -> None:
    await st.commit_delivery(["k"], sink="brevo_events", now=100.0)
    await st.commit_delivery(["k"], sink="brevo_events", now=300.0)
    assert await st.expire_dedupe(200.0) == 0


# ---------------------------------------------------------------------- dead letters


async def test_dead_letters_lifecycle(st: StateStore) -> None:
    ids = await st.add_dead_letters(
        [
            DeadLetter("export", "brevo_events", {"event_type": "Play"}, "400 invalid email"),
            DeadLetter("export", "brevo_contacts", b'{"raw":1}', "400 bad attribute"),
            DeadLetter("ingest", "brevo_orders", {"id": "o1"}, "400 bad amount"),
        ],
        now=10.0,
    )
    assert len(ids) == 3 and ids == sorted(ids)

    listed = await st.list_dead_letters()
    assert [d.id for d in listed] == ids
    first = listed[0]
    assert (first.source, first.sink, first.reason, first.created_at, first.replayed_at) == (
        "export",
        "brevo_events",
        "400 invalid email",
        10.0,
        None,
    )
    assert orjson.loads(first.item) == {"event_type": "Play"}
    assert listed[1].item == b'{"raw":1}'

    assert [d.id for d in await st.list_dead_letters(source="ingest")] == [ids[2]]
    assert [d.id for d in await st.list_dead_letters(limit=1, offset=1)] == [ids[1]]
    assert await st.dead_letter_counts() == {"export": 2, "ingest": 1}
    assert await st.get_dead_letter(ids[1]) == listed[1]
    assert await st.get_dead_letter(999_999) is None

    await st.mark_replayed([ids[0]], now=20.0)
    assert [d.id for d in await st.list_dead_letters()] == ids[1:]
    replayed = [d for d in await st.list_dead_letters(include_replayed=True) if d.id == ids[0]]
    assert replayed[0].replayed_at == 20.0
    assert await st.dead_letter_counts() == {"export": 1, "ingest": 1}

    assert await st.purge_dead_letters(ids=[]) == 0
    assert await st.purge_dead_letters(ids=[ids[1], ids[2]], source="ingest") == 1
    assert await st.purge_dead_letters(source="export") == 2
    assert await st.list_dead_letters(include_replayed=True) == []


async def test_purge_all_dead_letters(st: StateStore) -> None:
    await st.add_dead_letters([DeadLetter("export", "brevo_events", b"x", "r")] * 3)
    assert await st.purge_dead_letters() == 3
    assert await st.dead_letter_counts() == {}


async def test_dead_letters_with_checkpoint_are_atomic(st: StateStore) -> None:
    await st.add_dead_letters([DeadLetter("export", "brevo_events", b"x", "r")], checkpoint=("export", "h1"))
    assert await st.get_checkpoint("export") == "h1"
    with pytest.raises(StateError):
        await st.add_dead_letters(
            [DeadLetter("export", "brevo_events", b"y", "r")],
            checkpoint=("export", None),  # type: ignore[arg-type]
        )
    assert len(await st.list_dead_letters()) == 1
    assert await st.get_checkpoint("export") == "h1"


# ---------------------------------------------------------------------- profiles and cohorts


async def test_profiles(st: StateStore) -> None:
    assert await st.get_profile("u1") is None
    await st.put_profiles({"u1": {"plan": "pro", "ltv": 12.5}, "u2": {"tags": ["a", "b"]}})
    await st.put_profiles({"u1": {"plan": "free"}})
    assert await st.get_profile("u1") == {"plan": "free"}
    assert await st.get_profile("u2") == {"tags": ["a", "b"]}
    await st.put_profiles({})


async def test_cohort_members_replace(st: StateStore) -> None:
    assert await st.cohort_members("c1", 7) == set()
    await st.replace_cohort_members("c1", 7, ["u1", "u2", "u3"], now=1.0)
    await st.replace_cohort_members("c1", 8, ["u9"], now=1.0)
    await st.replace_cohort_members("c1", 7, iter(["u2", "u3", "u4", "u4"]), now=2.0)
    assert await st.cohort_members("c1", 7) == {"u2", "u3", "u4"}
    assert await st.cohort_members("c1", 8) == {"u9"}
    syncs = await st._run(lambda c: c.execute("SELECT * FROM cohort_syncs ORDER BY list_id").fetchall())
    assert syncs == [("c1", 7, 2.0, 3), ("c1", 8, 1.0, 1)]
    await st.replace_cohort_members("c1", 7, [])
    assert await st.cohort_members("c1", 7) == set()


async def test_delete_user(st: StateStore) -> None:
    await st.put_profiles({"u1": {"plan": "pro"}, "u2": {"plan": "free"}})
    await st.replace_cohort_members("c1", 7, ["u1", "u2"], now=1.0)
    await st.replace_cohort_members("c2", 9, ["u1"], now=1.0)
    await st.delete_user("u1")
    assert await st.get_profile("u1") is None
    assert await st.get_profile("u2") == {"plan": "free"}
    assert await st.cohort_members("c1", 7) == {"u2"}
    assert await st.cohort_members("c2", 9) == set()
    syncs = await st._run(
        lambda c: c.execute("SELECT cohort_id, members FROM cohort_syncs ORDER BY 1").fetchall()
    )
    assert syncs == [("c1", 1), ("c2", 0)]


# ---------------------------------------------------------------------- ingest spool


async def test_spool(st: StateStore) -> None:
    assert await st.spool_depth() == 0
    assert await st.spool_append("httpapi", []) == []
    ids = await st.spool_append("httpapi", [b'{"events":[1]}', b'{"events":[2]}'])
    ids += await st.spool_append("identify", [b"identification=..."])
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert await st.spool_depth() == 3

    assert await st.spool_read(0, 2) == [
        (ids[0], "httpapi", b'{"events":[1]}'),
        (ids[1], "httpapi", b'{"events":[2]}'),
    ]
    assert await st.spool_read(ids[1], 10) == [(ids[2], "identify", b"identification=...")]
    assert await st.spool_delete_through(ids[1]) == 2
    assert await st.spool_depth() == 1
    assert await st.spool_delete_through(ids[2]) == 1

    # AUTOINCREMENT: ids never go back, even after the spool was emptied.
    [next_id] = await st.spool_append("batch", [b"x"])
    assert next_id > ids[2]


async def test_spool_append_is_committed_when_it_returns(db_path: Path, st: StateStore) -> None:
    await st.spool_append("httpapi", [b"body"])
    # A separate connection (another process, or the daemon after kill -9) sees the row at once:
    # nothing is waiting in an open transaction.
    with raw(db_path) as conn:
        assert conn.execute("SELECT body FROM ingest_spool").fetchall() == [(b"body",)]
    conn.close()


async def test_dedupe_lookups_do_not_wait_behind_a_write(st: StateStore) -> None:
    """Lookups read on their own connection and thread: a long write (a big commit, a purge) does not hold
    them up, and they see what was committed before they started."""
    await st.commit_delivery(["k1"], sink="brevo_events")
    began, finish = threading.Event(), threading.Event()

    def slow_write(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        began.set()
        finish.wait(10)  # the write goes on until the lookup below has answered
        conn.execute("INSERT INTO dedupe (key, sink, delivered_at) VALUES ('k2', 's', 0)")
        conn.execute("COMMIT")

    writing = asyncio.ensure_future(st._run(slow_write))
    try:
        async with asyncio.timeout(5):
            await asyncio.get_running_loop().run_in_executor(None, began.wait)
        async with asyncio.timeout(2):  # behind the write, the lookup would wait for ever
            assert await st.unseen(["k1", "k2", "k3"]) == {"k2", "k3"}, "k2 is not committed yet"
    finally:
        finish.set()
    await writing
    assert await st.unseen(["k1", "k2", "k3"]) == {"k3"}
