"""OffsetTracker and Acknowledger: a checkpoint only moves past positions whose every item, in every sink it
fanned out to, is delivered or dead-lettered; deliveries and checkpoints are recorded together."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from amplitude_brevo.durations import hour_key
from amplitude_brevo.pipeline.acks import Acknowledger, OffsetTracker
from amplitude_brevo.pipeline.dedupe import DedupeRecord
from amplitude_brevo.pipeline.items import Item

H0 = datetime(2026, 11, 1, 0, tzinfo=UTC)


def h(n: int) -> datetime:
    return H0 + timedelta(hours=n)


def tracker(record: bool = True) -> OffsetTracker:
    return OffsetTracker("export.next_hour", "export", lambda hour: hour_key(hour + timedelta(hours=1)), record=record)


def test_hour_key():
    assert hour_key(datetime(2024, 1, 5, 7, tzinfo=UTC)) == "20240105T07"


def test_a_position_completes_when_sealed_and_every_item_is_done():
    t = tracker()
    t.open(h(0))
    t.add(h(0), 3)
    assert t.advance() is None
    t.done(h(0), 2)
    t.seal(h(0))
    assert t.advance() is None, "one item still on its way"
    t.done(h(0))
    assert t.advance() == hour_key(h(1))
    assert t.head is None
    assert t.advance() is None, "no move, no new value"


def test_an_unsealed_position_holds_the_checkpoint_even_when_nothing_is_outstanding():
    t = tracker()
    t.add(h(0), 1)
    t.done(h(0))
    assert t.advance() is None, "the source may still be reading this hour"
    t.seal(h(0))
    assert t.advance() == hour_key(h(1))


def test_out_of_order_completion_waits_for_the_oldest_position():
    t = tracker()
    for n in range(3):
        t.add(h(n), 2)
        t.seal(h(n))
    t.done(h(2), 2)
    assert t.advance() is None
    t.done(h(1), 2)
    assert t.advance() is None
    assert t.head == h(0)
    assert t.outstanding == 2
    t.done(h(0), 1)
    assert t.advance() is None
    t.done(h(0), 1)
    assert t.advance() == hour_key(h(3)), "then it jumps over every completed position at once"
    assert t.outstanding == 0


def test_empty_positions_advance_once_sealed():
    t = tracker()
    for n in range(4):
        t.open(h(n))
    t.seal(h(0))
    t.seal(h(1))
    assert t.advance() == hour_key(h(2))
    t.seal(h(3))
    assert t.advance() is None, "hour 2 is not sealed yet"
    t.seal(h(2))
    assert t.advance() == hour_key(h(4))


def test_checkpoint_never_passes_an_unfinished_position_in_any_completion_order():
    for order in itertools.permutations(range(4)):
        t = tracker()
        for n in range(4):
            t.add(h(n), 1)
            t.seal(h(n))
        finished: set[int] = set()
        for n in order:
            t.done(h(n))
            finished.add(n)
            t.advance()
            first_unfinished = min(set(range(4)) - finished, default=None)
            assert t.head == (None if first_unfinished is None else h(first_unfinished)), order


def test_a_closed_tracker_never_moves_its_checkpoint():
    t = tracker()
    t.add(h(0), 1)
    t.seal(h(0))
    t.close()
    t.done(h(0))
    assert t.advance() is None


def test_more_acknowledgements_than_items_is_a_bug():
    t = tracker()
    t.add(h(0), 1)
    t.done(h(0))
    with pytest.raises(AssertionError, match="export.next_hour"):
        t.done(h(0))


async def test_a_row_fanned_out_to_two_sinks_moves_the_checkpoint_only_when_both_acknowledged(state):
    dedupe = DedupeRecord(state, window=3600)
    acks = Acknowledger(state, dedupe)
    t = tracker()
    token = t.token(h(0))
    event, order = Item("events:a", b"{}", token), Item("orders:a", b"{}", token)
    dedupe.inflight.update({"events:a", "orders:a"})
    t.add(h(0), 2)
    t.seal(h(0))
    await acks.settle("brevo_events", [event])
    assert await state.get_checkpoint("export.next_hour") is None, "the order is not delivered yet"
    assert await state.unseen(["events:a", "orders:a"]) == {"orders:a"}
    assert dedupe.inflight == {"orders:a"}
    await acks.settle("brevo_orders", [order])
    assert await state.get_checkpoint("export.next_hour") == hour_key(h(1))
    assert await state.unseen(["events:a", "orders:a"]) == set()
    assert not dedupe.inflight


async def test_refused_items_are_dead_lettered_with_their_source_and_count_as_done(state):
    acks = Acknowledger(state, DedupeRecord(state, window=3600))
    t = OffsetTracker("ingest.spool", "ingest", lambda pos: f"{pos:020d}")
    items = [Item(f"events:{n}", b'{"n":%d}' % n, t.token(7)) for n in range(3)]
    t.add(7, 3)
    t.seal(7)
    await acks.settle("brevo_events", items, {1: "Brevo refused the event: bad name"})
    letters = await state.list_dead_letters()
    assert [(dl.source, dl.sink, dl.item, dl.reason) for dl in letters] == [
        ("ingest", "brevo_events", b'{"n":1}', "Brevo refused the event: bad name")]
    assert await state.get_checkpoint("ingest.spool") == f"{7:020d}"
    assert await state.unseen(["events:0", "events:1", "events:2"]) == set(), "a refused key is not re-sent"


async def test_a_dry_run_records_nothing_and_releases_its_keys(state):
    dedupe = DedupeRecord(state, window=3600)
    acks = Acknowledger(state, dedupe)
    t = tracker(record=False)
    item = Item("events:x", b"{}", t.token(h(0)))
    dedupe.inflight.add("events:x")
    t.add(h(0), 1)
    t.seal(h(0))
    acks.settle_dry("brevo_events", [item])
    assert t.head is None, "the cursor moved in memory"
    assert await state.checkpoints() == {}
    assert await state.unseen(["events:x"]) == {"events:x"}
    assert not dedupe.inflight
