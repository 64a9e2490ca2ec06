"""Which export hours to request next: a pure planner, no I/O (tested with tables).

The cursor is the server-upload hour (reference/amplitude-api.md §1). Hour H may be requested once
now ≥ H + 1h + `export.lag`. While behind, one request spans up to `export.max_window` hours; a window the
API finds too large (400, 504) is halved, down to one hour, and each window read grows the next one back by
doubling — hours that were too large are usually followed by more of the same, and jumping straight back
to the maximum would pay the whole halving sequence again for every window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

HOUR = timedelta(hours=1)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def latest_available_hour(now: datetime, lag_seconds: float) -> datetime:
    """The newest hour H with now ≥ H + 1h + lag."""
    return floor_hour(now - HOUR - timedelta(seconds=lag_seconds))


def available_at(hour: datetime, lag_seconds: float) -> datetime:
    """When `hour` may be requested."""
    return hour + HOUR + timedelta(seconds=lag_seconds)


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """start..end inclusive, hour by hour."""
    return [start + i * HOUR for i in range((end - start) // HOUR + 1)]


@dataclass
class WindowPlanner:
    """The size of the next window, between 1 and `max_hours` hours."""

    max_hours: int
    size: int = 0  # hours the next window may span; 0: start at max_hours

    def __post_init__(self) -> None:
        self.max_hours = max(1, self.max_hours)
        self.size = self.size or self.max_hours

    def next_window(self, cursor: datetime, latest: datetime) -> tuple[datetime, datetime] | None:
        """The next window from `cursor`, or None while `cursor` is not available yet."""
        if cursor > latest:
            return None
        self.size = min(self.size, self.max_hours)
        return cursor, min(cursor + (self.size - 1) * HOUR, latest)

    def too_large(self, start: datetime, end: datetime) -> None:
        """The API refused start..end as too large: the next try spans half of it."""
        self.size = max(1, ((end - start) // HOUR + 1) // 2)

    def read(self) -> None:
        """A window was read: the next may be twice as long."""
        self.size = min(self.max_hours, self.size * 2)

    def resize(self, max_hours: int) -> None:
        """A reload changed `export.max_window`."""
        self.max_hours = max(1, max_hours)
        self.size = min(self.size, self.max_hours)
