"""Amplitude's ingest protocol, pure: parse and validate HTTP V2 / Batch / Identify / Group Identify requests and
build the answers Amplitude gives (reference/amplitude-api.md §2-§5).

Why exact shapes matter: SDKs act on the answer's fields, not on the status line. The Python SDK reads
``body["code"]``; on a 400 it drops the whole batch when ``missing_field`` is present, else drops the indexes in
``events_with_missing_fields`` / ``events_with_invalid_fields`` / ``events_with_invalid_id_lengths`` /
``silenced_events`` and resends the rest; it raises on an ``error`` starting ``"Invalid API key:"``; it halves its
batch on 413 and delays ``throttled_events`` by 30 s on 429. So a request-level problem carries
``missing_field``, an event-level one never does, and every refused event is named by its index.

A request is accepted whole or not at all (Amplitude ingests nothing of a request it answers 400): the
:class:`Accepted` result holds every item, normalised as Amplitude would store it (strings cut at 1,024
characters, ids shorter than the minimum removed).

Decisions where the reference is silent are marked "(decision)".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from amplitude_brevo.ingest.api_keys import KeyRing, fingerprint

MiB = 1024 * 1024
# (decision) "20 MB" / "1 MB" read as binary megabytes; a 21,000,000-byte body is over either reading.
MAX_BODY_BYTES = 20 * MiB
MAX_EVENT_BYTES = 1 * MiB
MAX_EVENTS = 2000
# (decision) /identify documents no cap: the events cap is used. /groupidentify documents 1024 and 1 MB.
MAX_IDENTIFICATIONS = 2000
MAX_GROUP_IDENTIFICATIONS = 1024
MAX_GROUP_BODY_BYTES = 1 * MiB
MAX_STRING = 1024
MAX_DEPTH = 40
DEFAULT_MIN_ID_LENGTH = 5

# Refused as user_id/device_id whatever the other id says (compared case-insensitively: (decision)).
PLACEHOLDER_IDS = frozenset(
    {
        "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "",
        "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
    }
)  # fmt: skip

_STRING_FIELDS = frozenset(
    {
        "user_id", "device_id", "event_type", "insert_id", "app_version", "platform", "os_name", "os_version",
        "device_brand", "device_manufacturer", "device_model", "carrier", "country", "region", "city", "dma",
        "language", "productId", "revenueType", "currency", "ip", "idfa", "idfv", "adid", "android_id",
        "android_app_set_id", "user_agent", "partner_id", "library", "version_name", "start_version",
    }
)  # fmt: skip
_INT_FIELDS = frozenset({"time", "event_id", "session_id", "quantity"})
_NUMBER_FIELDS = frozenset({"price", "revenue", "location_lat", "location_lng"})
_OBJECT_FIELDS = frozenset(
    {"event_properties", "user_properties", "groups", "group_properties", "plan", "ingestion_metadata"}
)
_BOOL_FIELDS = frozenset({"$skip_user_properties_sync"})
_INT64 = (-(2**63), 2**63 - 1)

USER_OPS = frozenset(
    {"$set", "$setOnce", "$add", "$append", "$prepend", "$preInsert", "$postInsert", "$remove", "$unset", "$clearAll"}
)
GROUP_OPS = frozenset({"$set", "$setOnce", "$add", "$append", "$prepend", "$unset"})

# `error` strings, as Amplitude words them.
MISSING_BODY = "Missing request body"
INVALID_JSON = "Invalid JSON request body"
MISSING_FIELD = "Request missing required field"
INVALID_EVENT_JSON = "Invalid event JSON"
INVALID_FIELDS = "Invalid field values on some events"
INVALID_API_KEY = "Invalid API key"
TOO_LARGE = "Payload too large"
THROTTLED = "Too many requests for some devices and users"
MISSING_EVENT = "missing_event"  # Identify: `identification` missing or malformed (§4)
EPS_THRESHOLD = 30


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: the status and the JSON body (or plain text, for Identify's 200)."""

    status: int
    body: dict[str, Any] | str


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request that passed validation: every item, normalised. ``kind`` is the endpoint (``httpapi``,
    ``batch``, ``identify``, ``groupidentify``); ``options`` is the HTTP V2 ``options`` object if sent."""

    kind: str
    items: list[dict[str, Any]]
    key_fingerprint: str
    payload_size_bytes: int
    options: dict[str, Any] | None = None


@dataclass(slots=True)
class _Problems:
    """Event indexes by field, per category of the 400 body."""

    missing: dict[str, list[int]] = field(default_factory=dict)
    invalid: dict[str, list[int]] = field(default_factory=dict)
    id_lengths: dict[str, list[int]] = field(default_factory=dict)
    not_objects: list[int] = field(default_factory=list)

    def add(self, table: dict[str, list[int]], name: str, index: int) -> None:
        indexes = table.setdefault(name, [])
        if not indexes or indexes[-1] != index:
            indexes.append(index)

    def __bool__(self) -> bool:
        return bool(self.missing or self.invalid or self.id_lengths or self.not_objects)

    def answer(self) -> Answer:
        invalid = dict(self.invalid)
        if self.not_objects:
            invalid["event"] = sorted(set(invalid.get("event", [])) | set(self.not_objects))
        if self.not_objects:
            error = INVALID_EVENT_JSON
        elif invalid or self.id_lengths:
            error = INVALID_FIELDS
        else:
            error = MISSING_FIELD
        body: dict[str, Any] = {"code": 400, "error": error}
        if invalid:
            body["events_with_invalid_fields"] = invalid
        if self.missing:
            body["events_with_missing_fields"] = self.missing
        if self.id_lengths:
            body["events_with_invalid_id_lengths"] = self.id_lengths
        return Answer(400, body)


# ---------------------------------------------------------------------- answers


def bad_request(error: str, **fields: Any) -> Answer:
    return Answer(400, {"code": 400, "error": error, **fields})


def missing_field(name: str) -> Answer:
    """A request-level field is missing: the SDK drops the whole batch (it cannot be fixed by resending)."""
    return bad_request(MISSING_FIELD, missing_field=name)


def invalid_api_key(key: str) -> Answer:
    """``Invalid API key: …``: the SDK matches the ``"Invalid API key:"`` prefix and stops sending.

    (decision) Amplitude echoes the key; this answer names its fingerprint instead, so the key never lands in a
    proxy's or a client's log through us.
    """
    return bad_request(f"{INVALID_API_KEY}: key with fingerprint {fingerprint(key)} is not accepted")


def too_large() -> Answer:
    return Answer(413, {"code": 413, "error": TOO_LARGE})


def forbidden() -> Answer:
    return Answer(403, {"code": 403, "error": "Forbidden"})


def throttled(count: int) -> Answer:
    """The 429 a full spool answers: every item throttled, no user or device named.

    Naming none is Amplitude's project-level throttle (back off globally); listing every index makes the SDKs
    delay each event by 30 s instead of resending at once.
    """
    return Answer(
        429,
        {
            "code": 429,
            "error": THROTTLED,
            "eps_threshold": EPS_THRESHOLD,
            "throttled_devices": {},
            "throttled_users": {},
            "throttled_events": list(range(count)),
            "exceeded_daily_quota_users": {},
            "exceeded_daily_quota_devices": {},
        },
    )


def unavailable() -> Answer:
    """503: "failed internally; retrying is safe" (§2) — the spool could not commit, nothing was kept."""
    return Answer(503, {"code": 503, "error": "Service unavailable"})


def success(accepted: Accepted, server_upload_time_ms: int) -> Answer:
    """200 once the request is durable. Identify's 200 is the plain text ``success`` (§4: not documented as
    JSON; treated as success whatever it holds)."""
    if accepted.kind in ("identify", "groupidentify"):
        return Answer(200, "success")
    return Answer(
        200,
        {
            "code": 200,
            "events_ingested": len(accepted.items),
            # (decision) the size after gzip decompression, as the event count is.
            "payload_size_bytes": accepted.payload_size_bytes,
            "server_upload_time": server_upload_time_ms,
        },
    )


# ---------------------------------------------------------------------- HTTP V2 and Batch


def parse_events(body: bytes, keys: KeyRing, *, kind: str = "httpapi") -> Accepted | Answer:
    """Validate an HTTP V2 or Batch request body (already decompressed and under :data:`MAX_BODY_BYTES`).

    Checks in this order, the first failure answering: empty body; JSON object; ``api_key`` present; key
    accepted; ``events`` present (an empty array counts as missing: (decision)); events an array; at most
    :data:`MAX_EVENTS` (413); ``options``; then every event, all problems reported together.
    """
    if not body.strip():
        return bad_request(MISSING_BODY)
    if len(body) > MAX_BODY_BYTES:
        return too_large()
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return bad_request(INVALID_JSON)
    if not isinstance(request, dict):
        return bad_request(INVALID_JSON)
    key = request.get("api_key")
    if not isinstance(key, str) or not key:
        return missing_field("api_key")
    if not keys.accepts(key):
        return invalid_api_key(key)
    events = request.get("events")
    if events is None or events == []:
        return missing_field("events")
    if not isinstance(events, list):
        return bad_request(INVALID_EVENT_JSON)
    if len(events) > MAX_EVENTS:
        return too_large()
    options = request.get("options")
    min_id_length = DEFAULT_MIN_ID_LENGTH
    if options is not None:
        # (decision) a malformed `options` is the request's JSON being wrong: 400 without indexes.
        if not isinstance(options, dict):
            return bad_request(INVALID_JSON)
        value = options.get("min_id_length", DEFAULT_MIN_ID_LENGTH)
        if not _is_int(value) or value < 1:
            return bad_request(INVALID_JSON)
        min_id_length = value
    problems = _Problems()
    # Only a body over 1 MiB can hold an event over 1 MiB: skip measuring otherwise.
    measure = len(body) > MAX_EVENT_BYTES
    normalised = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            problems.not_objects.append(index)
            continue
        if measure and len(orjson.dumps(event)) > MAX_EVENT_BYTES:
            # (decision) reported under the field name "event".
            problems.add(problems.invalid, "event", index)
            continue
        normalised.append(_check_event(event, index, min_id_length, problems))
    if problems:
        return problems.answer()
    return Accepted(kind, normalised, fingerprint(key), len(body), options)


def _check_event(event: dict[str, Any], index: int, min_id_length: int, problems: _Problems) -> dict[str, Any]:
    out = _check_common(event, index, problems)
    event_type = out.get("event_type")
    if event_type is None or event_type == "":  # (decision) an empty name is no name
        problems.add(problems.missing, "event_type", index)
    time = out.get("time")
    if time is not None and not (_is_int(time) and _INT64[0] <= time <= _INT64[1]):
        problems.add(problems.invalid, "time", index)
    if event_type == "$identify" and isinstance(out.get("user_properties"), dict):
        if not _valid_operations(out["user_properties"], USER_OPS):
            problems.add(problems.invalid, "user_properties", index)
    _check_ids(out, index, min_id_length, problems)
    return out


def _check_common(item: dict[str, Any], index: int, problems: _Problems) -> dict[str, Any]:
    """Type checks of the documented fields, strings cut to 1,024 characters at any depth.

    (decision) The reference says strings are "limited to 1024 characters" and the SDK truncates before
    sending; it does not say Amplitude refuses a longer one, so a longer string is cut, as it would have been
    by the SDK, and the event kept. ``null`` stands for an absent optional field. Unknown fields pass through.
    """
    out: dict[str, Any] = {}
    for name, value in item.items():
        name = _cut(name)
        if value is None:
            out[name] = value
            continue
        if name in _STRING_FIELDS:
            ok = isinstance(value, str)
        elif name in _INT_FIELDS:
            ok = _is_int(value) and (name != "session_id" or _INT64[0] <= value <= _INT64[1])
        elif name in _NUMBER_FIELDS:
            ok = _is_number(value)
        elif name in _OBJECT_FIELDS:
            ok = isinstance(value, dict)
        elif name in _BOOL_FIELDS:
            ok = isinstance(value, bool)
        else:
            ok = True
        if name == "time":
            ok = True  # reported by the caller, with its own range check
        if not ok:
            problems.add(problems.invalid, name, index)
            out[name] = value
            continue
        try:
            out[name] = _normalise(value, 1)
        except _TooDeep:
            problems.add(problems.invalid, name, index)
            out[name] = value
    return out


def _check_ids(item: dict[str, Any], index: int, min_id_length: int, problems: _Problems) -> None:
    """user_id / device_id: a placeholder makes the item invalid; one shorter than the minimum is removed
    from it (§2), and the item is invalid only if no usable id is left."""
    present = [name for name in ("user_id", "device_id") if item.get(name) is not None]
    if not present:
        # (decision) reported as a missing "user_id": there is no field named "user_id or device_id".
        problems.add(problems.missing, "user_id", index)
        return
    usable = 0
    short = []
    for name in present:
        value = item[name]
        if not isinstance(value, str):
            continue  # already reported by the type check
        if value.lower() in PLACEHOLDER_IDS:
            problems.add(problems.invalid, name, index)
        elif len(value) < min_id_length:
            short.append(name)
        else:
            usable += 1
    if short and not usable:
        for name in short:
            problems.add(problems.id_lengths, name, index)
    else:
        for name in short:
            del item[name]


class _TooDeep(Exception):
    pass


def _normalise(value: Any, depth: int) -> Any:
    """``value`` with every string (keys too) cut to 1,024 characters; raises _TooDeep past 40 levels."""
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise _TooDeep
        return {_cut(k): _normalise(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if depth > MAX_DEPTH:
            raise _TooDeep
        return [_normalise(v, depth + 1) for v in value]
    return value


def _cut(text: str) -> str:
    return text if len(text) <= MAX_STRING else text[:MAX_STRING]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _valid_operations(properties: dict[str, Any], allowed: frozenset[str]) -> bool:
    """Either only plain keys (an implicit ``$set``) or only operation keys; each operation an object (but
    ``$clearAll``); ``$add`` values numbers; a property in one operation only (§4)."""
    operations = [k for k in properties if k.startswith("$")]
    if not operations:
        return True
    if len(operations) != len(properties):
        return False
    seen: set[str] = set()
    for op, arguments in properties.items():
        if op not in allowed:
            return False
        if op == "$clearAll":
            continue
        if not isinstance(arguments, dict):
            return False
        if op == "$add" and not all(_is_number(v) for v in arguments.values()):
            return False
        if seen & arguments.keys():
            return False
        seen |= arguments.keys()
    return True


# ---------------------------------------------------------------------- Identify and Group Identify


def parse_identify(
    fields: Mapping[str, str], keys: KeyRing, *, payload_size_bytes: int, group: bool = False
) -> Accepted | Answer:
    """Validate an Identify (``group=False``) or Group Identify request from its form or query fields.

    ``identification`` is a JSON object or an array of objects. Identify: ``user_id`` or ``device_id`` (the
    5-character minimum and the placeholders as for events), ``user_properties`` plain keys or operations.
    Group Identify: ``group_type`` and ``group_value`` strings, ``group_properties`` with the group operations,
    at most 1,024 per request and 1 MB.
    """
    if group and payload_size_bytes > MAX_GROUP_BODY_BYTES:
        return too_large()
    key = fields.get("api_key")
    if not key:
        return missing_field("api_key")
    if not keys.accepts(key):
        return invalid_api_key(key)
    raw = fields.get("identification")
    if not raw:
        return bad_request(MISSING_EVENT)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return bad_request(MISSING_EVENT)
    items = [parsed] if isinstance(parsed, dict) else parsed
    if not isinstance(items, list) or not items:
        return bad_request(MISSING_EVENT)
    if len(items) > (MAX_GROUP_IDENTIFICATIONS if group else MAX_IDENTIFICATIONS):
        return too_large()
    problems = _Problems()
    normalised = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.not_objects.append(index)
            continue
        out = _check_common(item, index, problems)
        if group:
            _check_group(out, index, problems)
        else:
            if out.get("paying") is not None and not isinstance(out["paying"], str | bool):
                problems.add(problems.invalid, "paying", index)
            properties = out.get("user_properties")
            if isinstance(properties, dict) and not _valid_operations(properties, USER_OPS):
                problems.add(problems.invalid, "user_properties", index)
            _check_ids(out, index, DEFAULT_MIN_ID_LENGTH, problems)
        normalised.append(out)
    if problems:
        return problems.answer()
    return Accepted("groupidentify" if group else "identify", normalised, fingerprint(key), payload_size_bytes)


def _check_group(item: dict[str, Any], index: int, problems: _Problems) -> None:
    for name in ("group_type", "group_value"):
        value = item.get(name)
        if value is None:
            problems.add(problems.missing, name, index)
        elif not isinstance(value, str) or not value:
            problems.add(problems.invalid, name, index)
    properties = item.get("group_properties")
    if isinstance(properties, dict) and not _valid_operations(properties, GROUP_OPS):
        problems.add(problems.invalid, "group_properties", index)
