"""Typed configuration: one frozen pydantic model per YAML section; load_config() reports every error at once."""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from amplitude_brevo.durations import (
    DURATION_FORMS,
    HOUR_FORMS,
    format_duration,
    format_hour,
    parse_duration,
    parse_hour,
)
from amplitude_brevo.secrets import Secret

__all__ = [
    "BUDGET_NAMES",
    "PLAN_BUDGETS",
    "Config",
    "ConfigError",
    "RateLimit",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_hour",
    "render_config",
    "secret_values",
]

Loc = tuple[str | int, ...]

AMPLITUDE_HOSTS = {
    "US": {"ingest_url": "https://api2.amplitude.com", "api_url": "https://amplitude.com"},
    "EU": {"ingest_url": "https://api.eu.amplitude.com", "api_url": "https://analytics.eu.amplitude.com"},
}
BREVO_API_URL = "https://api.brevo.com/v3"
BUDGET_NAMES = ("brevo_events", "brevo_events_batch", "brevo_contacts", "brevo_orders", "brevo_other")
EVENT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
ATTRIBUTE_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
DAY = 86400.0
HOUR = 3600.0


class ConfigError(Exception):
    """The config is invalid; ``errors`` holds every problem as ``"key.path: message"``."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# ---------------------------------------------------------------------------------------------------------
# Field types. Validators raise ValueError with a message written for the operator; the key path is added
# when errors are formatted. Values are echoed only for keys that never hold secrets.


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _not_bool(value: Any) -> Any:
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
Int = Annotated[int, BeforeValidator(_not_bool)]
PositiveInt = Annotated[int, BeforeValidator(_not_bool), Field(gt=0)]
ListId = PositiveInt
Fraction = Annotated[float, BeforeValidator(_not_bool), Field(gt=0, le=1)]


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
# Errors raised from model validators land at the model's own location. To point at a field (or several),
# a validator raises `_located(...)`; the formatter appends each relative path to the model's location.


def _located(*errors: tuple[Loc, str]) -> PydanticCustomError:
    return PydanticCustomError("located", "located errors", {"errors": list(errors)})


def _unwrap(tp: Any) -> Any:
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


def _is_model(tp: Any) -> bool:
    tp = _unwrap(tp)
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _accepts_none(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _is_secret(tp: Any) -> bool:
    tp = _unwrap(tp)
    return tp is Secret or (get_origin(tp) is list and _unwrap(get_args(tp)[0]) is Secret)


class _Section(BaseModel):
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
            if name in data and data[name] is None and not _accepts_none(info.annotation):
                del data[name]  # `key: null` means "the default", as in the shipped config.yaml
            if name not in data and info.is_required() and _is_model(info.annotation):
                # Validate a missing section as empty, so the operator hears about the required keys
                # inside it by their full path rather than "connectors.brevo is required".
                data[name] = {}
        return cls._prepare(data)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook for raw-input defaults that depend on other keys of the same section."""
        return data


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _empty_secret_to_none(value: Any) -> Any:
    # `${WEBHOOK_TOKEN:-}` expands to "": the same as not configured.
    return None if value == "" or (isinstance(value, Secret) and not value) else value


# ---------------------------------------------------------------------------------------------------------
# Sections


class AmplitudeConnector(_Section):
    enabled: bool = True
    api_key: Secret | None = None
    secret_key: Secret | None = None
    data_center: Literal["US", "EU"] = "US"
    ingest_url: Url = AMPLITUDE_HOSTS["US"]["ingest_url"]
    api_url: Url = AMPLITUDE_HOSTS["US"]["api_url"]

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        if isinstance(data.get("data_center"), str):
            data["data_center"] = data["data_center"].strip().upper()
        hosts = AMPLITUDE_HOSTS.get(data.get("data_center", "US"), AMPLITUDE_HOSTS["US"])
        for key, default in hosts.items():
            data.setdefault(key, default)
        return data

    _keys_none = field_validator("api_key", "secret_key", mode="before")(_empty_secret_to_none)

    @model_validator(mode="after")
    def _keys_when_enabled(self) -> AmplitudeConnector:
        if self.enabled:
            missing = [name for name in ("api_key", "secret_key") if getattr(self, name) is None]
            if missing:
                raise _located(
                    *(((name,), "is required when connectors.amplitude.enabled is true") for name in missing)
                )
        return self


