"""Pure functions turning Amplitude export rows into Brevo payloads (SPEC §5); no I/O here.

Fan-out: one decoded row is offered to every enabled consumer (`CONSUMERS`, chosen by `MappingRules.sinks`),
each turning it into the payload of one sink: today the Brevo event (`remap_event`); next a contact update,
an order, an engagement tick. `map_row` runs them all on the row decoded once, and appends what each makes
to that sink's `SinkOutput`. Adding a consumer is one function and one entry in `CONSUMERS`.

Performance notes (this runs for every exported row, see bench/export_throughput.py):

* A remapped event is carried as its encoded JSON body (`BrevoEvent.body`, exact-size `bytes`): the sink
  joins bodies into `/events/batch` requests without re-encoding, and a full queue holds ~0.6 KiB per event
  instead of a few KiB of dicts. `BrevoEvent.payload` decodes it on demand (logs, tests).
* Everything that depends only on the rules (the JSON prefix per event name, the user properties to read,
  the contact attributes) is computed once per `MappingRules`.
* Key rewriting is planned once per key set (most rows share a handful of key sets).
* The `identifiers`/`contact_properties` fragment is memoized per person; a user property that changes with
  every event (a `last_active`) is found out and left out of the memo's key (`_People`).
* The export timestamp format is validated by `datetime.fromisoformat` (C) and reformatted by slicing.
"""

from __future__ import annotations

import copy
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
import orjson

from ..jsonbytes import dumps_kept
from .rows import SOURCE_COLUMNS, ExportRow, row_decoder_for

_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode

MAX_EVENT_PROPERTIES_BYTES = 50 * 1024
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_IDENTITY_FIELDS = ("user_id", "device_id")
_CACHE_LIMIT = 4096  # entries per memo below; cleared when full (pathological data then costs what it did)
# People fragments per rules (~0.6 KiB each with its key, in each reader child), and each user's last contact
# values (the memo's misses compare them, see _People).
_PEOPLE_LIMIT = 2048
# A contact attribute that changed in more than half of the last this many misses of a user already seen is
# volatile (see _People).
_VOLATILE_WINDOW = 256
_encode = msgspec.json.Encoder().encode

EVENTS_SINK = "brevo_events"
EVENTS_NAMESPACE = "events:"  # dedupe-record keys of Brevo events: `events:<$insert_id or uuid>`
ORDERS_SINK = "brevo_orders"
ORDERS_NAMESPACE = "orders:"  # dedupe-record keys of Brevo orders (the order id is the key without it)
PROFILES_SINK = "profiles"  # the profile folder (contacts/folder.py): snapshots and revenue into the state file
CONTACTS_SINK = "brevo_contacts"  # fed from the state file's pending contacts (contacts/outbox.py), not by rows


class _UserPropsBase(msgspec.Struct):
    """Base of the per-rules struct that decodes only the user properties remapping reads."""


def enabled_sinks(cfg: Any) -> tuple[str, ...]:
    """The sinks exported rows are mapped for, by the config: the Brevo events sink when `sync.events` is on
    and something is mapped; orders when `sync.revenue` and `revenue.orders`; the profile folder (and behind
    it the contacts sink) when user properties are synced or revenue totals are written to attributes."""
    sinks = []
    if cfg.sync.events and cfg.event_mapping:
        sinks.append(EVENTS_SINK)
    if cfg.sync.revenue and cfg.revenue.orders:
        sinks.append(ORDERS_SINK)
    if profiles_enabled(cfg):
        sinks.append(PROFILES_SINK)
    return tuple(sinks)


def counts_revenue(cfg: Any) -> bool:
    """Revenue totals are kept (and written to `revenue.ltv_attribute` / `count_attribute`)."""
    return bool(cfg.sync.revenue and (cfg.revenue.ltv_attribute or cfg.revenue.count_attribute))


def profiles_enabled(cfg: Any) -> bool:
    return bool((cfg.sync.user_properties and cfg.property_mapping) or counts_revenue(cfg))


