"""Pure functions turning Amplitude events into Brevo event payloads (SPEC §5); no I/O here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .rows import ExportRow, decode_object

MAX_EVENT_PROPERTIES_BYTES = 50 * 1024
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class MappingRules:
    """The parts of the config remapping needs, frozen so a reload swaps them atomically."""

    event_mapping: dict[str, str]
    property_mapping: dict[str, str]
    ext_id_field: str = "user_id"
    email_property: str = "email"
    anonymous: str = "skip"  # skip | use_device_id

    @classmethod
    def from_config(cls, cfg: Any) -> MappingRules:
        return cls(
            event_mapping=dict(cfg.event_mapping),
            property_mapping=dict(cfg.property_mapping),
            ext_id_field=cfg.identity.ext_id,
            email_property=cfg.identity.email_property,
            anonymous=cfg.identity.anonymous,
        )


@dataclass(frozen=True)
class BrevoEvent:
    """A remapped event ready for `/events` or `/events/batch`, with the key that deduplicates it."""

    dedupe_key: str
    payload: dict[str, Any]


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


def brevo_key(key: str) -> str:
    """A property key in Brevo's alphabet `[A-Za-z0-9_-]{1,255}`: other characters become `_`."""
    cleaned = _BAD_KEY_CHARS.sub("_", key)[:255]
    return cleaned or "_"


def clean_properties(props: dict[str, Any]) -> dict[str, Any]:
    """Rewrite keys (recursively) to Brevo's alphabet.

    A key that is already valid keeps its name; a rewritten key that would collide with another key gets
    a numeric suffix (`utm.source` next to `utm_source` becomes `utm_source_2`), so no value is lost and
    no valid key ends up holding another key's value.
    """
    names = {key: brevo_key(str(key)) for key in props}
    taken = {new for key, new in names.items() if new == key}
    out: dict[str, Any] = {}
    for key, value in props.items():
        new_key = names[key]
        if new_key != key:
            if new_key in taken:
                n = 2
                while f"{new_key[:250]}_{n}" in taken or f"{new_key[:250]}_{n}" in names:
                    n += 1
                new_key = f"{new_key[:250]}_{n}"
            taken.add(new_key)
        if isinstance(value, dict):
            value = clean_properties(value)
        elif isinstance(value, list):
            value = [clean_properties(v) if isinstance(v, dict) else v for v in value]
        out[new_key] = value
    return out


def iso_utc(timestamp: str | None) -> str | None:
    """Amplitude's `2024-01-15 10:23:45.123000` (UTC, or with `T`/`Z`/offset) → `2024-01-15T10:23:45.123Z`.

    None when the text is not a valid date-time: every field is checked (`2024-13-45 99:00:00` is refused),
    so a bad `event_time` is dead-lettered here rather than refused by Brevo as a whole batch.
    """
    if not timestamp:
        return None
    text = timestamp.strip()
    try:
        # 3.11's fromisoformat reads the export format (space separator, no zone), `T`, `Z` and offsets.
        parsed = datetime.fromisoformat(text)
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


def identifiers_for(row: ExportRow, user_props: dict[str, Any], rules: MappingRules) -> dict[str, str] | None:
    ext_id = getattr(row, rules.ext_id_field, None) if rules.ext_id_field in ("user_id", "device_id") else None
    if ext_id is None and rules.ext_id_field not in ("user_id", "device_id"):
        ext_id = user_props.get(rules.ext_id_field)
    if not ext_id and rules.anonymous == "use_device_id":
        ext_id = row.device_id
    if not ext_id:
        return None
    identifiers = {"ext_id": str(ext_id)}
    email = user_props.get(rules.email_property)
    if isinstance(email, str) and _EMAIL.match(email.strip()):
        identifiers["email_id"] = email.strip().lower()
    return identifiers


def remap_event(row: ExportRow, rules: MappingRules) -> RemapResult:
    """One export row → a Brevo event, a skip, or a rejection with its reason."""
    event_type = row.event_type
    if event_type is None:
        return Rejected("row has no event_type", _row_summary(row))
    name = rules.event_mapping.get(event_type)
    if name is None:
        return Skipped("unmapped")
    key = row.dedupe_key
    if not key:
        return Rejected("row has neither $insert_id nor uuid", _row_summary(row))
    user_props = decode_object(row.user_properties)
    identifiers = identifiers_for(row, user_props, rules)
    if identifiers is None:
        if rules.anonymous == "use_device_id":
            # Anonymous events were asked for, but this row cannot be attributed to anyone.
            return Rejected("row has neither a user id nor a device_id", _row_summary(row))
        return Skipped("anonymous")
    event_date = iso_utc(row.event_time)
    if event_date is None:
        return Rejected(f"unparseable event_time {row.event_time!r}", _row_summary(row))
    props = clean_properties(decode_object(row.event_properties))
    props["amplitude_event_type"] = event_type
    props["amplitude_insert_id"] = key
    size = len(orjson.dumps(props))
    if size > MAX_EVENT_PROPERTIES_BYTES:
        return Rejected(
            f"event_properties is {size} bytes, over Brevo's 50 KB limit",
            {**_row_summary(row), "event_properties_bytes": size},
        )
    payload: dict[str, Any] = {"event_name": name, "event_date": event_date, "identifiers": identifiers}
    contact = {}
    for amp_prop, attribute in rules.property_mapping.items():
        if amp_prop == rules.email_property or attribute.lower() in ("email", "ext_id"):
            continue  # identity, carried in `identifiers`
        value = contact_value(user_props.get(amp_prop))
        if value is not None:
            contact[attribute] = value
    if contact:
        payload["contact_properties"] = contact
    payload["event_properties"] = props
    return BrevoEvent(dedupe_key=key, payload=payload)


def _row_summary(row: ExportRow) -> dict[str, Any]:
    return {
        "event_type": row.event_type,
        "uuid": row.uuid,
        "insert_id": row.insert_id,
        "user_id": row.user_id,
        "event_time": row.event_time,
        "server_upload_time": row.server_upload_time,
    }
