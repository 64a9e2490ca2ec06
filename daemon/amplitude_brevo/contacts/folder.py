"""The profile folder: profile snapshots and revenue facts from the export, and profile operations from the
ingest spool (`ingest/brevo_feed.py`) → the state file's contacts.

It drains the `profiles` queue a batch at a time (up to `batching.max_items`, at most `batching.max_wait`
apart: the batch window). A batch's snapshots are coalesced per user (the newest row wins), converted to
the Brevo attributes' types and folded into the state file in one transaction with the batch's revenue
facts (state/contacts.py); a user whose converted attributes or email changed gets a pending write, which
the contact outbox hands to the contacts sink at the contacts budget's pace. Then the batch's items are
settled like any sink's, so the export hour's checkpoint moves once its rows are folded: what Brevo has
not received yet is in the state file, not in memory (memory stays flat in the export's size).

The attribute model (`GET /contacts/attributes`) is read when the folder starts, and again
after each reload. A `property_mapping` target missing in Brevo is reported once (`contacts.attribute_missing`)
and left out of every contact; with `connectors.brevo.create_attributes` it is created first, its type
inferred from the first value read for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..logs import get_logger
from ..pipeline.items import Item
from ..pipeline.queue import next_batch_unless
from ..pipeline.remap import PROFILES_SINK, counts_revenue
from ..sinks.brevo_client import Stopping
from ..state.contacts import FoldResult, Totals
from .attributes import AttributeModel, Dropped, convert, ensure_attributes, identity_target, load_attributes

log = get_logger("contacts")

# Conversions remembered (cleared when full): recurring values (plans, countries, names, dates) fit. A date
# attribute's date-time (`last_active`: an event time per fold) never recurs: it is converted each time, not
# remembered, or it would fill the memo (~0.3 KiB an entry) and push the recurring values out.
MEMO_LIMIT = 8192
DATE_LENGTH = len("2024-01-15")  # a date attribute's longer strings are date-times
_UNSET = object()
DROPPED_LOGS_PER_MINUTE = 20  # per attribute: warnings naming the user; past that, counted only


class AttributeTargets:
    """What the config asks to write to each contact: `property_mapping` key → attribute, and the revenue
    totals' attributes. Frozen per config; rebuilt on reload."""

    def __init__(self, cfg: Any) -> None:
        identity = cfg.identity.email_property
        self.mapping = {
            source: target.upper() for source, target in cfg.property_mapping.items()
            if source != identity and not identity_target(target)
        } if cfg.sync.user_properties else {}
        counting = counts_revenue(cfg)
        self.ltv = cfg.revenue.ltv_attribute.upper() if counting and cfg.revenue.ltv_attribute else None
        self.count = cfg.revenue.count_attribute.upper() if counting and cfg.revenue.count_attribute else None

    def names(self) -> list[str]:
        return [*self.mapping.values(), *filter(None, (self.ltv, self.count))]


