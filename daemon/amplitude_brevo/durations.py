"""Parsing and formatting of the config's durations ("90s", "5m", "3h", "7d") and UTC hours ("YYYYMMDDTHH")."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

DURATION_FORMS = "a number of seconds or a string like 250ms, 90s, 5m, 3h, 7d (or 1h30m)"
HOUR_FORMS = "YYYY-MM-DDTHH or YYYYMMDDTHH (UTC)"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = r"(\d+(?:\.\d+)?)\s*(ms|[smhd])"
_DURATION_RE = re.compile(rf"^(?:{_PART}\s*)+$")
_PART_RE = re.compile(_PART)
_HOUR_RES = (
    re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})$"),
    re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2})$"),
)


def parse_duration(value: str | int | float) -> float:
    """Return *value* in seconds.

    Accepts a non-negative number of seconds (also as a digit string, which is what ``${VAR}`` expansion
    produces) or unit strings ``90s``, ``5m``, ``3h``, ``7d``, including compounds like ``1h30m``.
    Raises ``ValueError`` for anything else.
    """
    # bool is an int subclass; `lag: true` is a typo, not one second.
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif _DURATION_RE.match(text):
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART_RE.findall(text))
        else:
            raise ValueError(f"{value!r} is not a duration")
    else:
        raise ValueError(f"a {type(value).__name__} is not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration (must be finite and not negative)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact unit string for *seconds* (inverse of :func:`parse_duration`)."""
    if seconds > 0 and float(seconds).is_integer():
        whole = int(seconds)
        for unit in ("d", "h", "m"):  # whole seconds only; ms are printed as a fraction of s
            if whole % _UNITS[unit] == 0:
                return f"{whole // _UNITS[unit]}{unit}"
        return f"{whole}s"
    return f"{seconds:g}s"


def parse_hour(value: str) -> datetime:
    """Parse ``YYYYMMDDTHH`` or ``YYYY-MM-DDTHH`` into an aware UTC datetime at that hour.

    Raises ``ValueError`` for any other form or an impossible date.
    """
    if isinstance(value, str):
        for pattern in _HOUR_RES:
            m = pattern.match(value.strip())
            if m:
                year, month, day, hour = (int(g) for g in m.groups())
                try:
                    return datetime(year, month, day, hour, tzinfo=UTC)
                except ValueError as exc:
                    raise ValueError(f"{value!r} is not a valid hour: {exc}") from None
    raise ValueError(f"{value!r} is not an hour; use {HOUR_FORMS}")


def hour_key(moment: datetime) -> str:
    """``YYYYMMDDTHH`` of an aware datetime, in UTC: the Export API's hour format, and the value of export
    checkpoints (fixed width, so text order is time order)."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H")


def format_hour(moment: datetime) -> str:
    """``YYYY-MM-DDTHH`` of an aware datetime, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")