@dataclass(frozen=True)
class MappingRules:
    """The parts of the config remapping needs, frozen so a reload swaps them atomically."""

    event_mapping: Mapping[str, str]
    property_mapping: Mapping[str, str]
    ext_id_field: str = "user_id"
    email_property: str = "email"
    anonymous: str = "skip"  # skip | use_device_id
    sinks: tuple[str, ...] = (EVENTS_SINK,)  # the consumers rows are mapped for (names in CONSUMERS), in order
    count_revenue: bool = False  # profile snapshots come with revenue facts (revenue totals are kept)
    # Derived once from the fields above (see __post_init__).
    _consumers: tuple[Consumer, ...] = field(init=False, repr=False, compare=False)
    _user_decoder: msgspec.json.Decoder = field(init=False, repr=False, compare=False)
    _email_attr: str = field(init=False, repr=False, compare=False)
    _ext_id_attr: str | None = field(init=False, repr=False, compare=False)
    _contact: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    # (property_mapping key, struct attribute, top-level column or None) of every mapped contact attribute
    _sources: tuple[tuple[str, str, str | None], ...] = field(init=False, repr=False, compare=False)
    row_decoder: msgspec.json.Decoder = field(init=False, repr=False, compare=False)
    _heads: dict[str, bytes] = field(init=False, repr=False, compare=False)
    _people: _People = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        registry = consumers()
        unknown = [name for name in self.sinks if name not in registry]
        if unknown or len(set(self.sinks)) != len(self.sinks):
            raise ValueError(f"sinks must be distinct names among {sorted(registry)}, not {list(self.sinks)}")
        wanted: dict[str, str] = {}  # user property name → struct attribute

        def attr(name: str) -> str:
            return wanted.setdefault(name, f"p{len(wanted)}")

        email_attr = attr(self.email_property)
        ext_id_attr = attr(self.ext_id_field) if self.ext_id_field not in _IDENTITY_FIELDS else None
        mapped = [
            (amp_prop, attribute)
            for amp_prop, attribute in self.property_mapping.items()
            # identity, carried in `identifiers`
            if amp_prop != self.email_property and attribute.lower() not in ("email", "ext_id")
        ]
        contact = tuple((attr(amp_prop), attribute) for amp_prop, attribute in mapped)
        sources = tuple((amp_prop, attr(amp_prop), SOURCE_COLUMNS.get(amp_prop)) for amp_prop, _ in mapped)
        columns = tuple(column for _, _, column in sources if column is not None) if PROFILES_SINK in self.sinks else ()
        struct = msgspec.defstruct(
            "UserProperties", [(a, Any, None) for a in wanted.values()], bases=(_UserPropsBase,),
            rename={a: name for name, a in wanted.items()},
        )
        setattr_ = object.__setattr__
        setattr_(self, "sinks", tuple(self.sinks))
        setattr_(self, "_consumers", tuple(registry[name] for name in self.sinks))
        setattr_(self, "_user_decoder", msgspec.json.Decoder(struct))
        setattr_(self, "_email_attr", email_attr)
        setattr_(self, "_ext_id_attr", ext_id_attr)
        setattr_(self, "_contact", contact)
        setattr_(self, "_sources", sources)
        setattr_(self, "row_decoder", row_decoder_for(columns))
        # `{"event_name":"…","event_date":"` per mapped type: the start of every body of that type.
        setattr_(self, "_heads", {
            event_type: b'{"event_name":' + orjson.dumps(name) + b',"event_date":"'
            for event_type, name in self.event_mapping.items()
        })
        setattr_(self, "_people", _People(tuple(wanted.values()), email_attr, ext_id_attr, contact))

    @classmethod
    def from_config(cls, cfg: Any) -> MappingRules:
        return cls(
            event_mapping=dict(cfg.event_mapping),
            property_mapping=dict(cfg.property_mapping),
            ext_id_field=cfg.identity.ext_id,
            email_property=cfg.identity.email_property,
            anonymous=cfg.identity.anonymous,
            sinks=enabled_sinks(cfg),
            count_revenue=counts_revenue(cfg),
        )

    def people(self, ext_id: Any, user: Any) -> bytes:
        """`"identifiers":{…}[,"contact_properties":{…}]` for this person, as JSON, memoized: see `_People`."""
        return self._people.fragment(ext_id, user)

    def user_properties(self, raw: Any) -> Any:
        """The user properties remapping reads, as attributes (None when absent, or not an object)."""
        try:
            return self._user_decoder.decode(raw)
        except msgspec.ValidationError:
            return self._user_decoder.decode(b"{}")