def _required_secret(value: Secret) -> Secret:
    if not value:
        raise ValueError("must not be empty")
    return value


class BrevoConnector(_Section):
    api_key: Annotated[Secret, AfterValidator(_required_secret)]
    api_url: Url = BREVO_API_URL
    plan: Annotated[Literal["general", "advanced", "extended"], BeforeValidator(_lower)] = "general"
    # Events per /events/batch request (Brevo publishes no maximum); 1 sends every event to /events.
    events_batch_size: Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=1000)] = 100


class Connectors(_Section):
    amplitude: AmplitudeConnector
    brevo: BrevoConnector


class Sync(_Section):
    events: bool = True
    user_properties: bool = True
    cohorts: bool = True
    revenue: bool = True


class Lists(_Section):
    """Brevo list ids filled by the segments of the same name (None: that segment is not synced)."""

    active_users: ListId | None = None
    power_users: ListId | None = None
    churning_users: ListId | None = None


class Identity(_Section):
    ext_id: NonEmptyStr = "user_id"
    email_property: NonEmptyStr = "email"
    anonymous: Annotated[Literal["skip", "use_device_id"], BeforeValidator(_lower)] = "skip"


class Export(_Section):
    start: StartHour = None
    lag: Duration = 3 * HOUR
    poll_interval: PositiveDuration = 5 * 60.0
    max_window: PositiveDuration = 24 * HOUR
    # Child processes that decode and remap export members (0: in the daemon's own process).
    readers: Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=16)] = 2

    @field_validator("max_window")
    @classmethod
    def _whole_hours(cls, value: float) -> float:
        # Export windows are made of whole server-upload hours.
        if value < HOUR or not (value / HOUR).is_integer():
            raise ValueError("must be a whole number of hours, at least 1h")
        return value


class CohortConfig(_Section):
    id: CohortId
    list_id: ListId
    mode: Annotated[Literal["mirror", "append", "remove"], BeforeValidator(_lower)] = "mirror"
    every: PositiveDuration = HOUR


class CohortGuard(_Section):
    max_removal_fraction: Fraction = 0.5


_RULE_KINDS: dict[str, tuple[str, ...]] = {
    "seen_within": ("seen_within",),
    "cohort": ("cohort",),
    "active_not_seen": ("active_within", "not_seen_for"),
    "min_active_days": ("min_active_days", "within"),
}
_RULE_FORMS = "seen_within | cohort | active_within + not_seen_for | min_active_days + within"


class SegmentRule(_Section):
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
                raise _located((("not_seen_for",), "must be shorter than active_within"))
        if self.min_active_days is not None and self.within is not None:
            if self.min_active_days * DAY > self.within:
                raise _located((("min_active_days",), "cannot exceed the number of days in `within`"))
        return self


class Segments(_Section):
    every: PositiveDuration = HOUR
    active_users: SegmentRule = SegmentRule(seen_within=7 * DAY)
    power_users: SegmentRule = SegmentRule(min_active_days=10, within=30 * DAY)
    churning_users: SegmentRule = SegmentRule(active_within=60 * DAY, not_seen_for=14 * DAY)


class UserActivity(_Section):
    enabled: bool = True
    refresh_after: PositiveDuration = 24 * HOUR


class Revenue(_Section):
    orders: bool = True
    ltv_attribute: AttributeName | None = None
    count_attribute: AttributeName | None = None


class _Listener(_Section):
    """A section with a `listen: "host:port"` key (declared by each subclass, to keep its key order)."""

    if TYPE_CHECKING:
        listen: str

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class Ingest(_Listener):
    enabled: bool = True
    listen: Listen = "127.0.0.1:8787"
    forward_to_amplitude: bool = True
    api_keys: list[Secret] = Field(default_factory=list)
    webhook_token: Secret | None = None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _drop_empty_keys(cls, value: Any) -> Any:
        if isinstance(value, str | Secret):
            value = [value]
        if isinstance(value, list):
            # `["${NEW_KEY:-}", "${OLD_KEY}"]`: an unset optional key is simply not accepted.
            value = [v for v in value if v is not None and v != "" and not (isinstance(v, Secret) and not v)]
        return value

    _token_none = field_validator("webhook_token", mode="before")(_empty_secret_to_none)


