"""The profile collector: every exported row with a user id feeds its user's profile (SPEC §5).

It runs in the export reader, on every row that reader maps of a member (thousands of rows of one hour), and
keeps only the newest row per user — by `event_time`, then upload order — with the first and last event
times seen. Only when it finishes (after the member's last row: see `sources/member_mapper.py`) are the
winners' user properties decoded: one decode per user and member, not per row. Each winner becomes a profile
snapshot for the profile folder (`contacts/folder.py`), which folds snapshots into the state file across
readers, members, hours and runs.

With revenue totals kept (`revenue.ltv_attribute` / `count_attribute`), each revenue row also becomes a
revenue fact, keyed by its dedupe key: the folder counts a key once, ever.

Snapshot: `{"u": user, "t": newest event time (ISO), "s": its server_upload_time, "f": first event time,
"l": last event time, "e": email or null, "p": {property_mapping key: raw value}}`, and `"x"`: the email
property's text when it is not a valid email (the folder warns; the contact is written without it).
Revenue fact: `{"r": 1, "k": dedupe key, "u": user, "a": amount, "t": event time}`.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..jsonbytes import dumps_kept, exact
from .remap import MappingRules, Rejected, SinkOutput, Skipped, email_id, iso_utc
from .rows import ExportRow

SKIPPED_NO_IDENTITY = Skipped("no_identity")  # a row of nobody (no user id; anonymous: skip): no profile


class ProfileCollector:
    """The newest row per user of the rows added since the last `finish(out)`, which writes their snapshots
    and revenue facts to `out` (see the module docstring)."""

    __slots__ = ("rules", "users", "facts", "_user_field", "_device", "_row_revenue")

    def __init__(self, rules: MappingRules) -> None:
        self.rules = rules
        # user → [newest row, first event_time, last event_time]
        self.users: dict[str, list[Any]] = {}
        self.facts: list[bytes] = []
        # The ext_id is a row field (user_id, device_id) unless identity.ext_id names a user property.
        self._user_field = rules.ext_id_field if rules._ext_id_attr is None else None
        self._device = rules.anonymous == "use_device_id"
        self._row_revenue = _revenue_module().row_revenue if rules.count_revenue else None

    def user_of(self, row: ExportRow) -> str | None:
        """Whose profile the row feeds (the ext_id: `identity.ext_id`, or the device id of an anonymous row
        with `identity.anonymous: use_device_id`), or None."""
        field = self._user_field
        if field is None:
            user = self._user_from_properties(row)
        else:
            user = getattr(row, field)
            if not user and self._device:
                user = row.device_id
        return user if user and type(user) is str else None

    def add(self, row: ExportRow) -> Skipped | None:
        user = self.user_of(row)
        if user is None:
            return SKIPPED_NO_IDENTITY
        time = row.event_time or ""
        entry = self.users.get(user)
        if entry is None:
            self.users[user] = [row, time, time]
        else:
            newest = entry[0]
            newest_time = newest.event_time or ""
            # Equal times: the later row in upload order wins (rows come in upload order within a member).
            if time > newest_time or (time == newest_time and (row.server_upload_time or "") >= (
                    newest.server_upload_time or "")):
                entry[0] = row
            if time and (not entry[1] or time < entry[1]):
                entry[1] = time
            if time > entry[2]:
                entry[2] = time
        if self._row_revenue is not None:
            self._revenue(row, user)
        return None

    def _user_from_properties(self, row: ExportRow) -> Any:
        try:
            props = self.rules.user_properties(row.user_properties)
        except Exception:  # noqa: BLE001 - undecodable properties: nobody's row, like no id
            return None
        user = getattr(props, self.rules._ext_id_attr)
        return user if user else (row.device_id if self._device else None)

    def _revenue(self, row: ExportRow, user: str) -> None:
        fact = self.revenue_fact(row, user)
        if fact is not None:
            self.facts.append(fact)

    def revenue_fact(self, row: ExportRow, user: str) -> bytes | None:
        """The row's revenue fact for `user`'s totals, or None (no revenue, or totals are not kept)."""
        if self._row_revenue is None:
            return None
        revenue = self._row_revenue(row)  # decoded once for this and the orders consumer
        if revenue is None or type(revenue) is Rejected:
            return None
        key = row.insert_id or row.uuid
        at = iso_utc(row.event_time)
        if not key or at is None:
            return None  # the orders consumer rejects (and dead-letters) what is wrong with such a row
        # exact-size bytes: orjson's own output holds ~4 KiB of memory however short, and facts wait for the
        # member's end
        return dumps_kept({"r": 1, "k": key, "u": user, "a": revenue.amount, "t": at})

    def __len__(self) -> int:
        return len(self.users) + len(self.facts)

    def finish(self, out: SinkOutput) -> None:
        rules = self.rules
        keys, bodies = out.keys, out.bodies
        for fact in self.facts:
            keys.append(None)
            bodies.append(fact)
        sources = rules._sources
        email_attr = rules._email_attr
        for user, (row, first, last) in self.users.items():
            try:
                props = rules.user_properties(row.user_properties)
            except Exception:  # noqa: BLE001 - undecodable user properties: the row's columns still count
                props = rules.user_properties(b"{}")
            values: dict[str, Any] = {}
            for key, attr, column in sources:
                value = getattr(props, attr)
                if value is None and column is not None:
                    value = getattr(row, column, None)
                if value is not None:
                    values[key] = value
            raw_email = getattr(props, email_attr)
            email = email_id(raw_email)
            snapshot = {
                "u": user, "t": iso_utc(row.event_time), "s": row.server_upload_time, "f": iso_utc(first),
                "l": iso_utc(last), "e": email, "p": values,
            }
            if email is None and type(raw_email) is str and raw_email.strip():
                snapshot["x"] = raw_email[:200]  # not an email: the folder warns, the contact goes without it
            try:
                body = orjson.dumps(snapshot)
            except TypeError:  # e.g. an integer beyond 64 bits: keep the rest
                snapshot["p"] = {k: v for k, v in values.items() if encodable(v)}
                body = orjson.dumps(snapshot)
            keys.append(None)
            bodies.append(exact(body))
        self.users = {}
        self.facts = []


def encodable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


_REVENUE: list[Any] = []


def _revenue_module() -> Any:
    """pipeline.revenue, imported on first use: it imports remap, which imports this module."""
    if not _REVENUE:
        from . import revenue

        _REVENUE.append(revenue)
    return _REVENUE[0]
