"""Brevo contact attributes: the account's model (`GET /contacts/attributes`) and value conversion to its types.

Brevo silently ignores a value that does not fit its attribute's type (reference/brevo-api.md §1.1, §2.3), so
every mapped value is converted here first, and one that cannot be is dropped with a reason the caller logs
(naming user and attribute) instead of vanishing at Brevo:

    date              "YYYY-MM-DD" (UTC) from ISO dates and date-times (T/Z/offset), Amplitude's
                      "YYYY-MM-DD HH:MM:SS.ffffff", epoch milliseconds (numbers, 12-13 digit strings) and
                      epoch seconds (10 digits)
    float             a JSON number (integral values as ints) from numbers and numeric strings
    boolean           true/false from booleans, 1/0 and "true"/"false"/"yes"/"no"/"1"/"0"/"on"/"off"
    text, id, user    a string: integral floats without ".0", booleans "true"/"false", lists joined with ",",
                      objects as compact JSON
    category          the enumeration's integer value, from a label (case-insensitive) or a value
    multiple-choice   a list of existing options, from a list or a comma-separated string
    SMS, WHATSAPP,    (by name, whatever their type) E.164 "+<digits>" from "+..." or "00..." numbers; a
    LANDLINE_NUMBER   national number has no country code and is dropped

Blank strings are absent for every type but text (an empty Amplitude property says nothing about a date).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson

__all__ = [
    "PHONE_ATTRIBUTES",
    "Attribute",
    "AttributeModel",
    "AttributesError",
    "Converted",
    "Dropped",
    "convert",
    "ensure_attributes",
    "identity_target",
    "infer_type",
    "load_attributes",
]

PHONE_ATTRIBUTES = frozenset({"SMS", "WHATSAPP", "LANDLINE_NUMBER"})
IDENTITY_TARGETS = frozenset({"email", "ext_id"})
# Categories whose values Brevo computes: nothing the daemon sends can set them.
COMPUTED_CATEGORIES = frozenset({"calculated", "global"})
# Names the daemon may create (reference §2.3).
CREATABLE_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
BUDGET = "brevo_contacts"

# A date, optionally with a time ("T" or Amplitude's space), fraction and zone. Parsed by fromisoformat, which
# alone would also take forms no source sends (week dates, "20240301").
_DATE_TIME_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d+)?)?)?)(Z|[+-]\d{2}(?::?\d{2})?)?)?$",
    re.IGNORECASE,
)
_EPOCH_DIGITS = re.compile(r"^\d{10}$|^\d{12,13}$")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})
_PHONE_SEPARATORS = re.compile(r"[ ().\-]")
_MAX_INT_AS_INT = 2**53  # integral floats below this are sent as JSON integers


@dataclass(frozen=True)
class Attribute:
    """One Brevo contact attribute: `type` is an open string (Brevo adds types: `multiple-choice` was one)."""

    name: str  # upper-case
    type: str
    category: str = "normal"
    enumeration: tuple[tuple[int, str], ...] = ()  # (value, label) of a category attribute
    options: tuple[str, ...] = ()  # multiCategoryOptions of a multiple-choice attribute


class AttributeModel:
    """The account's attributes by upper-case name (names compare case-insensitively)."""

    def __init__(self, attributes: Iterable[Attribute] = ()) -> None:
        self._by_name: dict[str, Attribute] = {a.name.upper(): a for a in attributes}

    @classmethod
    def from_response(cls, body: Any) -> AttributeModel:
        """From the body of `GET /contacts/attributes`: `{"attributes": [{name, category, type, ...}]}`."""
        items = body.get("attributes") if isinstance(body, dict) else None
        attributes: list[Attribute] = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
                continue
            enumeration = tuple(
                (entry["value"], str(entry.get("label", "")))
                for entry in item.get("enumeration") or []
                if isinstance(entry, dict) and _is_int(entry.get("value"))
            )
            options = tuple(str(o) for o in item.get("multiCategoryOptions") or [] if isinstance(o, str | int))
            kind = item.get("type")
            attributes.append(Attribute(
                name=item["name"].strip().upper(),
                type=str(kind).lower() if kind is not None else "",
                category=str(item.get("category") or "normal").lower(),
                enumeration=enumeration,
                options=options,
            ))
        return cls(attributes)

    def get(self, name: str) -> Attribute | None:
        return self._by_name.get(name.strip().upper())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().upper() in self._by_name

    def __iter__(self) -> Iterator[Attribute]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def with_attribute(self, attribute: Attribute) -> AttributeModel:
        """A new model with `attribute` added (or replaced); this one is left as it is."""
        return AttributeModel([*self._by_name.values(), attribute])

    def __repr__(self) -> str:
        return f"AttributeModel({', '.join(f'{a.name}:{a.type}' for a in self)})"


@dataclass(frozen=True, slots=True)
class Converted:
    """The value to send, already of the attribute's Brevo type."""

    value: Any


@dataclass(frozen=True, slots=True)
class Dropped:
    """The value cannot be sent; `reason` is a sentence for the warning (e.g. "'maybe' is not a boolean")."""

    reason: str