class Admin(_Listener):
    listen: Listen = "127.0.0.1:9464"


class State(_Section):
    path: NonEmptyStr = "/var/lib/amplitude-brevo/state.db"
    dedupe_window: PositiveDuration = 7 * DAY


class RateLimit(_Section):
    """At most ``requests`` requests every ``per`` seconds (one aiolimiter budget)."""

    requests: PositiveInt
    per: PositiveDuration


def _budget(requests: int, per: float) -> RateLimit:
    return RateLimit(requests=requests, per=per)


# Brevo's published limits (reference/brevo-api.md §6). brevo_other covers the batch endpoints whose bucket
# is unstated ("all other endpoints": 100/200/600 requests per hour). /events/batch gets a budget of its own
# with those same figures, so that events cannot starve /orders/status/batch; the sink reads
# x-sib-ratelimit-* on every answer and pauses when the server says a window is spent.
PLAN_BUDGETS: dict[str, dict[str, RateLimit]] = {
    "general": {
        "brevo_events": _budget(10, 1),
        "brevo_events_batch": _budget(100, HOUR),
        "brevo_contacts": _budget(10, 1),
        "brevo_orders": _budget(5, 1),
        "brevo_other": _budget(100, HOUR),
    },
    "advanced": {
        "brevo_events": _budget(20, 1),
        "brevo_events_batch": _budget(200, HOUR),
        "brevo_contacts": _budget(20, 1),
        "brevo_orders": _budget(10, 1),
        "brevo_other": _budget(200, HOUR),
    },
    "extended": {
        "brevo_events": _budget(60, 1),
        "brevo_events_batch": _budget(600, HOUR),
        "brevo_contacts": _budget(60, 1),
        "brevo_orders": _budget(15, 1),
        "brevo_other": _budget(600, HOUR),
    },
}


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; expected one of: {', '.join(choices)}"


def _budget_name(name: str) -> str:
    if name not in BUDGET_NAMES:
        raise ValueError(f"unknown rate limit budget{_did_you_mean(name, list(BUDGET_NAMES))}")
    return name


BudgetName = Annotated[str, AfterValidator(_budget_name)]


class Batching(_Section):
    max_items: Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=1000)] = 1000
    max_wait: Duration = 2.0
    queue_capacity: PositiveInt = 50000

    @model_validator(mode="after")
    def _capacity_holds_a_batch(self) -> Batching:
        if self.queue_capacity < self.max_items:
            raise _located((("queue_capacity",), f"must be at least max_items ({self.max_items})"))
        return self


class Logging(_Section):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Annotated[Literal["auto", "json", "console"], BeforeValidator(_lower)] = "auto"