class _People:
    """`MappingRules.people`: the people fragment, `orjson.dumps(people_dict(…))` without its braces, memoized.

    The same user comes back event after event with the same properties, so the fragment is memoized by the
    user properties as JSON (values that compare equal in Python but convert differently, `1`, `1.0` and
    `true`, stay apart). But a property may change with every event (a `last_active`): then the memo would
    always miss. So the misses are watched: a contact attribute that changed, since the same user's last
    miss, in more than half of them becomes volatile. Volatile attributes are left out of the memo's key and
    what it holds; their pieces (`,"NAME":value`) are encoded on each call and joined with the memoized
    segments between them. The bytes are the same whichever attributes are volatile. (Unless two properties
    map to one contact attribute: in a dict the last value wins, at the first one's place. Then nothing is
    volatile: pieces would repeat the name.)"""

    __slots__ = ("_all", "_email_attr", "_ext_id_attr", "_contact", "_names", "_contact_values", "_memo",
                 "_recent", "_changes", "_compared", "_volatile", "_key_values", "_volatile_values",
                 "_volatile_names", "_volatile_attr", "_watched")

    def __init__(self, attrs: tuple[str, ...], email_attr: str, ext_id_attr: str | None,
                 contact: tuple[tuple[str, str], ...]) -> None:
        self._all = attrs  # every attribute of the user-properties struct
        self._email_attr = email_attr
        self._ext_id_attr = ext_id_attr
        self._contact = contact  # (struct attribute, contact attribute) in output order
        self._names = tuple(b"," + orjson.dumps(attribute) + b":" for _, attribute in contact)
        self._contact_values = _values_getter(tuple(attr for attr, _ in contact))
        self._memo: dict[tuple[Any, bytes], Any] = {}  # see _entry
        self._recent: dict[str, tuple[Any, ...]] = {}  # ext_id → its contact values at its last miss
        self._volatile: tuple[int, ...] = ()  # indices in `contact`
        self._watched = len({attribute for _, attribute in contact}) == len(contact)  # see above
        self._set_volatile(())

    def _set_volatile(self, volatile: tuple[int, ...]) -> None:
        """Key and memoize without the contact attributes at these indices (emptying the memo)."""
        self._volatile = volatile
        left_out = {self._contact[i][0] for i in volatile}
        kept = tuple(attr for attr in self._all if attr not in left_out)
        self._key_values = _values_getter(kept) if volatile else None
        self._volatile_values = _values_getter(tuple(self._contact[i][0] for i in volatile))
        self._volatile_names = tuple(self._names[i] for i in volatile)
        self._volatile_attr = self._contact[volatile[0]][0] if volatile else None
        self._changes = [0] * len(self._contact)
        self._compared = 0
        self._memo.clear()

    def fragment(self, ext_id: Any, user: Any) -> bytes:
        """The people fragment (a method, not `__call__`: CPython calls methods faster)."""
        # A non-text ext_id can only come from a user property, so it is in the encoded properties already
        # (and may be unhashable); the ext_id attribute is never volatile.
        key_values = self._key_values
        encoded = _encode(user) if key_values is None else _encode(key_values(user))
        key = (ext_id if type(ext_id) is str else None, encoded)
        try:
            entry = self._memo[key]
        except KeyError:
            if self._observe(ext_id, user):  # the volatile attributes changed, and the key with them
                return self.fragment(ext_id, user)
            entry = self._entry(ext_id, user)
            if len(self._memo) >= _PEOPLE_LIMIT:
                self._memo.clear()
            self._memo[key] = entry
        if type(entry) is bytes:  # nothing volatile
            return entry
        prefix, identifiers, tail = entry
        names = self._volatile_names
        if len(names) == 1:  # the usual case (a `last_active`)
            parts: Sequence[bytes] = (_piece(names[0], getattr(user, self._volatile_attr)), tail[0])
        else:
            values = self._volatile_values(user)
            parts = [part for name, value, segment in zip(names, values, tail, strict=True)
                     for part in (_piece(name, value), segment)]
        if prefix is not None:
            return b"".join((prefix, *parts, b"}"))
        return _people_fragment(identifiers, b"".join(parts))

    def _entry(self, ext_id: Any, user: Any) -> bytes | tuple[bytes | None, bytes, tuple[bytes, ...]]:
        """What the memo holds for this person: the fragment; or, with volatile attributes, `(prefix,
        identifiers, tail)`: the contact pieces between the volatile ones make k + 1 segments, `tail` the last
        k of them; `prefix` is the fragment up to the first volatile piece when the first segment is not
        empty (else None: whether `contact_properties` is there, and where its first comma goes, depends on
        the volatile values)."""
        if not self._volatile:
            return orjson.dumps(people_dict(ext_id, user, self._email_attr, self._contact))[1:-1]
        raw_email = getattr(user, self._email_attr)
        identifiers = orjson.dumps({"identifiers": _identifiers(ext_id, raw_email)})[1:-1]
        segments = []
        parts: list[bytes] = []
        volatile = set(self._volatile)
        for i, (name, value) in enumerate(zip(self._names, self._contact_values(user), strict=True)):
            if i in volatile:
                segments.append(b"".join(parts))
                parts = []
            else:
                parts.append(_piece(name, value))
        segments.append(b"".join(parts))
        first = segments[0]
        prefix = b"".join((identifiers, b',"contact_properties":{', first[1:])) if first else None
        return prefix, identifiers, tuple(segments[1:])

    def _observe(self, ext_id: Any, user: Any) -> bool:
        """Count which contact values changed since this user's last miss; every `_VOLATILE_WINDOW` misses
        of users seen before, make those that changed in more than half of them volatile. True when the
        volatile attributes changed."""
        if type(ext_id) is not str or not self._watched:
            return False
        values = self._contact_values(user)
        previous = self._recent.get(ext_id)
        if len(self._recent) >= _PEOPLE_LIMIT:
            self._recent.clear()
        self._recent[ext_id] = values
        if previous is None:
            return False
        changes = self._changes
        for i, (before, now) in enumerate(zip(previous, values, strict=True)):
            if before != now or type(before) is not type(now):
                changes[i] += 1
        self._compared += 1
        if self._compared < _VOLATILE_WINDOW:
            return False
        volatile = tuple(
            i for i, count in enumerate(changes)
            if count * 2 > self._compared and self._contact[i][0] != self._ext_id_attr
        )
        self._changes = [0] * len(self._contact)
        self._compared = 0
        if volatile == self._volatile:
            return False
        self._set_volatile(volatile)
        return True