Conversion = Converted | Dropped


class AttributesError(RuntimeError):
    """Brevo refused `GET /contacts/attributes` (not retriable: a 4xx other than 401/403/429)."""


# ---------------------------------------------------------------------------------------------------------
# conversion


def convert(model: AttributeModel, attribute: str, value: Any) -> Conversion | None:
    """`value` converted for the Brevo attribute `attribute`; None when the value is absent (not written)."""
    if value is None:
        return None
    definition = model.get(attribute)
    name = attribute.strip().upper()
    if definition is None:
        return Dropped(f"{name} does not exist in Brevo")
    if definition.category in COMPUTED_CATEGORIES:
        return Dropped(f"{name} is a {definition.category} attribute, computed by Brevo")
    kind = definition.type
    if isinstance(value, str) and not value.strip() and kind not in ("text", "id", "user"):
        return None
    if name in PHONE_ATTRIBUTES:
        return _phone(name, value)
    if kind == "date":
        return _date(value)
    if kind == "float":
        return _float(value)
    if kind == "boolean":
        return _boolean(value)
    if kind == "category":
        return _category(definition, value)
    if kind == "multiple-choice":
        return _multiple_choice(definition, value)
    if kind in ("text", "id", "user"):
        return Converted(_text(value))
    # A type this version does not know: scalars as they are, Brevo decides (objects as JSON text).
    return Converted(_text(value) if isinstance(value, dict) else value)


def _show(value: Any) -> str:
    """The value as a warning quotes it: strings, lists and objects quoted, numbers as they are."""
    text = repr(value) if isinstance(value, str) else _text(value)
    if isinstance(value, list | tuple | dict):
        text = repr(text)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: float | int) -> float | int:
    """A finite number, integral values as ints (12, 12.0 and "12" all send 12: one value, one write)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < _MAX_INT_AS_INT:
        return int(value)
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(_number(value)) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value if v is not None)
    if isinstance(value, dict):
        return orjson.dumps(value, default=str).decode()
    if isinstance(value, datetime):
        return _utc(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _epoch_date(number: float, *, digits: int) -> date | None:
    seconds = number / 1000 if digits >= 12 else number
    try:
        return datetime.fromtimestamp(seconds, UTC).date()
    except (OverflowError, OSError, ValueError):
        return None


def parse_date(value: Any) -> date | None:
    """The UTC date of `value` in one of the accepted date forms (module docstring), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        return _utc(value).date()
    if isinstance(value, date):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            return None
        digits = len(str(int(value)))
        return _epoch_date(value, digits=digits) if digits == 10 or digits in (12, 13) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if (len(text) == 24 and text[23] in "Zz" and text[19] == "." and text[10] in "Tt " and text[4] == "-"
            and text[7] == "-" and text[13] == ":" and text[16] == ":" and text.isascii()):
        # What the export's times become (`2024-01-15T10:23:45.123Z`, iso_utc): in UTC already, so the
        # date is its own once fromisoformat (C) validates every field; anything it refuses goes the long way.
        try:
            return datetime.fromisoformat(text[:23]).date()
        except ValueError:
            pass
    if _EPOCH_DIGITS.match(text):
        return _epoch_date(int(text), digits=len(text))
    match = _DATE_TIME_RE.match(text)
    if match is None:
        return None
    day, clock, zone = match.groups()
    try:
        if clock is None:
            return date.fromisoformat(day)
        clock = re.sub(r"[.,](\d{1,6})\d*", r".\1", clock)  # at most microseconds
        if len(clock) == 2:
            clock += ":00"
        zone = "+00:00" if zone is None or zone.upper() == "Z" else zone
        return datetime.fromisoformat(f"{day}T{clock}{zone}").astimezone(UTC).date()
    except ValueError:
        return None


def _date(value: Any) -> Conversion:
    parsed = parse_date(value)
    if parsed is None:
        return Dropped(f"{_show(value)} is not a date")
    return Converted(parsed.isoformat())


def _float(value: Any) -> Conversion:
    number: float | int | None = None
    if _is_number(value):
        number = value
    elif isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        number = float(value.strip())
    if number is None or not math.isfinite(number):
        return Dropped(f"{_show(value)} is not a number")
    return Converted(_number(number))


def _boolean(value: Any) -> Conversion:
    if isinstance(value, bool):
        return Converted(value)
    if _is_int(value) and value in (0, 1):
        return Converted(value == 1)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return Converted(True)
        if word in _FALSE:
            return Converted(False)
    return Dropped(f"{_show(value)} is not a boolean")


def _category(definition: Attribute, value: Any) -> Conversion:
    if isinstance(value, str):
        wanted = value.strip().lower()
        for number, label in definition.enumeration:
            if label.strip().lower() == wanted:
                return Converted(number)
        if re.fullmatch(r"[+-]?\d+", wanted):
            value = int(wanted)
    if _is_int(value) and any(number == value for number, _ in definition.enumeration):
        return Converted(value)
    labels = ", ".join(label for _, label in definition.enumeration) or "none"
    return Dropped(f"{_show(value)} is not an option of {definition.name} (options: {labels})")


