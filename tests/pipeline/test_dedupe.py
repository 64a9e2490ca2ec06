"""The daemon's one dedupe record: what a lookup lets through, in flight and committed keys, expiry."""

from __future__ import annotations

import asyncio

from amplitude_brevo.pipeline.dedupe import DedupeRecord


async def test_new_keys_are_claimed_once_and_delivered_ones_never(state):
    await state.commit_delivery(["events:old"], sink="brevo_events")
    record = DedupeRecord(state, window=3600)
    fresh = await record.claim(record.lookup(["events:old", "events:new", "events:new", "orders:old"]))
    assert fresh == [False, True, False, True], "delivered, new, repeated in the same chunk, other namespace"
    assert record.inflight == {"events:new", "orders:old"}
    again = await record.claim(record.lookup(["events:new"]))
    assert again == [False], "in flight: a second source (or a re-read) does not queue it again"


async def test_a_key_committed_while_a_lookup_runs_is_not_let_through(state):
    record = DedupeRecord(state, window=3600)
    [first] = await record.claim(record.lookup(["events:a"]))
    assert first
    lookup = record.lookup(["events:a", "events:b"])
    await asyncio.sleep(0)  # the lookup may already have read SQLite, before the commit below
    await state.commit_delivery(["events:a"], sink="brevo_events")
    record.committed(["events:a"])
    assert await record.claim(lookup) == [False, True]
    assert record.inflight == {"events:b"}
    assert record._pending == []


async def test_released_keys_can_be_claimed_again(state):
    record = DedupeRecord(state, window=3600)
    assert await record.claim(record.lookup(["events:a"])) == [True]
    record.released(["events:a"])
    assert await record.claim(record.lookup(["events:a"])) == [True]


async def test_a_discarded_lookup_leaves_nothing_behind(state):
    record = DedupeRecord(state, window=3600)
    lookup = record.lookup(["events:a"])
    record.discard(lookup)
    assert record._pending == [] and record.inflight == set()


async def test_expiry_deletes_entries_older_than_the_window_in_slices(state, monkeypatch):
    import amplitude_brevo.pipeline.dedupe as dedupe_module

    monkeypatch.setattr(dedupe_module, "EXPIRE_SLICE", 3)
    await state.commit_delivery([f"events:old{n}" for n in range(7)], sink="brevo_events", now=1000.0)
    await state.commit_delivery(["events:new"], sink="brevo_events", now=5000.0)
    calls = []
    real = state.expire_dedupe_slice

    async def counted(older_than, limit):
        calls.append(limit)
        return await real(older_than, limit)

    monkeypatch.setattr(state, "expire_dedupe_slice", counted)
    record = DedupeRecord(state, window=3600)
    assert await record.expire_once(now=5000.0) == 7
    assert calls == [3, 3, 3], "bounded slices, not one long delete"
    assert await state.unseen([f"events:old{n}" for n in range(7)] + ["events:new"]) == {
        f"events:old{n}" for n in range(7)}