class Config(_Section):
    """The whole resolved configuration (defaults filled, ``${VAR}`` expanded, durations in seconds)."""

    connectors: Connectors
    sync: Sync = Sync()
    lists: Lists = Lists()
    event_mapping: dict[str, EventName] = Field(default_factory=dict)
    property_mapping: dict[str, NonEmptyStr] = Field(default_factory=dict)
    identity: Identity = Identity()
    export: Export = Export()
    cohorts: list[CohortConfig] = Field(default_factory=list)
    cohort_guard: CohortGuard = CohortGuard()
    segments: Segments = Segments()
    user_activity: UserActivity = UserActivity()
    revenue: Revenue = Revenue()
    ingest: Ingest = Ingest()
    admin: Admin = Admin()
    state: State = State()
    # Resolved: always the four BUDGET_NAMES, plan defaults overridden per budget by the YAML.
    rate_limits: dict[BudgetName, RateLimit] = Field(default_factory=lambda: dict(PLAN_BUDGETS["general"]))
    batching: Batching = Batching()
    shutdown_timeout: PositiveDuration = 20.0
    logging: Logging = Logging()

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        connectors = data.get("connectors")
        amplitude = connectors.get("amplitude") if isinstance(connectors, dict) else None
        brevo = connectors.get("brevo") if isinstance(connectors, dict) else None

        # Apps send the project's Amplitude key to the ingest endpoint, so that key is accepted by default.
        ingest = data.get("ingest")
        if ingest is None or isinstance(ingest, dict):
            ingest = dict(ingest or {})
            if ingest.get("api_keys") is None and isinstance(amplitude, dict) and amplitude.get("api_key"):
                ingest["api_keys"] = [amplitude["api_key"]]
            data["ingest"] = ingest

        plan = brevo.get("plan") if isinstance(brevo, dict) else None
        plan = plan.lower() if isinstance(plan, str) else "general"
        defaults = PLAN_BUDGETS.get(plan, PLAN_BUDGETS["general"])
        overrides = data.get("rate_limits")
        if overrides is None or isinstance(overrides, dict):
            merged: dict[Any, Any] = {name: limit for name, limit in defaults.items()}
            for name, override in (overrides or {}).items():
                if isinstance(override, dict) and name in defaults:
                    # A partial override (`brevo_other: {requests: 300}`) keeps the plan's other half.
                    merged[name] = {**defaults[name].model_dump(), **override}
                else:
                    merged[name] = override
            data["rate_limits"] = merged
        return data


# ---------------------------------------------------------------------------------------------------------
# Pre-pass over the raw YAML: ${VAR} expansion and *_file secrets, before the models see the data.


def _secret_paths(model: type[BaseModel], prefix: Loc = ()) -> set[Loc]:
    paths: set[Loc] = set()
    for name, info in model.model_fields.items():
        if _is_secret(info.annotation):
            paths.add((*prefix, name))
        elif _is_model(info.annotation):
            paths |= _secret_paths(_unwrap(info.annotation), (*prefix, name))
    return paths


SECRET_PATHS = frozenset(_secret_paths(Config))

_VAR_RE = re.compile(r"\$\$|\$\{([^}]*)\}")
_VAR_BODY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