class ProfileFolder:
    role = "consumer"
    name = PROFILES_SINK

    def __init__(self, *, cfg: Any, queue: Any, state: Any, acks: Any, client: Any, metrics: Any = None,
                 on_pending: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.queue = queue
        self.state = state
        self.acks = acks
        self.client = client  # a BrevoClient: attribute reads and creation, under the contacts budget
        self.metrics = metrics
        self.on_pending = on_pending  # the outbox's wake-up: new pending writes
        self.targets = AttributeTargets(cfg)
        self.model: AttributeModel | None = None
        self.missing: set[str] = set()
        self._stopping = client.stop if client.stop is not None else asyncio.Event()
        client.stop = self._stopping
        self._reread = False
        self._dropped_logged: dict[str, tuple[int, int]] = {}  # attribute → (minute, warnings logged in it)
        self.totals = FoldResult()  # summed over every batch (demo, tests)
        self.dropped_total: dict[str, int] = {}  # attribute → values dropped by conversion
        self._converted: dict[tuple[str, type, Any], Any] = {}  # (attribute, type, value) → convert()'s answer
        self._dates: frozenset[str] = frozenset()  # the targets that are date attributes in the model

    def stop(self) -> None:
        self._stopping.set()

    def reload(self, cfg: Any) -> None:
        self.cfg = cfg
        brevo = cfg.connectors.brevo
        self.client.reconfigure(base_url=brevo.api_url, api_key=brevo.api_key)
        self.targets = AttributeTargets(cfg)
        self._reread = True  # the model is read again before the next batch

    async def run(self) -> None:
        try:
            await self._load_model()  # at start: a missing target is reported before any row is read
            while (batch := await self._next_batch()) is not None:
                if self.model is None or self._reread:
                    self._reread = False
                    await self._load_model()
                await self._fold(batch)
                del batch  # not held while the next batch fills: the queue holds that one meanwhile
        except Stopping:
            pass
        log.info("contacts.folder.stopped", new=self.totals.new, changed=self.totals.changed,
                 unchanged=self.totals.unchanged, revenue_counted=self.totals.revenue_counted)

    async def _next_batch(self) -> list[Item] | None:
        return await next_batch_unless(self.queue, self._stopping, self.acks.release)

    # -- the attribute model --
    async def _load_model(self) -> None:
        self.model = await load_attributes(self.client)
        self._forget_conversions()
        names = self.targets.names()
        self.missing = {name for name in names if self.model.get(name) is None}
        if self.missing and not self.cfg.connectors.brevo.create_attributes:
            for source, target in self.targets.mapping.items():
                if target in self.missing:
                    log.error("contacts.attribute_missing", attribute=target, key=f"property_mapping.{source}",
                              hint="create it in Brevo (Contacts > Settings > Contact attributes), or set "
                                   "connectors.brevo.create_attributes: true; until then it is left out of contacts")
            for key, target in (("revenue.ltv_attribute", self.targets.ltv),
                                ("revenue.count_attribute", self.targets.count)):
                if target in self.missing:
                    log.error("contacts.attribute_missing", attribute=target, key=key,
                              hint="create it in Brevo as a number attribute, or set "
                                   "connectors.brevo.create_attributes: true")
        log.info("contacts.attributes.loaded", missing=sorted(self.missing))

    async def _create_missing(self, snapshots: list[Mapping[str, Any]]) -> None:
        """create_attributes: create the missing targets a value has been read for, typed by the first one."""
        samples: dict[str, Any] = {name: None for name in self.missing}
        for source, target in self.targets.mapping.items():
            if target in samples and samples[target] is None:
                samples[target] = next(
                    (s["p"][source] for s in snapshots if (s.get("p") or {}).get(source) is not None), None)
                if samples[target] is None and source in ("last_active", "first_seen"):
                    samples[target] = "2000-01-01"
        for target in (self.targets.ltv, self.targets.count):
            if target in samples:
                samples[target] = 0.0
        # A target no value has been read for yet waits for one (a later batch's): typed from nothing it would
        # be text, and a number that arrives later (an identify's `$add`) would be stored as text for good.
        wanted = {target: sample for target, sample in samples.items() if sample is not None}
        if not wanted:
            return
        self.model, missing = await ensure_attributes(self.client, self.model, wanted, create=True, log=log)
        self.missing = (self.missing - set(wanted)) | set(missing)
        self._forget_conversions()

    def _forget_conversions(self) -> None:
        """A new attribute model: conversions are remembered afresh, and its date targets looked up again."""
        self._converted = {}
        model = self.model
        self._dates = frozenset(
            target for target in self.targets.mapping.values()
            if model is not None and (attribute := model.get(target)) is not None and attribute.type == "date"
        )

    # -- one batch --
    async def _fold(self, batch: list[Item]) -> None:
        snapshots: dict[str, dict[str, Any]] = {}
        facts = []
        operations = []  # live events' and identifies' operations, applied in order after the snapshots
        for item in batch:
            data = orjson.loads(item.body)
            if "r" in data:
                facts.append(data)
                continue
            user = data["u"]
            if "x" in data:
                self._dropped(user, "EMAIL", f"{data['x']!r} is not a valid email; the contact is written without it")
            if "k" in data:
                operations.append(data)
                continue
            known = snapshots.get(user)
            snapshots[user] = data if known is None else _newer(known, data)
        if self.missing and self.cfg.connectors.brevo.create_attributes:
            await self._create_missing([*snapshots.values(), *map(_as_snapshot, operations)])
        result = await self.state.fold_contacts(list(snapshots.values()), facts, self.attributes_of,
                                                operations=operations)
        del snapshots, facts, operations  # folded: not held while the batch is settled
        self._count(result)
        await self.acks.settle(self.name, batch)
        if (result.new or result.changed) and self.on_pending is not None:
            self.on_pending()

    def attributes_of(self, sources: Mapping[str, Any], derived: Mapping[str, Any],
                      totals: Totals | None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """The Brevo attributes of one profile, converted to their types; and what could not be (runs on the
        state's writer thread, inside the fold's transaction: pure, no I/O)."""
        model, missing, memo, dates = self.model, self.missing, self._converted, self._dates
        attributes: dict[str, Any] = {}
        dropped: list[tuple[str, str]] = []
        for source, target in self.targets.mapping.items():
            if target in missing:
                continue
            value = sources.get(source)
            if value is None:
                value = derived.get(source)
            if value is None:
                continue
            kind = type(value)
            if kind is str and len(value) > DATE_LENGTH and target in dates:
                converted = convert(model, target, value)  # a date-time: not remembered (see MEMO_LIMIT)
            elif kind is str or kind is int or kind is float or kind is bool:
                # Values recur (plans, countries, dates, names of returning users): convert each once.
                memo_key = (target, kind, value)
                converted = memo.get(memo_key, _UNSET)
                if converted is _UNSET:
                    converted = convert(model, target, value)
                    if len(memo) >= MEMO_LIMIT:
                        memo.clear()
                    memo[memo_key] = converted
            else:
                converted = convert(model, target, value)
            if converted is None:
                continue
            if isinstance(converted, Dropped):
                dropped.append((target, converted.reason))
            else:
                attributes[target] = converted.value
        if totals is not None:
            if self.targets.ltv and self.targets.ltv not in missing:
                attributes[self.targets.ltv] = round(totals.ltv, 2)
            if self.targets.count and self.targets.count not in missing:
                attributes[self.targets.count] = totals.orders
        return attributes, dropped

    def _count(self, result: FoldResult) -> None:
        t = self.totals
        t.new += result.new
        t.changed += result.changed
        t.unchanged += result.unchanged
        t.revenue_counted += result.revenue_counted
        t.revenue_repeated += result.revenue_repeated
        t.operations_applied += result.operations_applied
        t.operations_repeated += result.operations_repeated
        if self.metrics:
            for name in ("new", "changed", "unchanged"):
                if getattr(result, name):
                    self.metrics.contacts_folded.labels(result=name).inc(getattr(result, name))
        for user, attribute, why in result.dropped:
            self._dropped(user, attribute, why)

    def _dropped(self, user: str, attribute: str, why: str) -> None:
        """A value left out of a contact: counted, and logged naming the user (up to a few a minute each)."""
        self.dropped_total[attribute] = self.dropped_total.get(attribute, 0) + 1
        if self.metrics:
            self.metrics.attributes_dropped.labels(attribute=attribute).inc()
        minute = int(time.time() // 60)
        at, logged = self._dropped_logged.get(attribute, (minute, 0))
        if at != minute:
            at, logged = minute, 0
        if logged < DROPPED_LOGS_PER_MINUTE:
            log.warning("contacts.attribute_dropped", user_id=user, attribute=attribute, reason=why,
                        hint="the rest of the contact is written; fix the value in Amplitude or the "
                             "attribute's type in Brevo")
        self._dropped_logged[attribute] = (at, logged + 1)


def _as_snapshot(operations: dict[str, Any]) -> dict[str, Any]:
    """The values an operations item sets, as a snapshot's `p` (samples for attribute creation)."""
    ops = operations.get("o") or {}
    return {"p": {**(operations.get("c") or {}), **(ops.get("$setOnce") or {}), **(ops.get("$set") or {}),
                  **(ops.get("$add") or {})}}


def _newer(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two snapshots of one user: the newer one's values, both ones' extremes."""
    key_a = f"{a.get('t') or ''}|{a.get('s') or ''}"
    key_b = f"{b.get('t') or ''}|{b.get('s') or ''}"
    newer, older = (b, a) if key_b >= key_a else (a, b)
    merged = dict(newer)
    merged["f"] = min(filter(None, (a.get("f"), b.get("f"))), default=None)
    merged["l"] = max(filter(None, (a.get("l"), b.get("l"))), default=None)
    if not merged.get("e"):
        merged["e"] = older.get("e")
    return merged
