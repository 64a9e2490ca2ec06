"""The export window planner: which hours are due, and how window sizes halve and grow (tables, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from amplitude_brevo.sources.export_windows import (
    WindowPlanner,
    available_at,
    hours_between,
    latest_available_hour,
)

H0 = datetime(2026, 11, 1, 0, tzinfo=UTC)


def h(n: int) -> datetime:
    return H0 + timedelta(hours=n)


@pytest.mark.parametrize(
    ("now", "lag_hours", "latest"),
    [
        (h(4), 3, h(0)),  # hour 0 is due at 0 + 1 h + 3 h
        (h(4) - timedelta(seconds=1), 3, h(-1)),
        (h(4) + timedelta(minutes=59), 3, h(0)),
        (h(1), 0, h(0)),
        (h(1) + timedelta(minutes=30), 0, h(0)),
    ],
)
def test_latest_available_hour(now, lag_hours, latest):
    assert latest_available_hour(now, lag_hours * 3600) == latest
    assert available_at(latest, lag_hours * 3600) <= now < available_at(latest + timedelta(hours=1), lag_hours * 3600)


@pytest.mark.parametrize(
    ("max_hours", "cursor", "latest", "window"),
    [
        (24, h(0), h(100), (h(0), h(23))),  # behind: a full window
        (24, h(0), h(5), (h(0), h(5))),  # never past the latest available hour
        (24, h(6), h(5), None),  # nothing due yet
        (1, h(3), h(10), (h(3), h(3))),
        (0, h(3), h(10), (h(3), h(3))),  # at least one hour
    ],
)
def test_next_window(max_hours, cursor, latest, window):
    assert WindowPlanner(max_hours).next_window(cursor, latest) == window


def test_too_large_halves_down_to_one_hour_and_reads_grow_it_back():
    planner = WindowPlanner(24)
    sizes = []
    start = h(0)
    for _ in range(6):
        window = planner.next_window(start, h(1000))
        assert window is not None
        sizes.append((window[1] - window[0]) // timedelta(hours=1) + 1)
        planner.too_large(*window)
    assert sizes == [24, 12, 6, 3, 1, 1]
    grown = []
    for _ in range(6):
        planner.read()
        grown.append(planner.size)
    assert grown == [2, 4, 8, 16, 24, 24]


def test_too_large_halves_the_window_actually_requested_not_the_planned_size():
    planner = WindowPlanner(24)
    window = planner.next_window(h(0), h(3))  # only 4 hours were due
    assert window == (h(0), h(3))
    planner.too_large(*window)
    assert planner.size == 2


def test_a_reload_shrinking_max_window_applies_to_the_next_window():
    planner = WindowPlanner(24)
    planner.resize(6)
    assert planner.next_window(h(0), h(100)) == (h(0), h(5))
    planner.read()
    assert planner.size == 6


def test_hours_between_is_inclusive():
    assert hours_between(h(0), h(2)) == [h(0), h(1), h(2)]
    assert hours_between(h(5), h(5)) == [h(5)]