def _multiple_choice(definition: Attribute, value: Any) -> Conversion:
    if isinstance(value, str):
        given = [part.strip() for part in value.split(",")]
    elif isinstance(value, list | tuple):
        given = [_text(part).strip() for part in value if part is not None]
    else:
        given = [_text(value).strip()]
    exact = set(definition.options)
    folded = {option.lower(): option for option in definition.options}
    chosen: list[str] = []
    unknown: list[str] = []
    for part in filter(None, given):
        option = part if part in exact else folded.get(part.lower())
        if option is None:
            unknown.append(part)
        elif option not in chosen:
            chosen.append(option)
    if unknown:
        names = ", ".join(repr(u) for u in unknown[:5])
        return Dropped(f"{names} {'is not an option' if len(unknown) == 1 else 'are not options'} "
                       f"of {definition.name} (options: {', '.join(definition.options) or 'none'})")
    return Converted(chosen)


def _phone(name: str, value: Any) -> Conversion:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return Dropped(f"{_show(value)} is not a phone number")
    text = str(value).strip()
    if text.startswith("+"):
        rest = text[1:]
    elif text.startswith("00"):
        rest = text[2:]
    else:
        digits = _PHONE_SEPARATORS.sub("", text)
        if digits.isdigit():
            return Dropped(f"{_show(value)} has no country code ({name} needs +<country code><number>)")
        return Dropped(f"{_show(value)} is not a phone number")
    rest = rest.replace("(0)", "", 1)  # "+44 (0)7771234567": the trunk prefix is not dialled from abroad
    digits = _PHONE_SEPARATORS.sub("", rest)
    if not digits.isdigit() or not 8 <= len(digits) <= 15:
        return Dropped(f"{_show(value)} is not a phone number (8 to 15 digits after the country prefix)")
    return Converted("+" + digits)


def infer_type(value: Any) -> str:
    """The Brevo type to create an attribute with, from a sample value: boolean, float, date or text.

    Dates are inferred from textual dates only (ISO, Amplitude's, plain `YYYY-MM-DD`): a digit string could as
    well be a phone number or an id, so it makes a text attribute.
    """
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "float"
    if isinstance(value, datetime | date):
        return "date"
    if isinstance(value, str) and _DATE_TIME_RE.match(value.strip()) and parse_date(value) is not None:
        return "date"
    return "text"


def identity_target(name: str) -> bool:
    """True for `property_mapping` targets that are the contact's identity (email, ext_id), not attributes."""
    return name.strip().lower() in IDENTITY_TARGETS


# ---------------------------------------------------------------------------------------------------------
# Brevo calls (every /contacts/* request spends the contacts budget)


async def load_attributes(client: Any) -> AttributeModel:
    """`GET /contacts/attributes` through `client` (a BrevoClient, which retries what is retriable)."""
    response = await client.call("GET", "/contacts/attributes", budget=BUDGET)
    if not 200 <= response.status < 300:
        raise AttributesError(f"GET /contacts/attributes: HTTP {response.status} {response.message}")
    return AttributeModel.from_response(response.body)


async def ensure_attributes(
    client: Any, model: AttributeModel, wanted: Mapping[str, Any], *, create: bool, log: Any,
) -> tuple[AttributeModel, list[str]]:
    """Check that every attribute of `wanted` (target name -> a sample value or None) exists in `model`.

    Returns the model (with the attributes created, when `create`) and the upper-case names still missing.
    With `create`, each missing one is created as a `normal` attribute typed by `infer_type(sample)` (`text`
    without a sample) and logged `brevo.attribute.created`; a refusal is logged
    `brevo.attribute.create_failed` with Brevo's message and the name stays missing. Without `create`,
    nothing is logged here: the caller reports what is missing. Identity targets are skipped.
    """
    missing: list[str] = []
    for raw_name, sample in wanted.items():
        name = raw_name.strip().upper()
        if identity_target(name) or name in model or name in missing:
            continue
        if not create:
            missing.append(name)
            continue
        kind = infer_type(sample) if sample is not None else "text"
        if not CREATABLE_NAME_RE.match(name):
            log.warning("brevo.attribute.create_failed", name=name, type=kind,
                        error="not a valid Brevo attribute name (A-Z, 0-9 and '_', starting with a letter)")
            missing.append(name)
            continue
        response = await client.call("POST", f"/contacts/attributes/normal/{name}", {"type": kind}, budget=BUDGET)
        if 200 <= response.status < 300:
            model = model.with_attribute(Attribute(name=name, type=kind, category="normal"))
            log.info("brevo.attribute.created", name=name, type=kind)
        elif response.code == "duplicate_parameter":
            # Created meanwhile (another process, a person): take its definition from Brevo.
            model = await load_attributes(client)
            if name not in model:
                log.warning("brevo.attribute.create_failed", name=name, type=kind, error=response.message)
                missing.append(name)
        else:
            log.warning("brevo.attribute.create_failed", name=name, type=kind, status=response.status,
                        error=response.message)
            missing.append(name)
    return model, missing

