"""End-to-end acknowledgements for export hours: the checkpoint moves only past fully delivered hours."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta


def hour_key(hour: datetime) -> str:
    """The Export API's hour format, `YYYYMMDDTHH`, also used as checkpoint value."""
    return hour.strftime("%Y%m%dT%H")


@dataclass
class _Hour:
    outstanding: int = 0
    sealed: bool = False


class HourTracker:
    """Counts the items of each export hour still on their way to Brevo.

    An hour is complete when the source has read all of it (`seal`) and every item it queued has been
    delivered or dead-lettered (`done`). `advance()` returns the next checkpoint value — the first hour
    not yet complete — once the oldest hours complete, so a checkpoint never passes an undelivered item,
    even when later hours finish first.
    """

    def __init__(self, next_hour: datetime) -> None:
        self.next_hour = next_hour
        self._hours: OrderedDict[datetime, _Hour] = OrderedDict()

    def open(self, hour: datetime) -> None:
        self._hours.setdefault(hour, _Hour())

    def add(self, hour: datetime, count: int = 1) -> None:
        self._hours.setdefault(hour, _Hour()).outstanding += count

    def seal(self, hour: datetime) -> None:
        self._hours.setdefault(hour, _Hour()).sealed = True

    def done(self, hour: datetime, count: int = 1) -> None:
        entry = self._hours[hour]
        entry.outstanding -= count
        if entry.outstanding < 0:
            raise AssertionError(f"more acknowledgements than items for hour {hour_key(hour)}")

    @property
    def outstanding(self) -> int:
        return sum(h.outstanding for h in self._hours.values())

    def advance(self) -> str | None:
        """Drop complete hours from the head; the new checkpoint value, or None if it did not move."""
        moved = False
        while self._hours:
            hour, entry = next(iter(self._hours.items()))
            if hour != self.next_hour or not entry.sealed or entry.outstanding:
                break
            self._hours.popitem(last=False)
            self.next_hour = hour + timedelta(hours=1)
            moved = True
        return hour_key(self.next_hour) if moved else None
