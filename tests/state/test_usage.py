"""Budget usage, queue-depth snapshots and pending contacts in a real state file (what `status` reads)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from amplitude_brevo.state import StateStore


async def test_usage_adds_up_per_budget_and_minute(state: StateStore) -> None:
    await state.record_usage([("brevo_contacts", 100, 7), ("brevo_contacts", 101, 3), ("brevo_events", 100, 1)])
    await state.record_usage([("brevo_contacts", 101, 2), ("brevo_orders", 99, 4), ("brevo_other", 101, 0)])
    assert await state.usage_since(0) == {
        "brevo_contacts": [(100, 7), (101, 5)],
        "brevo_events": [(100, 1)],
        "brevo_orders": [(99, 4)],
    }
    assert await state.usage_since(101) == {"brevo_contacts": [(101, 5)]}


async def test_usage_survives_reopening_and_a_reader_without_the_lock_sees_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with await StateStore.open(path) as writer:
        await writer.record_usage([("brevo_contacts", 500, 9)])
        async with await StateStore.open(path, lock=False) as reader:
            assert await reader.usage_since(500) == {"brevo_contacts": [(500, 9)]}
    async with await StateStore.open(path) as again:
        assert await again.usage_since(0) == {"brevo_contacts": [(500, 9)]}


async def test_prune_forgets_the_minutes_before(state: StateStore) -> None:
    await state.record_usage([("brevo_contacts", m, 1) for m in range(10)])
    assert await state.prune_usage(7) == 7
    assert await state.usage_since(0) == {"brevo_contacts": [(7, 1), (8, 1), (9, 1)]}
    assert await state.prune_usage(7) == 0


async def test_backlogs_snapshot_is_replaced_and_stamped(state: StateStore) -> None:
    assert await state.backlogs() == ({}, None)
    await state.record_backlogs({"brevo_orders": 120, "brevo_contacts": 3}, now=1000.5)
    await state.record_backlogs({"brevo_orders": 7}, now=1010.0)
    assert await state.backlogs() == ({"brevo_orders": 7}, 1010.0)


def _add_contacts(path: Path, seqs: list[int]) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executemany(
            "INSERT INTO contacts (user_id, seen, seq) VALUES (?, ?, ?)",
            [(f"u{seq}", "2026-11-01T00:00:00Z", seq) for seq in seqs],
        )


async def test_contacts_pending_counts_rows_above_the_checkpoint(state: StateStore) -> None:
    assert await state.contacts_pending(None) == 0
    _add_contacts(state.path, [1, 2, 9, 10, 11])
    assert await state.contacts_pending(None) == 5
    assert await state.contacts_pending(f"{9:020d}") == 2
    # Compared as numbers: "10" sorts before "9" as text.
    assert await state.contacts_pending(f"{10:020d}") == 1
    assert await state.contacts_pending(f"{11:020d}") == 0
    assert await state.contacts_pending(f"{0:020d}") == 5
