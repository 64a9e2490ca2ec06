"""The ingest spool: entries in one transaction, the size it keeps, group commit and the size bound."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from amplitude_brevo.state import StateError, StateStore
from amplitude_brevo.state.checkpoints import number_key
from amplitude_brevo.state.spool import SpoolEntry, SpoolLimits, SpoolSize, SpoolWriter


def entry(n: int, size: int = 10) -> SpoolEntry:
    return SpoolEntry("httpapi", bytes([n % 256]) * size, 1764686400.0 + n)


async def test_entries_are_appended_in_one_transaction_and_keep_their_receive_time(
    tmp_path: Path, state: StateStore
) -> None:
    ids, size = await state.spool_append_entries([entry(1), SpoolEntry("identify", b"abc", 5.5)])
    assert size == SpoolSize(rows=2, bytes=13)
    with closing(sqlite3.connect(tmp_path / "state.db")) as conn:
        rows = conn.execute("SELECT id, kind, body, received_at FROM ingest_spool ORDER BY id").fetchall()
    assert rows == [(ids[0], "httpapi", b"\x01" * 10, 1764686401.0), (ids[1], "identify", b"abc", 5.5)]


async def test_the_size_follows_appends_and_deletes_and_is_recounted_at_open(tmp_path: Path) -> None:
    async with await StateStore.open(tmp_path / "state.db") as st:
        assert await st.spool_size() == SpoolSize(0, 0)
        ids, _ = await st.spool_append_entries([entry(n, size=100) for n in range(5)])
        await st.spool_append("batch", [b"x" * 7])
        assert await st.spool_size() == SpoolSize(6, 507)
        assert await st.spool_delete_through(ids[1]) == 2
        assert await st.spool_size() == SpoolSize(4, 307)
    async with await StateStore.open(tmp_path / "state.db") as st:
        assert await st.spool_size() == SpoolSize(4, 307)
        assert await st.spool_depth() == 4


async def test_concurrent_appends_share_one_commit(state: StateStore) -> None:
    writer = SpoolWriter(state)
    ids = await asyncio.gather(*(writer.append(entry(n)) for n in range(50)))
    assert writer.commits == 1 and writer.entries == 50
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert await state.spool_depth() == 50


async def test_appends_that_arrive_during_a_commit_wait_for_the_next_one(tmp_path: Path, state: StateStore) -> None:
    writer = SpoolWriter(state)
    # Another connection holds the write lock, so the first commit waits in BEGIN IMMEDIATE (busy_timeout).
    with closing(sqlite3.connect(tmp_path / "state.db", isolation_level=None)) as blocker:
        blocker.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(writer.append(entry(0)))
        await asyncio.sleep(0)  # its commit has left for the writer thread
        rest = [asyncio.ensure_future(writer.append(entry(n))) for n in range(1, 20)]
        await asyncio.sleep(0)
        assert writer.queued == 19 and writer.commits == 0
        blocker.execute("ROLLBACK")
        await asyncio.gather(first, *rest)
    assert (writer.commits, writer.entries) == (2, 20)
    assert await state.spool_depth() == 20


async def test_a_failed_commit_fails_its_appenders_and_the_writer_goes_on(tmp_path: Path) -> None:
    st = await StateStore.open(tmp_path / "state.db")
    writer = SpoolWriter(st)
    await st.close()
    with pytest.raises(StateError):
        await writer.append(entry(1))
    assert writer.commits == 0

    async with await StateStore.open(tmp_path / "state.db") as st:
        writer = SpoolWriter(st)
        assert await writer.append(entry(2)) > 0


@pytest.mark.parametrize(
    ("limits", "size", "full"),
    [
        (SpoolLimits(max_rows=2, max_bytes=None), SpoolSize(2, 10**9), False),
        (SpoolLimits(max_rows=2, max_bytes=None), SpoolSize(3, 0), True),
        (SpoolLimits(max_rows=None, max_bytes=100), SpoolSize(10**6, 100), False),
        (SpoolLimits(max_rows=None, max_bytes=100), SpoolSize(1, 101), True),
        (SpoolLimits(max_rows=None, max_bytes=None), SpoolSize(10**9, 10**12), False),
    ],
)
def test_limits(limits: SpoolLimits, size: SpoolSize, full: bool) -> None:
    assert limits.exceeded_by(size) is full


async def test_the_writer_says_full_past_the_bound_and_has_room_again_once_rows_are_freed(
    state: StateStore,
) -> None:
    writer = SpoolWriter(state, SpoolLimits(max_rows=2, max_bytes=None))
    assert not await writer.full()
    ids = [await writer.append(entry(n)) for n in range(3)]
    assert await writer.full()
    await state.spool_delete_through(ids[0])  # a consumer is done with the oldest
    assert not await writer.full()


async def test_rows_are_released_only_once_every_consumer_is_past_them(state: StateStore) -> None:
    ids, _ = await state.spool_append_entries([entry(n, size=10) for n in range(6)])
    consumers = ["ingest.forwarded", "ingest.brevo"]
    assert await state.spool_release(consumers) == 0, "no consumer has a checkpoint yet"
    await state.set_checkpoint("ingest.forwarded", number_key(ids[4]))
    assert await state.spool_release(consumers) == 0, "the Brevo side has finished nothing"
    await state.set_checkpoint("ingest.brevo", number_key(ids[1]))
    assert await state.spool_release(consumers) == 2, "through the lower of the two"
    assert [row[0] for row in await state.spool_read(0, 10)] == ids[2:]
    await state.set_checkpoint("ingest.brevo", number_key(ids[5]))
    assert await state.spool_release(consumers) == 3
    assert await state.spool_size() == SpoolSize(1, 10)
    assert await state.spool_release(["ingest.brevo"]) == 1, "forwarding off: the Brevo side alone decides"
    assert await state.spool_release([]) == 0
