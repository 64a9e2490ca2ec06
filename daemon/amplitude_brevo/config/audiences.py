"""Audiences: Brevo lists, Amplitude cohorts, segment rules and User Activity enrichment."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, model_validator

from .errors import Loc, format_path, located
from .fields import DAY, HOUR, CohortId, Fraction, ListId, PositiveDuration, PositiveInt, Section, lower


class Lists(Section):
    """Brevo list ids filled by the segments of the same name (None: that segment is not synced)."""

    active_users: ListId | None = None
    power_users: ListId | None = None
    churning_users: ListId | None = None


class CohortConfig(Section):
    id: CohortId
    list_id: ListId
    mode: Annotated[Literal["mirror", "append", "remove"], BeforeValidator(lower)] = "mirror"
    every: PositiveDuration = HOUR


class CohortGuard(Section):
    max_removal_fraction: Fraction = 0.5


_RULE_KINDS: dict[str, tuple[str, ...]] = {
    "seen_within": ("seen_within",),
    "cohort": ("cohort",),
    "active_not_seen": ("active_within", "not_seen_for"),
    "min_active_days": ("min_active_days", "within"),
}
_RULE_FORMS = "seen_within | cohort | active_within + not_seen_for | min_active_days + within"


class SegmentRule(Section):
    """Who belongs to a segment: exactly one of the forms in ``_RULE_KINDS``."""

    seen_within: PositiveDuration | None = None
    cohort: CohortId | None = None
    active_within: PositiveDuration | None = None
    not_seen_for: PositiveDuration | None = None
    min_active_days: PositiveInt | None = None
    within: PositiveDuration | None = None

    @property
    def kind(self) -> str:
        """``seen_within`` | ``cohort`` | ``active_not_seen`` | ``min_active_days``."""
        given = {name for name in type(self).model_fields if getattr(self, name) is not None}
        return next(kind for kind, keys in _RULE_KINDS.items() if set(keys) == given)

    @model_validator(mode="after")
    def _one_kind(self) -> SegmentRule:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if not any(set(keys) == set(given) for keys in _RULE_KINDS.values()):
            touched = [keys for keys in _RULE_KINDS.values() if set(keys) & set(given)]
            if not given:
                raise ValueError(f"an empty rule; give one of: {_RULE_FORMS}")
            if len(touched) == 1:
                missing = [k for k in touched[0] if k not in given]
                raise ValueError(f"{' and '.join(given)} also needs {' and '.join(missing)}")
            raise ValueError(f"mixes {', '.join(given)}; a rule is exactly one of: {_RULE_FORMS}")
        # Rules that can never match anyone are configuration mistakes, not empty segments.
        if self.active_within is not None and self.not_seen_for is not None:
            if self.not_seen_for >= self.active_within:
                raise located((("not_seen_for",), "must be shorter than active_within"))
        if self.min_active_days is not None and self.within is not None:
            if self.min_active_days * DAY > self.within:
                raise located((("min_active_days",), "cannot exceed the number of days in `within`"))
        return self


class Segments(Section):
    every: PositiveDuration = HOUR
    active_users: SegmentRule = SegmentRule(seen_within=7 * DAY)
    power_users: SegmentRule = SegmentRule(min_active_days=10, within=30 * DAY)
    churning_users: SegmentRule = SegmentRule(active_within=60 * DAY, not_seen_for=14 * DAY)


class UserActivity(Section):
    enabled: bool = True
    refresh_after: PositiveDuration = 24 * HOUR


def _as_list_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def list_writer_errors(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """A Brevo list may have one mirroring writer: a segment (`lists.<name>`) or a mirror cohort.

    Checked on the raw data rather than in a model validator so that it is reported together with
    unrelated errors elsewhere in the file.
    """
    writers: dict[int, str] = {}
    errors: list[tuple[Loc, str]] = []

    def claim(list_id: int | None, loc: Loc) -> None:
        if list_id is None:
            return
        if list_id in writers:
            errors.append((loc, f"list {list_id} is already mirrored by {writers[list_id]}"))
        else:
            writers[list_id] = format_path(loc)

    lists = data.get("lists")
    if isinstance(lists, dict):
        for name, value in lists.items():
            if name in Lists.model_fields:
                claim(_as_list_id(value), ("lists", name))
    cohorts = data.get("cohorts")
    if isinstance(cohorts, list):
        for i, cohort in enumerate(cohorts):
            if isinstance(cohort, dict) and str(cohort.get("mode") or "mirror").lower() == "mirror":
                claim(_as_list_id(cohort.get("list_id")), ("cohorts", i, "list_id"))
    return errors
