"""HourTracker: the export checkpoint only moves past hours whose every item is delivered or dead-lettered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from amplitude_brevo.pipeline.acks import HourTracker, hour_key

H0 = datetime(2026, 11, 1, 0, tzinfo=UTC)


def h(n: int) -> datetime:
    return H0 + timedelta(hours=n)


def test_hour_key():
    assert hour_key(datetime(2024, 1, 5, 7, tzinfo=UTC)) == "20240105T07"


def test_an_hour_completes_when_sealed_and_every_item_is_done():
    t = HourTracker(h(0))
    t.open(h(0))
    t.add(h(0), 3)
    assert t.advance() is None
    t.done(h(0), 2)
    t.seal(h(0))
    assert t.advance() is None, "one item still on its way"
    t.done(h(0))
    assert t.advance() == hour_key(h(1))
    assert t.next_hour == h(1)
    assert t.advance() is None, "no move, no new value"


def test_an_unsealed_hour_holds_the_checkpoint_even_when_nothing_is_outstanding():
    t = HourTracker(h(0))
    t.open(h(0))
    t.add(h(0), 1)
    t.done(h(0))
    assert t.advance() is None, "the source may still be reading this hour"
    t.seal(h(0))
    assert t.advance() == hour_key(h(1))


def test_out_of_order_completion_waits_for_the_oldest_hour():
    t = HourTracker(h(0))
    for n in range(3):
        t.open(h(n))
        t.add(h(n), 2)
        t.seal(h(n))
    # Hours 1 and 2 finish first: the checkpoint cannot pass hour 0.
    t.done(h(2), 2)
    assert t.advance() is None
    t.done(h(1), 2)
    assert t.advance() is None
    assert t.next_hour == h(0)
    assert t.outstanding == 2
    t.done(h(0), 1)
    assert t.advance() is None
    t.done(h(0), 1)
    assert t.advance() == hour_key(h(3)), "then it jumps over every completed hour at once"
    assert t.outstanding == 0


def test_empty_hours_advance_once_sealed():
    t = HourTracker(h(0))
    for n in range(4):
        t.open(h(n))
    t.seal(h(0))
    t.seal(h(1))
    assert t.advance() == hour_key(h(2))
    t.seal(h(3))
    assert t.advance() is None, "hour 2 is not sealed yet"
    t.seal(h(2))
    assert t.advance() == hour_key(h(4))


def test_checkpoint_never_passes_an_unfinished_hour_in_any_completion_order():
    import itertools

    for order in itertools.permutations(range(4)):
        t = HourTracker(h(0))
        for n in range(4):
            t.open(h(n))
            t.add(h(n), 1)
            t.seal(h(n))
        finished: set[int] = set()
        for n in order:
            t.done(h(n))
            finished.add(n)
            t.advance()
            first_unfinished = min(set(range(4)) - finished, default=4)
            assert t.next_hour == h(first_unfinished), order


def test_a_gap_before_the_first_opened_hour_blocks():
    # The tracker only moves through hours it was told about: an hour never opened is never skipped.
    t = HourTracker(h(0))
    t.open(h(1))
    t.seal(h(1))
    assert t.advance() is None
    assert t.next_hour == h(0)


def test_more_acknowledgements_than_items_is_a_bug():
    t = HourTracker(h(0))
    t.add(h(0), 1)
    t.done(h(0))
    with pytest.raises(AssertionError, match="20261101T00"):
        t.done(h(0))