@dataclass
class _Resolver:
    env: Mapping[str, str]
    base_dir: Path
    errors: list[tuple[Loc, str]] = field(default_factory=list)
    # Locations whose value is already known to be wrong: model errors there would only repeat it.
    suppressed: list[Loc] = field(default_factory=list)
    # Where a key came from `<key>_file`: errors about the key are reported at the _file key.
    from_file: dict[Loc, Loc] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    order: dict[Loc, int] = field(default_factory=dict)

    def fail(self, loc: Loc, message: str, suppress: Loc | None = None) -> None:
        self.errors.append((loc, message))
        self.suppressed.append(loc if suppress is None else suppress)

    def resolve(self, node: Any, loc: Loc = ()) -> Any:
        self.order.setdefault(loc, len(self.order))
        if isinstance(node, str):
            value = self.expand(node, loc)
        elif isinstance(node, list):
            value = [self.resolve(item, (*loc, i)) for i, item in enumerate(node)]
        elif isinstance(node, dict):
            value = {key: self.resolve(item, (*loc, key)) for key, item in node.items()}
            self.read_files(value, loc)
        else:
            value = node
        if loc in SECRET_PATHS:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item:
                    self.secrets.add(item)
        return value

    def expand(self, text: str, loc: Loc) -> str:
        def substitute(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            body = _VAR_BODY_RE.match(m.group(1))
            if not body:
                # The body is not echoed: it could be a default that holds a secret.
                self.fail(loc, "malformed ${...} reference; use ${NAME} or ${NAME:-default}")
                return ""
            name, default = body.group(1), body.group(2)
            value = self.env.get(name)
            if value:
                return value
            if default is not None:  # like the shell: `:-` also covers a set-but-empty variable
                return default
            if value is None:
                self.fail(
                    loc, f"environment variable {name} is not set (use ${{{name}:-default}} if optional)"
                )
            return ""

        if "$" not in text:
            return text
        expanded = _VAR_RE.sub(substitute, text)
        if re.search(r"(?<!\$)\$\{[^}]*$", _VAR_RE.sub("", text)):
            self.fail(loc, "unterminated ${ reference")
        return expanded

    def read_files(self, mapping: dict[Any, Any], loc: Loc) -> None:
        for file_key in [k for k in mapping if isinstance(k, str) and k.endswith("_file")]:
            key = file_key[: -len("_file")]
            if (*loc, key) not in SECRET_PATHS:
                continue  # not a secret slot: the model reports it as an unknown key
            file_loc, key_loc = (*loc, file_key), (*loc, key)
            raw_path = mapping.pop(file_key)
            if raw_path in (None, ""):
                continue  # `api_key_file: ${KEY_FILE:-}`: file indirection not used
            if key in mapping:
                self.fail(file_loc, f"give either {key} or {file_key}, not both", suppress=key_loc)
                continue
            if not isinstance(raw_path, str):
                self.fail(file_loc, "must be a file path", suppress=key_loc)
                continue
            content = self.read_secret_file(raw_path, file_loc, key_loc)
            if content is None:
                continue
            self.from_file[key_loc] = file_loc
            if key_loc in SECRET_PATHS and _is_list_slot(key_loc):
                # A list of keys (ingest.api_keys): one per line, so keys can be rotated in the file.
                mapping[key] = [line.strip() for line in content.splitlines() if line.strip()]
            else:
                mapping[key] = content

    def read_secret_file(self, raw_path: str, file_loc: Loc, key_loc: Loc) -> str | None:
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            # systemd LoadCredential= puts credentials under $CREDENTIALS_DIRECTORY; look there first.
            credentials = self.env.get("CREDENTIALS_DIRECTORY")
            candidates = [Path(credentials) / path] if credentials else []
            candidates.append(self.base_dir / path)
            path = next((c for c in candidates if c.exists()), candidates[-1])
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.fail(file_loc, f"cannot read {path}: {exc.strerror or type(exc).__name__}", suppress=key_loc)
            return None
        try:
            content = data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            self.fail(file_loc, f"{path} is not UTF-8 text", suppress=key_loc)
            return None
        if not content:
            self.fail(file_loc, f"{path} is empty", suppress=key_loc)
            return None
        self.secrets.add(content)
        self.secrets.update(line.strip() for line in content.splitlines() if line.strip())
        return content


def _is_list_slot(loc: Loc) -> bool:
    model: Any = Config
    for name in loc:
        model = _unwrap(model.model_fields[name].annotation)
    return get_origin(model) is list


def _as_list_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _list_writer_errors(data: dict[str, Any]) -> list[tuple[Loc, str]]:
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


# ---------------------------------------------------------------------------------------------------------
# Error formatting


_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def format_path(loc: Loc) -> str:
    """``("event_mapping", "Add to Cart")`` -> ``event_mapping."Add to Cart"``; ints are list indexes."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            text = str(part)
            out += ("." if out else "") + (text if _IDENT_RE.match(text) else json.dumps(text))
    return out


def _model_at(loc: Loc) -> type[BaseModel] | None:
    tp: Any = Config
    for part in loc:
        tp = _unwrap(tp)
        if _is_model(tp):
            info = tp.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return None
            tp = info.annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if _is_model(tp) else None


def _unknown_key_message(loc: Loc) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    names = list(model.model_fields)
    if key.endswith("_file") and key[: -len("_file")] in names:
        secret_names = [n for n, i in model.model_fields.items() if _is_secret(i.annotation)]
        only = f" ({', '.join(secret_names)} here)" if secret_names else ""
        return f"unknown key: only secrets can be read from a *_file key{only}"
    choices = names + [f"{n}_file" for n, i in model.model_fields.items() if _is_secret(i.annotation)]
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return (
        f"unknown key; did you mean {close[0]!r}?"
        if close
        else f"unknown key; expected one of: {', '.join(names)}"
    )


def _pydantic_errors(exc: ValidationError) -> Iterator[tuple[Loc, str]]:
    # include_input=False: the input may be a credential. Messages below are built from types and our
    # own validators, never from str(exc).
    for err in exc.errors(include_input=False, include_url=False):
        loc: Loc = tuple(p for p in err["loc"] if p != "[key]")
        kind, msg = err["type"], err["msg"]
        if kind == "located":
            for sub, sub_msg in err["ctx"]["errors"]:
                yield (*loc, *sub), sub_msg
            continue
        if kind == "missing":
            msg = "is required"
        elif kind == "extra_forbidden":
            msg = _unknown_key_message(loc)
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "must be a mapping"
        elif kind == "list_type":
            msg = "must be a list"
        elif kind in ("string_type", "string_sub_type"):
            msg = "must be a string"
        elif kind == "bool_parsing" or kind == "bool_type":
            msg = "must be true or false"
        elif msg.startswith("Input should be"):
            msg = "must be" + msg[len("Input should be") :]
        yield loc, msg


def _scrub(text: str, secrets: set[str] | list[str]) -> str:
    # Belt and braces: messages are built without input values for secret keys, but a secret pasted into
    # the wrong key (e.g. `lag: ${BREVO_API_KEY}`) would be echoed by that key's message.
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _order_key(loc: Loc, order: dict[Loc, int]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in order:
            return order[loc[:n]]
    return len(order)


# ---------------------------------------------------------------------------------------------------------
# Public API


def parse_config(
    data: dict[str, Any], env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    """Validate an already-parsed YAML document; raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    if data is None:
        raise ConfigError(["config is empty: expected a mapping of sections (connectors, sync, ...)"])
    if not isinstance(data, dict):
        raise ConfigError([f"config must be a mapping of sections, not a {type(data).__name__}"])
    resolver = _Resolver(env=env, base_dir=Path(base_dir) if base_dir is not None else Path.cwd())
    resolved = resolver.resolve(data)
    errors = list(resolver.errors) + _list_writer_errors(resolved)
    config: Config | None = None
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        for loc, msg in _pydantic_errors(exc):
            if any(loc[: len(s)] == s for s in resolver.suppressed):
                continue
            for key_loc, file_loc in resolver.from_file.items():
                if loc[: len(key_loc)] == key_loc:
                    loc = file_loc
            errors.append((loc, msg))
    if errors:
        errors.sort(key=lambda e: _order_key(e[0], resolver.order))
        lines: list[str] = []
        for loc, msg in errors:
            line = _scrub(f"{format_path(loc)}: {msg}" if loc else msg, resolver.secrets)
            if line not in lines:
                lines.append(line)
        raise ConfigError(lines)
    assert config is not None
    return config


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # unhashable key: the model will reject it
            continue
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a config file; raises ConfigError (also for I/O and YAML syntax errors)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: config file is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # Only the mark and the short problem text: str(exc) quotes the offending line, which may hold a key.
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(
            [f"{where}: invalid YAML: {exc.problem or exc.context or 'syntax error'}"]
        ) from None
    except yaml.YAMLError:
        raise ConfigError([f"{path}: invalid YAML"]) from None
    if data is None:
        raise ConfigError([f"{path}: config file is empty"])
    return parse_config(data, env=env, base_dir=path.parent)


def _walk_secrets(node: Any) -> Iterator[Secret]:
    if isinstance(node, Secret):
        yield node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _walk_secrets(getattr(node, name))
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _walk_secrets(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _walk_secrets(item)


def secret_values(cfg: Config) -> list[str]:
    """Every raw secret string in *cfg* (non-empty, longest first), for the log redaction filter."""
    values = {s.reveal() for s in _walk_secrets(cfg) if s}
    return sorted(values, key=lambda v: (-len(v), v))


def render_config(cfg: Config) -> str:
    """The resolved config as YAML (durations as unit strings, hours as YYYY-MM-DDTHH), secrets as '***'."""
    data = cfg.model_dump(mode="json")
    for name, rule in data["segments"].items():
        if isinstance(rule, dict):  # show each rule as written: only the keys of its kind
            data["segments"][name] = {k: v for k, v in rule.items() if v is not None}
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return _scrub(text, secret_values(cfg))
