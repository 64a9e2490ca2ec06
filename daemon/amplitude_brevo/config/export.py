"""The Export API tail: first hour, lag, polling, window size and reader processes."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from .fields import HOUR, Duration, PositiveDuration, Section, StartHour, not_bool


class Export(Section):
    start: StartHour = None
    lag: Duration = 3 * HOUR
    poll_interval: PositiveDuration = 5 * 60.0
    max_window: PositiveDuration = 24 * HOUR
    # Child processes that decode and remap export members (0: in the daemon's own process).
    readers: Annotated[int, BeforeValidator(not_bool), Field(ge=0, le=16)] = 2

    @field_validator("max_window")
    @classmethod
    def _whole_hours(cls, value: float) -> float:
        # Export windows are made of whole server-upload hours.
        if value < HOUR or not (value / HOUR).is_integer():
            raise ValueError("must be a whole number of hours, at least 1h")
        return value
