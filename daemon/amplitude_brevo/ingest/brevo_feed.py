"""What a spooled request becomes for the Brevo sinks (issue 9 item 4): the export path's outputs, plus
profile operations.

Each event of an HTTP V2 / Batch request is turned into the export row Amplitude will later export for it
(`ingest/rows.py`) and mapped by the export's own consumers (`pipeline/remap.py` `row_mapper`) for the
events and orders sinks, under the same dedupe keys: the event seen live and again in an export window
reaches Brevo once. Its profile part is not a snapshot (a snapshot replaces the stored values of every
mapped property, and a live event names only some) but an *operations* item for the profile folder:

    {"u": user, "k": "<spool id>-<index>", "t": event time (ISO), "s": receive time, "f": …, "l": …,
     "c": {key: value of a top-level field}, "o": {"$set": {…}, "$add": {…}, …}, "e": email, "m": "set"|"once"}

`o` holds the event's `user_properties` operations (reference §4), or `{"$set": {…}}` for plain
properties, narrowed to the `property_mapping` keys (no other property reaches Brevo); `c` the mapped keys
taken from the event's own fields (`platform`, `country`, …), applied as `$set` before `o`. `e` is the
email property's value when the operations set it (`m`: with `$set` or `$setOnce`), `x` its text when it
is not an email. `k` is applied once, ever (the folder records it in the transaction that applies it), so
re-reading the spool after a restart does not `$add` twice. A revenue event also makes a revenue fact
for the LTV totals, keyed like the export's (`insert_id`), so it counts once whichever path saw it first.

`/identify` calls make operations items only (no `f`/`l`: an identify is not activity; no Brevo event: the
export shows them as `$identify` rows without the caller's `insert_id`). `/groupidentify` makes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import orjson

from ..jsonbytes import dumps_kept
from ..pipeline.profiles import ProfileCollector, encodable
from ..pipeline.remap import PROFILES_SINK, MappingRules, SinkOutput, email_id, iso_utc, row_mapper
from ..pipeline.user_ops import OPERATIONS
from ..sources.member_mapper import MappedChunk
from .entries import EVENT_KINDS, SpooledRequest
from .rows import live_row

IDENTIFY_KINDS = frozenset({"identify"})  # what feeds profiles; groupidentify is forwarded only
_LETTER = "ingest.event.rejected"


class BrevoFeed:
    """Maps spooled requests for the sinks of `rules` (see the module docstring)."""

    def __init__(self, rules: MappingRules) -> None:
        self.rules = rules
        self.profiles = PROFILES_SINK in rules.sinks
        # The export consumers but the profile collector: live events feed profiles through operations.
        self.row_rules = dataclasses.replace(rules, sinks=tuple(s for s in rules.sinks if s != PROFILES_SINK))
        self.decode = self.row_rules.row_decoder.decode
        self.people = ProfileCollector(rules)  # whose profile a row feeds, and its revenue fact
        self.mapped_keys = frozenset(key for key, _, _ in rules._sources)
        self.columns = tuple((key, column) for key, _, column in rules._sources if column is not None)
        self.email_property = rules.email_property

    def map_request(self, spool_id: int, request: SpooledRequest) -> MappedChunk:
        """The outputs (by sink), skips and dead letters of one spooled request."""
        chunk = MappedChunk(outputs={name: SinkOutput() for name in self.rules.sinks})
        if request.kind in EVENT_KINDS:
            self._events(spool_id, request, chunk)
        elif request.kind in IDENTIFY_KINDS and self.profiles:
            self._identifies(spool_id, request, chunk)
        return chunk

    def _events(self, spool_id: int, request: SpooledRequest, chunk: MappedChunk) -> None:
        mapper = row_mapper(self.row_rules, chunk.outputs, chunk.skipped)
        profiles = chunk.outputs.get(PROFILES_SINK)
        for index, event in enumerate(request.items):
            chunk.rows += 1
            live = live_row(event, spool_id=spool_id, index=index, received_at_ms=request.received_at_ms)
            item = {"spool_id": spool_id, "index": index, "event": event}
            try:
                row = self.decode(live.line)
                rejected = mapper(row)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
                chunk.letters.append((_LETTER, None, item, f"cannot map the event: {type(exc).__name__}: {exc}"))
                continue
            if rejected is not None:
                chunk.letters.append((_LETTER, None, item, rejected.reason))
            if profiles is None:
                continue
            user = self.people.user_of(row)
            if user is None:
                continue
            fact = self.people.revenue_fact(row, user)
            if fact is not None:
                profiles.keys.append(None)
                profiles.bodies.append(fact)
            at = iso_utc(row.event_time)
            ops = live.operations if live.operations is not None else {"$set": live.row["user_properties"]}
            body = self._operations(user, f"{spool_id}-{index}", ops, live.row, at, row.server_upload_time,
                                    activity=True)
            profiles.keys.append(None)
            profiles.bodies.append(body)
        mapper.finish()

    def _identifies(self, spool_id: int, request: SpooledRequest, chunk: MappedChunk) -> None:
        profiles = chunk.outputs[PROFILES_SINK]
        for index, identification in enumerate(request.items):
            chunk.rows += 1
            live = live_row({**identification, "event_type": "$identify"}, spool_id=spool_id, index=index,
                            received_at_ms=request.received_at_ms)
            row = self.decode(live.line)
            user = self.people.user_of(row)
            if user is None:
                chunk.skipped["no_identity"] = chunk.skipped.get("no_identity", 0) + 1
                continue
            ops = live.operations if live.operations is not None else {"$set": live.row["user_properties"]}
            profiles.keys.append(None)
            profiles.bodies.append(self._operations(user, f"{spool_id}-{index}", ops, live.row,
                                                    iso_utc(row.event_time), row.server_upload_time,
                                                    activity=False))

    def _operations(self, user: str, key: str, ops: dict[str, Any], row: dict[str, Any], at: str | None,
                    received: str | None, *, activity: bool) -> bytes:
        item: dict[str, Any] = {"u": user, "k": key, "t": at, "s": received}
        if activity:
            item["f"] = item["l"] = at
        columns = {k: row[column] for k, column in self.columns if row.get(column) is not None}
        if columns:
            item["c"] = columns
        narrowed: dict[str, Any] = {}
        for op in OPERATIONS:
            value = ops.get(op)
            if value is None:
                continue
            if op == "$clearAll":
                narrowed[op] = value
            elif isinstance(value, dict):
                kept = {k: v for k, v in value.items() if k in self.mapped_keys}
                if kept:
                    narrowed[op] = kept
                if op in ("$set", "$setOnce") and self.email_property in value:
                    self._email(item, value[self.email_property], "set" if op == "$set" else "once")
        if narrowed:
            item["o"] = narrowed
        return _dumps(item)

    @staticmethod
    def _email(item: dict[str, Any], raw: Any, mode: str) -> None:
        email = email_id(raw)
        if email is not None:
            item["e"], item["m"] = email, mode
        elif type(raw) is str and raw.strip():
            item["x"] = raw[:200]


def _dumps(item: dict[str, Any]) -> bytes:
    try:
        return dumps_kept(item)
    except TypeError:  # e.g. an integer beyond 64 bits in the operations: the rest is kept
        item["o"] = {op: v for op, v in (item.get("o") or {}).items() if encodable(v)}
        item["c"] = {k: v for k, v in (item.get("c") or {}).items() if encodable(v)}
        return orjson.dumps(item)