def people_dict(ext_id: Any, user: Any, email_attr: str,
                contact: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The people fragment as a dict: `identifiers`, then the contact attributes that have a value (converted
    by `contact_value`), in `contact`'s order."""
    part: dict[str, Any] = {"identifiers": _identifiers(ext_id, getattr(user, email_attr))}
    values = {}
    for attr, attribute in contact:
        value = contact_value(getattr(user, attr))
        if value is not None:
            values[attribute] = value
    if values:
        part["contact_properties"] = values
    return part


def _identifiers(ext_id: Any, raw_email: Any) -> dict[str, str]:
    identifiers = {"ext_id": str(ext_id)}
    email = email_id(raw_email)
    if email is not None:
        identifiers["email_id"] = email
    return identifiers


def _piece(name: bytes, value: Any) -> bytes:
    """`,"NAME":value` of one contact attribute (`name` is `,"NAME":`), the value converted by `contact_value`;
    empty without a value."""
    kind = type(value)
    if kind is not str and kind is not int:  # the common cases first: nothing to convert
        value = contact_value(value)
        if value is None:
            return b""
    return name + orjson.dumps(value)


def _people_fragment(identifiers: bytes, contact: bytes) -> bytes:
    """The fragment from `"identifiers":{…}` and the contact pieces joined (each with its leading comma)."""
    if not contact:
        return identifiers
    return b"".join((identifiers, b',"contact_properties":{', contact[1:], b"}"))


def _values_getter(attrs: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function of a user-properties struct returning the values of `attrs` as a tuple (in C)."""
    if not attrs:
        return lambda user: ()
    if len(attrs) == 1:
        (attr,) = attrs
        return lambda user: (getattr(user, attr),)
    return operator.attrgetter(*attrs)


class BrevoEvent:
    """A remapped event ready for `/events` or `/events/batch`, with the key that deduplicates it.

    `body` is the Brevo payload as compact JSON (exact-size bytes, what is sent and dead-lettered);
    `payload` decodes it. Built from a dict, the dict is encoded once. Treat it as immutable.
    """

    __slots__ = ("dedupe_key", "body")

    dedupe_key: str
    body: bytes

    def __init__(self, dedupe_key: str, payload: bytes | Mapping[str, Any]) -> None:
        self.dedupe_key = dedupe_key
        self.body = payload if type(payload) is bytes else dumps_kept(payload)

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as a dict, decoded on demand."""
        return orjson.loads(self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BrevoEvent):
            return NotImplemented
        return self.dedupe_key == other.dedupe_key and self.body == other.body

    def __hash__(self) -> int:
        return hash((self.dedupe_key, self.body))

    def __repr__(self) -> str:
        return f"BrevoEvent(dedupe_key={self.dedupe_key!r}, payload={self.body.decode('utf-8', 'replace')})"


@dataclass(frozen=True)
class Skipped:
    """Not forwarded by configuration (unmapped type, anonymous with `skip`); counted, not dead-lettered."""

    reason: str


@dataclass(frozen=True)
class Rejected:
    """Bad input: dead-lettered with the reason."""

    reason: str
    item: dict[str, Any] = field(default_factory=dict)


RemapResult = BrevoEvent | Skipped | Rejected

SKIPPED_UNMAPPED = Skipped("unmapped")
SKIPPED_ANONYMOUS = Skipped("anonymous")


def brevo_key(key: str) -> str:
    """A property key in Brevo's alphabet `[A-Za-z0-9_-]{1,255}`: other characters become `_`."""
    cleaned = _BAD_KEY_CHARS.sub("_", key)[:255]
    return cleaned or "_"


def _rename_plan(keys: tuple[Any, ...]) -> tuple[str, ...] | None:
    """The new name of each key (see `clean_properties`), or None when every key keeps its name."""
    names = {key: brevo_key(str(key)) for key in keys}
    if all(new == key for key, new in names.items()):
        return None
    taken = {new for key, new in names.items() if new == key}
    plan = []
    for key in keys:
        new_key = names[key]
        if new_key != key:
            if new_key in taken:
                n = 2
                while f"{new_key[:250]}_{n}" in taken or f"{new_key[:250]}_{n}" in names:
                    n += 1
                new_key = f"{new_key[:250]}_{n}"
            taken.add(new_key)
        plan.append(new_key)
    return tuple(plan)


_PLANS: dict[tuple[Any, ...], tuple[str, ...] | None] = {}


def _cleaned(props: dict[str, Any], nested: bool) -> dict[str, Any]:
    """`clean_properties` on a dict we own: returned as is when no key changes (values cleaned in place).
    `nested` False promises that no value is a dict or a list holding one."""
    keys = tuple(props)
    try:
        plan = _PLANS[keys]
    except KeyError:
        plan = _rename_plan(keys)
        if len(_PLANS) >= _CACHE_LIMIT:
            _PLANS.clear()
        _PLANS[keys] = plan
    if plan is not None:
        props = dict(zip(plan, props.values(), strict=True))
    if nested:
        for key, value in props.items():
            if type(value) is dict:
                props[key] = _cleaned(value, True)
            elif type(value) is list:
                props[key] = [_cleaned(v, True) if type(v) is dict else v for v in value]
    return props


def clean_properties(props: dict[str, Any]) -> dict[str, Any]:
    """Rewrite keys (recursively) to Brevo's alphabet; returns a new dict, `props` is left as it was.

    A key that is already valid keeps its name; a rewritten key that would collide with another key gets
    a numeric suffix (`utm.source` next to `utm_source` becomes `utm_source_2`), so no value is lost and
    no valid key ends up holding another key's value. Dicts directly inside a list are cleaned too.
    """
    return _cleaned(copy.deepcopy(props), True)  # _cleaned works in place on what it is given


_fromisoformat = datetime.fromisoformat


def iso_utc(timestamp: str | None) -> str | None:
    """Amplitude's `2024-01-15 10:23:45.123000` (UTC, or with `T`/`Z`/offset) → `2024-01-15T10:23:45.123Z`.

    None when the text is not a valid date-time: every field is checked (`2024-13-45 99:00:00` is refused),
    so a bad `event_time` is dead-lettered here rather than refused by Brevo as a whole batch.
    """
    if not timestamp:
        return None
    if (
        len(timestamp) == 26 and timestamp[10] == " " and timestamp[19] == "." and timestamp[4] == "-"
        and timestamp[7] == "-" and timestamp[13] == ":" and timestamp[16] == ":" and timestamp.isascii()
    ):
        # The export's own format, `YYYY-MM-DD HH:MM:SS.ffffff`: `fromisoformat` (C) validates every field
        # and the text already holds the answer; anything else (zones, other shapes) takes the general path.
        try:
            naive = _fromisoformat(timestamp).tzinfo is None
        except ValueError:
            naive = False
        if naive:
            return f"{timestamp[:10]}T{timestamp[11:23]}Z"
    return _iso_utc(timestamp)


def _iso_utc(timestamp: str) -> str | None:
    text = timestamp.strip()
    try:
        # 3.11's fromisoformat reads the export format (space separator, no zone), `T`, `Z` and offsets.
        parsed = _fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # export timestamps carry no zone and are UTC
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return (
        f"{parsed.year:04d}-{parsed.month:02d}-{parsed.day:02d}T{parsed.hour:02d}:{parsed.minute:02d}:"
        f"{parsed.second:02d}.{parsed.microsecond // 1000:03d}Z"
    )


def contact_value(value: Any) -> str | int | None:
    """Brevo's batch items take only string or integer contact properties: convert the rest (SPEC §7)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        # Lists are sent as text (SPEC §5), each element converted like a scalar: `["a", true, 2.5]` → `a,true,2.5`.
        return ",".join(str(item) for v in value if (item := contact_value(v)) is not None)
    return orjson.dumps(value).decode()


_EMAILS: dict[str, str | None] = {}


def email_id(value: Any) -> str | None:
    """The lower-cased address when `value` is a valid email, else None (memoized: users recur)."""
    if type(value) is not str:
        return None
    try:
        return _EMAILS[value]
    except KeyError:
        pass
    text = value.strip()
    result = text.lower() if _EMAIL.match(text) else None
    if len(_EMAILS) >= _CACHE_LIMIT:
        _EMAILS.clear()
    _EMAILS[value] = result
    return result


_EVENT_PROPERTIES = b',"event_properties":'


def identity_of(row: ExportRow, rules: MappingRules) -> tuple[Any, Any] | Skipped | Rejected:
    """Whom a row is about (SPEC §5): `(ext_id, user properties)` — the ext_id from the row or a user
    property, the properties decoded as `rules.user_properties` (the email is `email_id(getattr(user,
    rules._email_attr))`) — or why it is nobody's: skipped as anonymous, or rejected."""
    try:
        user = rules.user_properties(row.user_properties)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # e.g. invalid UTF-8 in a text
        return Rejected(f"user_properties cannot be decoded: {exc}", row_summary(row))
    ext_id_attr = rules._ext_id_attr
    ext_id = getattr(row, rules.ext_id_field) if ext_id_attr is None else getattr(user, ext_id_attr)
    if not ext_id and rules.anonymous == "use_device_id":
        ext_id = row.device_id
    if not ext_id:
        if rules.anonymous == "use_device_id":
            # Anonymous events were asked for, but this row cannot be attributed to anyone.
            return Rejected("row has neither a user id nor a device_id", row_summary(row))
        return SKIPPED_ANONYMOUS
    return ext_id, user


def row_subject(row: ExportRow, rules: MappingRules, noun: str = "row") -> tuple[str, Any, Any, str] | Skipped | Rejected:
    """What every keyed Brevo item needs of a row: `(dedupe key, ext_id, user properties, event time as ISO
    UTC)`, or why the row cannot be one (skipped as anonymous, rejected for a missing key or a bad time)."""
    key = row.insert_id or row.uuid
    if not key:
        return Rejected(f"{noun} has neither $insert_id nor uuid", row_summary(row))
    person = identity_of(row, rules)
    if type(person) is not tuple:
        return person
    at = iso_utc(row.event_time)
    if at is None:
        return Rejected(f"unparseable event_time {row.event_time!r}", row_summary(row))
    return key, person[0], person[1], at


def remap_event(row: ExportRow, rules: MappingRules) -> RemapResult:
    """One export row → a Brevo event, a skip, or a rejection with its reason."""
    event_type = row.event_type
    if event_type is None:
        return Rejected("row has no event_type", row_summary(row))
    head = rules._heads.get(event_type)
    if head is None:
        return SKIPPED_UNMAPPED
    subject = row_subject(row, rules)
    if type(subject) is not tuple:
        return subject
    key, ext_id, user, event_date = subject
    try:
        props_json = _encoded_properties(bytes(row.event_properties), event_type, key)
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        # Invalid UTF-8 inside a value, integers beyond 64 bits, … : Brevo could not take them either.
        return Rejected(f"event_properties cannot be re-encoded: {exc}", row_summary(row))
    size = len(props_json)
    if size > MAX_EVENT_PROPERTIES_BYTES:
        return Rejected(
            f"event_properties is {size} bytes, over Brevo's 50 KB limit",
            {**row_summary(row), "event_properties_bytes": size},
        )
    # {"event_name":…,"event_date":"…","identifiers":{…},"contact_properties":{…},"event_properties":{…}}
    # as one exact-size bytes (a join allocates its result at size, unlike orjson's own output). The date
    # is ASCII digits and separators: nothing to escape.
    try:
        people = rules._people.fragment(ext_id, user)  # rules.people(), less a call
    except (TypeError, ValueError) as exc:  # e.g. an integer beyond 64 bits
        return Rejected(f"user_properties cannot be re-encoded: {exc}", row_summary(row))
    return BrevoEvent(key, b"".join(
        (head, event_date.encode(), b'",', people, _EVENT_PROPERTIES, props_json, b"}")
    ))


# ---------------------------------------------------------------------------------------------------------
# fan-out: every enabled consumer, on each row decoded once


@dataclass(frozen=True, slots=True)
class Consumer:
    """What one sink wants of an export row.

    `remap(row, rules)` returns the sink's output for the row (an object with `dedupe_key` and `body`, like
    `BrevoEvent`), a `Skipped` (counted under its reason), a `Rejected` (dead-lettered) or None (the row is
    not for this sink: nothing counted). It gets every row, whatever the other consumers made of it (a
    profile consumer sees the rows events skip as unmapped). The row's `event_properties` and
    `user_properties` are still raw JSON: a consumer decodes what it reads, and only for rows it keeps. The
    user-properties struct (`rules.user_properties`) is shared; once two consumers decode it, memoize that
    decode per row (on the identity of `row.user_properties`) so a row's properties are decoded once.
    """

    sink: str  # the sink's name: the key of its output (MappedChunk.outputs)
    namespace: str | None  # prefix of its dedupe-record keys; None: idempotent writes, no dedupe key
    remap: Callable[[ExportRow, MappingRules], Any] | None = None
    # Instead of `remap`: a consumer that sees many rows before it makes anything (the profile collector
    # keeps the newest row per user). `collect(rules)` returns a `Collector`.
    collect: Callable[[MappingRules], Collector] | None = None


class Collector(Protocol):
    """A collecting consumer's state: `add(row)` takes each row (returning None, a Skipped or a Rejected like
    `remap`); `finish(out)` appends what the rows added since the last `finish` make to `out` and starts
    afresh. `len()` is what it holds (0: `finish` would write nothing)."""

    def add(self, row: ExportRow) -> Any: ...

    def finish(self, out: SinkOutput) -> None: ...

    def __len__(self) -> int: ...


@dataclass(slots=True)
class SinkOutput:
    """What the rows of a chunk became for one sink, in row order."""

    keys: list[str | None] = field(default_factory=list)  # dedupe-record keys in the sink's namespace, or None
    bodies: list[bytes] = field(default_factory=list)  # the Brevo payloads, compact JSON


def map_row(row: ExportRow, rules: MappingRules, outputs: Sequence[SinkOutput],
            skipped: dict[str, int]) -> Rejected | None:
    """Offer one decoded row to every consumer of `rules`, `outputs[i]` collecting what `rules.sinks[i]`
    makes of it and `skipped` counting skip reasons. Returns the row's rejection, if any consumer rejects it
    (the first one's: a row is dead-lettered once, whatever the others say), else None.

    One row on its own (collecting consumers finish with it); the reader binds the same loop once per chunk
    through `row_mapper`.
    """
    mapper = _fan_out(rules, dict(zip(rules.sinks, outputs, strict=True)), skipped, None)
    rejected = mapper(row)
    mapper.finish()
    return rejected


class RowMapper(Protocol):
    def __call__(self, row: ExportRow) -> Rejected | None: ...

    def finish(self) -> None: ...


def _finish_nothing() -> None:
    return None


def collectors_for(rules: MappingRules) -> dict[str, Collector]:
    """A fresh collector of each collecting consumer of `rules`, by sink name (none: an empty dict)."""
    return {c.sink: c.collect(rules) for c in rules._consumers if c.collect is not None}


def finish_collectors(collectors: Mapping[str, Collector], outputs: dict[str, SinkOutput]) -> None:
    """Write what each collector holds to its sink's output in `outputs` (created when missing)."""
    for sink, collector in collectors.items():
        out = outputs.get(sink)
        if out is None:
            out = outputs[sink] = SinkOutput()
        collector.finish(out)


def row_mapper(rules: MappingRules, outputs: Mapping[str, SinkOutput], skipped: dict[str, int],
               collectors: Mapping[str, Collector] | None = None) -> RowMapper:
    """`map_row` bound to a chunk's outputs (one per name in `rules.sinks`) and skip counts: what the reader's
    loop calls for each row, then `.finish()` once after the chunk's last row (collecting consumers write
    their outputs then). With one remapping consumer (the usual case) it is a closure without the loop: the
    fan-out costs a row one function call.

    `collectors` (from `collectors_for`): the collecting consumers' state, kept by the caller across chunks;
    the rows are added to them and `.finish()` leaves them be: the caller writes them with
    `finish_collectors` when it chooses (the reader: once per member)."""
    consumers = rules._consumers
    if len(consumers) != 1 or consumers[0].remap is None:
        return _fan_out(rules, outputs, skipped, collectors)
    (consumer,) = consumers
    remap, namespace = consumer.remap, consumer.namespace
    out = outputs[consumer.sink]
    add_key, add_body = out.keys.append, out.bodies.append

    def map_one(row: ExportRow) -> Rejected | None:
        result = remap(row, rules)
        kind = type(result)
        if kind is Skipped:
            skipped[result.reason] = skipped.get(result.reason, 0) + 1
        elif kind is Rejected:
            return result
        elif result is not None:
            key = result.dedupe_key
            add_key(None if namespace is None or key is None else namespace + key)
            add_body(result.body)
        return None

    map_one.finish = _finish_nothing  # type: ignore[attr-defined]
    return map_one  # type: ignore[return-value]


def _fan_out(rules: MappingRules, outputs: Mapping[str, SinkOutput], skipped: dict[str, int],
             carried: Mapping[str, Collector] | None) -> RowMapper:
    """`row_mapper` for several consumers, or a collecting one: each row goes to every consumer in turn."""
    steps: list[tuple[Callable[[ExportRow], Any], str | None, SinkOutput]] = []
    collectors = collectors_for(rules) if carried is None else carried
    for consumer in rules._consumers:
        out = outputs[consumer.sink]
        if consumer.collect is not None:
            steps.append((collectors[consumer.sink].add, consumer.namespace, out))
        else:
            remap = consumer.remap
            assert remap is not None
            steps.append((lambda row, remap=remap: remap(row, rules), consumer.namespace, out))

    def map_all(row: ExportRow) -> Rejected | None:
        rejected = None
        for step, namespace, out in steps:
            result = step(row)
            if result is None:
                continue
            kind = type(result)
            if kind is Skipped:
                skipped[result.reason] = skipped.get(result.reason, 0) + 1
            elif kind is Rejected:
                if rejected is None:
                    rejected = result
            else:
                key = result.dedupe_key
                out.keys.append(None if namespace is None or key is None else namespace + key)
                out.bodies.append(result.body)
        return rejected

    def finish() -> None:
        for sink, collector in collectors.items():
            collector.finish(outputs[sink])

    map_all.finish = _finish_nothing if carried is not None else finish  # type: ignore[attr-defined]
    return map_all  # type: ignore[return-value]


CONSUMERS: dict[str, Consumer] = {
    EVENTS_SINK: Consumer(EVENTS_SINK, EVENTS_NAMESPACE, remap_event),
}


_registered = False


def consumers() -> dict[str, Consumer]:
    """CONSUMERS, with the consumers defined in modules of their own (orders, profiles), which import this
    one: registered on first use, so that whichever module is imported first, all are there."""
    global _registered
    if not _registered:
        _registered = True
        from .profiles import ProfileCollector
        from .revenue import remap_order

        CONSUMERS.setdefault(ORDERS_SINK, Consumer(ORDERS_SINK, ORDERS_NAMESPACE, remap_order))
        CONSUMERS.setdefault(PROFILES_SINK, Consumer(PROFILES_SINK, None, collect=ProfileCollector))
    return CONSUMERS


def _encoded_properties(raw: bytes, event_type: str, key: str) -> bytes:
    """event_properties (+ the amplitude_* keys) as JSON, decoded, cleaned and re-encoded."""
    try:
        props = _decode_dict(raw)
    except msgspec.ValidationError:
        props = {}  # `null`, or not an object
    # Only a `{` past the first byte can open a nested object whose keys need rewriting too.
    nested = raw.find(b"{", 1) >= 0
    props = _cleaned(props, nested)
    props["amplitude_event_type"] = event_type
    props["amplitude_insert_id"] = key
    return orjson.dumps(props)


def row_summary(row: ExportRow) -> dict[str, Any]:
    return {
        "event_type": row.event_type,
        "uuid": row.uuid,
        "insert_id": row.insert_id,
        "user_id": row.user_id,
        "event_time": row.event_time,
        "server_upload_time": row.server_upload_time,
    }

