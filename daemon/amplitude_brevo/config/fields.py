"""Field types and validators shared by the config sections, and the section base model."""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
from datetime import UTC, date, datetime
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    model_validator,
)

from amplitude_brevo.durations import (
    DURATION_FORMS,
    HOUR_FORMS,
    format_duration,
    format_hour,
    parse_duration,
    parse_hour,
)
from amplitude_brevo.secrets import Secret

EVENT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
ATTRIBUTE_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
DAY = 86400.0
HOUR = 3600.0


# ---------------------------------------------------------------------------------------------------------
# Field types. Validators raise ValueError with a message written for the operator; the key path is added
# when errors are formatted. Values are echoed only for keys that never hold secrets.


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def not_bool(value: Any) -> Any:
    # YAML `true` would otherwise pass as the integer 1 (bool subclasses int).
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; use {DURATION_FORMS}") from None


_DurationBase = Annotated[
    float, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str, when_used="json")
]
Duration = Annotated[_DurationBase, Field(ge=0)]
PositiveDuration = Annotated[_DurationBase, Field(gt=0)]
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def _byte_size(value: Any) -> int:
    not_bool(value)
    if isinstance(value, int):
        return value
    match = _SIZE.match(value.lower()) if isinstance(value, str) else None
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"{_show(value)} is not a size; use bytes (1048576) or a number with KB, MB, GB, KiB, "
                         "MiB, GiB (512MiB, 1GiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


ByteSize = Annotated[int, BeforeValidator(_byte_size), Field(gt=0)]
Int = Annotated[int, BeforeValidator(not_bool)]
PositiveInt = Annotated[int, BeforeValidator(not_bool), Field(gt=0)]
ListId = PositiveInt
Fraction = Annotated[float, BeforeValidator(not_bool), Field(gt=0, le=1)]


def _text_id(value: Any) -> Any:
    # Cohort ids are strings; an all-digit id written unquoted arrives as an int.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


CohortId = Annotated[str, BeforeValidator(_text_id), AfterValidator(_non_empty)]
NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]


def _event_name(value: str) -> str:
    if not EVENT_NAME_RE.match(value):
        raise ValueError(
            f"{_show(value)} is not a valid Brevo event name (letters, digits, '_' and '-', 1-255 characters)"
        )
    return value


EventName = Annotated[str, AfterValidator(_event_name)]


def _attribute_name(value: str) -> str:
    if not ATTRIBUTE_NAME_RE.match(value):
        raise ValueError(
            f"{_show(value)} is not a valid Brevo attribute name (A-Z, 0-9 and '_', starting with a letter)"
        )
    return value


AttributeName = Annotated[str, AfterValidator(_attribute_name)]


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(value: str) -> str:
    # The URL itself is never echoed: it may carry user:password@.
    value = value.strip()
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise ValueError("must be an https:// URL (http:// only for a loopback host)")
    if scheme == "http" and not _is_loopback(host):
        raise ValueError(
            f"http:// is refused for host {host!r}; use https:// "
            "(plain http is allowed only for 127.0.0.0/8, ::1 and localhost)"
        )
    return value.rstrip("/")


Url = Annotated[str, AfterValidator(_url)]

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>\d{1,5})$")


def split_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[v6]:port"`` -> ``(host, port)``; ValueError when it is neither."""
    bad = ValueError(f"{_show(value)} is not a host:port address (e.g. 127.0.0.1:8787 or [::1]:8787)")
    m = _LISTEN_RE.match(value.strip())
    if not m:
        raise bad
    port = int(m["port"])
    if port > 65535:
        raise bad
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(m["v6"])
        except ValueError:
            raise bad from None
        return m["v6"], port
    host = m["host"]
    # Dotted digits must be a real IPv4 address (127.0.0.300 is a typo, not a hostname).
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise bad from None
    elif not _HOSTNAME_RE.match(host):
        raise bad
    return host, port


def _listen(value: str) -> str:
    split_listen(value)
    return value.strip()


Listen = Annotated[str, AfterValidator(_listen)]


def _cidr(value: str) -> str:
    try:
        # strict=False: 10.0.0.1/8 means the network 10.0.0.0/8; a bare address is a /32 (or /128).
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{_show(value)} is not an IP network (e.g. 10.0.0.0/8 or ::1/128)") from None


Cidr = Annotated[str, AfterValidator(_cidr)]


def _export_start(value: Any) -> datetime | None:
    """An hour in UTC. Also takes what YAML itself parses (unquoted timestamps, dates) and ISO times."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        try:
            moment = parse_hour(value)
        except ValueError as exc:
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(f"{exc} (or an ISO-8601 time, truncated to its hour)") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    else:
        raise ValueError(f"must be an hour string: {HOUR_FORMS}")
    # Export works in whole hours; the first window is the hour containing the given time.
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


StartHour = Annotated[
    datetime | None,
    BeforeValidator(_export_start),
    PlainSerializer(format_hour, return_type=str, when_used="json-unless-none"),
]


# ---------------------------------------------------------------------------------------------------------
# Reading the models: which fields are sections, secrets or optional; the base of every section.


def unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the type that does the work."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def is_model(tp: Any) -> bool:
    tp = unwrap(tp)
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def accepts_none(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def is_secret(tp: Any) -> bool:
    tp = unwrap(tp)
    return tp is Secret or (get_origin(tp) is list and unwrap(get_args(tp)[0]) is Secret)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if data is None:  # an empty YAML section (`sync:`) means "all defaults"
            data = {}
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, info in cls.model_fields.items():
            if name in data and data[name] is None and not accepts_none(info.annotation):
                del data[name]  # `key: null` means "the default", as in the shipped config.yaml
            if name not in data and info.is_required() and is_model(info.annotation):
                # Validate a missing section as empty, so the operator hears about the required keys
                # inside it by their full path rather than "connectors.brevo is required".
                data[name] = {}
        return cls._prepare(data)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook for raw-input defaults that depend on other keys of the same section."""
        return data


def lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def empty_secret_to_none(value: Any) -> Any:
    # `${WEBHOOK_TOKEN:-}` expands to "": the same as not configured.
    return None if value == "" or (isinstance(value, Secret) and not value) else value


def secrets_wanted(info: ValidationInfo) -> bool:
    """False while validating for a command that needs no secrets (``load_config(..., secrets=False)``)."""
    return not (isinstance(info.context, dict) and info.context.get("secrets") is False)


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of: {', '.join(choices)}"
