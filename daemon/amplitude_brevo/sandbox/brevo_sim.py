"""Loopback simulator of Brevo API v3 (contacts, attributes, lists, events, orders) with rate limits and faults.

Contacts follow the field reports of reference §1.5: `POST /contacts/batch` is update-only and one unknown contact
fails the whole call (404 document_not_found "No contact found for indexes 3,4"); an identifier held by another
contact is 400 duplicate_parameter with `metadata.duplicate_identifiers` (["email"], ["ext_id"], ["sms"]) on
POST /contacts, PUT /contacts/{id} and /contacts/batch; a date attribute given anything but `YYYY-MM-DD` is
400 "Invalid date format for attribute NAME" there (import drops it); other ill-fitting values are ignored.
POST /contacts matches an existing contact by ext_id, then email, then SMS. Every contact write (POST, PUT, batch
item, import row) is counted `created`, `updated` (something stored changed) or `unchanged`.

Orders are kept by `id` (a re-sent id is an update, counted in `orders_updated`). eCommerce starts active
(`make_brevo_app(ecommerce_active=False)` to start without it); while inactive, /orders/status, its batch,
GET /orders and /ecommerce/config/displayCurrency answer 403 permission_denied; POST /ecommerce/activate
activates it at once.

Sandbox control (no auth, no rate limit, no faults), under /_sandbox/brevo/:
- GET received: everything stored (events, orders, contacts with email/ext_id, lists, processes) and counters;
  GET received/count: the same counted (`contact_writes: {created, updated, unchanged}`, `orders_updated`,
  `ecommerce_active`, `ecommerce_activations`, requests per bucket, statuses ...);
  GET received/events?since=N: the events stored from the N-th on (0-based), each with the wall-clock time
  (epoch seconds) it was stored at, and the total stored: what a benchmark polls to time deliveries.
- POST faults: set BrevoFaults fields (plus `outage_seconds` / `not_found_seconds`), among them
  `orders_batch_drop` (the next N order batches lose their last order and answer `count` one less) and
  `import_delay_polls` (new imports answer "in_process" to N polls before "completed").
- POST limits: `{bucket: {requests, per}}`; the optional buckets `events_batch` / `orders_batch` give
  /events/batch and /orders/status/batch a window of their own (null removes it).
- GET / POST ecommerce: `{"active": bool}` reads / sets the eCommerce activation.
- GET processes/{id}/{report}.csv: the import reports `info.import` links to (e.g. `invalid_emails`).
- POST reset: back to the configuration given at construction.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "BREVO_STATE",
    "BrevoError",
    "BrevoFaults",
    "BrevoState",
    "BucketLimit",
    "DEFAULT_ATTRIBUTES",
    "DEFAULT_LIMITS",
    "DEFAULT_LISTS",
    "EVENTS_BATCH_BUCKETS",
    "make_brevo_app",
]

# --------------------------------------------------------------------------------------------------------------
# configuration objects
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BucketLimit:
    """A fixed-window allowance: `requests` per `per` seconds."""

    requests: int
    per: float  # seconds


@dataclass
class BrevoFaults:
    """Fault injection knobs; mutable at runtime (in process or via POST /_sandbox/brevo/faults)."""

    error_rate: float = 0.0  # fraction of requests answered with an injected failure
    error_statuses: tuple[int, ...] = (500, 502, 503, 429)
    reset_rate: float = 0.0  # fraction of requests whose connection is closed without a response
    latency: float = 0.0  # seconds added to every /v3 response
    outage_until: float = 0.0  # deadline on the state's clock (time.monotonic): until then every /v3 request gets 503
    seed: int = 0  # faults are drawn from random.Random(seed) so runs are reproducible
    reject_ext_ids: frozenset[str] = frozenset()  # events for these ext_ids fail validation (an item Brevo refuses)
    # A wrong host or a proxy in front: every /v3 path answers 404 with an HTML page, until this
    # deadline on the state's clock and for this many more requests (set `not_found_seconds` at runtime).
    not_found_until: float = 0.0
    not_found_requests: int = 0
    # The next this-many POST /orders/status/batch answer `count` one less than received and drop the last order
    # (a batch that did not fully land: what the daemon's count check is for).
    orders_batch_drop: int = 0
    # Each new import process answers "in_process" to this many GET /processes/{id} before "completed".
    import_delay_polls: int = 0


BUCKETS = ("events", "contacts", "orders", "other", "events_batch", "orders_batch")
OPTIONAL_BUCKETS = ("events_batch", "orders_batch")  # only when set (limits= or POST /_sandbox/brevo/limits)
# Where /events/batch is counted when no `events_batch` limit is set: Brevo's table does not say. "other"
# (100 per hour on General, the table's reading) or "events" (shared with /events, 10 per second).
EVENTS_BATCH_BUCKETS = ("other", "events")
NOT_FOUND_PAGE = "<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1><hr>nginx</body></html>"

# Brevo "General" plan (reference §6). The RPH caps of the RPS buckets are not modelled; "other" is 100 RPH.
DEFAULT_LIMITS: dict[str, BucketLimit] = {
    "events": BucketLimit(10, 1.0),
    "contacts": BucketLimit(10, 1.0),
    "orders": BucketLimit(5, 1.0),
    "other": BucketLimit(100, 3600.0),
}

DEFAULT_ATTRIBUTES: list[dict[str, Any]] = [
    {"name": "EMAIL", "category": "normal", "type": "text"},
    {"name": "FIRSTNAME", "category": "normal", "type": "text"},
    {"name": "LASTNAME", "category": "normal", "type": "text"},
    {"name": "SMS", "category": "normal", "type": "text"},
    {"name": "EXT_ID", "category": "normal", "type": "text"},
    {"name": "PLAN", "category": "normal", "type": "text"},
    {"name": "SIGNUP_DATE", "category": "normal", "type": "date"},
    {"name": "ORDER_COUNT", "category": "normal", "type": "float"},
    {"name": "LTV", "category": "normal", "type": "float"},
    {"name": "LAST_ACTIVE", "category": "normal", "type": "date"},
    {"name": "DEVICE", "category": "normal", "type": "text"},
    {"name": "NEWSLETTER", "category": "normal", "type": "boolean"},
]

DEFAULT_LISTS: dict[int, str] = {10: "active_users", 11: "power_users", 12: "churning_users", 13: "all_users"}
DEFAULT_FOLDERS: dict[int, str] = {1: "Your first folder"}

EVENTS_BATCH_MAX = 1000
ORDERS_BATCH_MAX = 1000
LIST_MEMBERS_MAX = 150
EVENT_PROPERTIES_MAX_BYTES = 50 * 1024
CLIENT_MAX_SIZE = 12 * 1024 * 1024  # import bodies may be up to 10 MB

ATTRIBUTE_CATEGORIES = ("normal", "transactional", "category", "calculated", "global")
ATTRIBUTE_TYPES = ("text", "date", "float", "boolean", "id", "category", "multiple-choice", "user")
IDENTIFIER_ATTRIBUTES = ("EMAIL", "SMS", "EXT_ID")
EVENT_IDENTIFIER_KEYS = ("contact_id", "email_id", "ext_id", "phone_id", "whatsapp_id", "landline_number_id")
ORDER_IDENTIFIER_KEYS = ("email_id", "ext_id", "phone_id", "loyalty_subscription_id")
IDENTIFIER_TYPES = ("email_id", "phone_id", "contact_id", "ext_id", "whatsapp_id", "landline_number_id")

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
# Stricter than "something@something.tld": Brevo refuses addresses such as `ana..b@example.com` or
# `ana@exa_mple.com` that a naive check (the daemon's) lets through, so the sandbox can refuse them too.
_EMAIL_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_RE = re.compile(rf"^{_EMAIL_ATOM}(?:\.{_EMAIL_ATOM})*@(?:{_EMAIL_LABEL}\.)+[A-Za-z]{{2,63}}$")
# Events' and orders' `identifiers.email_id` are only checked for shape (what Brevo does with an address its
# contact check refuses there is not known): the strict check is for contact writes.
IDENTIFIER_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ATTRIBUTE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")
ORDER_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class BrevoError(Exception):
    """An API error, rendered as Brevo's `{"code", "message"}` body (reference §0.1)."""

    def __init__(self, status: int, code: str, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.metadata = metadata  # contactErrorModel's optional `metadata` (e.g. duplicate_identifiers)

    def prefixed(self, prefix: str) -> BrevoError:
        return BrevoError(self.status, self.code, f"{prefix}: {self.message}", self.metadata)


def _bad(message: str, code: str = "invalid_parameter") -> BrevoError:
    return BrevoError(400, code, message)


def _missing(message: str) -> BrevoError:
    return BrevoError(400, "missing_parameter", message)


def duplicate_error(kinds: list[str]) -> BrevoError:
    """An identifier already held by another contact (field report, reference §1.5)."""
    verb = "is" if len(kinds) == 1 else "are"
    return BrevoError(
        400,
        "duplicate_parameter",
        f"Unable to update contact, {' and '.join(kinds)} {verb} already associated with another Contact",
        {"duplicate_identifiers": list(kinds)},
    )


# --------------------------------------------------------------------------------------------------------------
# small value helpers
# --------------------------------------------------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if metadata is not None:
        body["metadata"] = metadata
    return _json(body, status=status, headers=headers)


def _valid_email(value: Any) -> bool:
    return isinstance(value, str) and EMAIL_RE.match(value.strip()) is not None


def normalize_email(value: Any) -> str:
    """Lower-case a valid email or raise 400 invalid_parameter."""
    if not isinstance(value, str) or not EMAIL_RE.match(value.strip()):
        raise _bad("Invalid email address")
    return value.strip().lower()


def normalize_sms(value: Any) -> str:
    """Return the digits of a phone number that carries a country code (stored without '+'), else raise 400.

    Accepts `+33612345678`, `0033612345678`, `33612345678`, `+44 (0)7771234567`, `+1 (206) 123-4567`;
    a national number starting with a single `0` has no country code and is rejected.
    """
    if _is_int(value):
        value = str(value)
    if not isinstance(value, str):
        raise _bad(f"Invalid phone number: {value!r}")
    raw = value.strip().replace("(0)", "")
    plus = raw.startswith("+")
    digits = re.sub(r"[\s().-]", "", raw.lstrip("+"))
    if not digits.isdigit():
        raise _bad(f"Invalid phone number: {value!r}")
    if not plus:
        if digits.startswith("00"):
            digits = digits[2:]
        elif digits.startswith("0"):
            raise _bad(f"Invalid phone number, country code missing: {value!r}")
    if not 8 <= len(digits) <= 15:
        raise _bad(f"Invalid phone number: {value!r}")
    return digits


def _parse_iso_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _is_date(value: Any) -> bool:
    """A real calendar date written `YYYY-MM-DD`."""
    if not isinstance(value, str) or not DATE_RE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def coerce_attribute(definition: dict[str, Any], value: Any) -> tuple[bool, Any]:
    """Fit `value` to an attribute definition: (True, stored value) or (False, None) when it does not fit.

    A value that does not fit is silently ignored by the caller, as Brevo does. `None` clears the attribute.
    Dates accept only `YYYY-MM-DD` (a real date; reference §1.5 field report); floats accept numbers and
    numeric strings (the daemon converts floats to strings for /events/batch); booleans accept true/false
    and the strings "true"/"false".
    """
    if value is None:
        return True, None
    kind = definition.get("type", "text")
    if kind in ("text", "user", "id"):
        if isinstance(value, str):
            return True, value
        return (True, str(value)) if _is_number(value) else (False, None)
    if kind == "date":
        return (True, value) if _is_date(value) else (False, None)
    if kind == "float":
        if _is_number(value):
            return True, value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return False, None
            return (True, number) if math.isfinite(number) else (False, None)
        return False, None
    if kind == "boolean":
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return True, value.lower() == "true"
        return False, None
    if kind == "category":
        allowed = {item.get("value") for item in definition.get("enumeration") or []}
        return (True, value) if _is_int(value) and (not allowed or value in allowed) else (False, None)
    if kind == "multiple-choice":
        options = set(definition.get("multiCategoryOptions") or [])
        if isinstance(value, list) and all(isinstance(v, str) and v in options for v in value):
            return True, value
        return False, None
    return True, value


# --------------------------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------------------------


class FixedWindow:
    """Fixed-window counter; windows are aligned on the first request (start + k * per)."""

    def __init__(self, limit: BucketLimit) -> None:
        self.limit = limit
        self.start: float | None = None
        self.count = 0

    def _roll(self, now: float) -> None:
        if self.start is None:
            self.start, self.count = now, 0
        elif now >= self.start + self.limit.per:
            self.start += math.floor((now - self.start) / self.limit.per) * self.limit.per
            self.count = 0

    def reset_in(self, now: float) -> int:
        """Whole seconds (ceil, at least 1) until the current window ends."""
        if self.start is None or now >= self.start + self.limit.per:
            return max(1, math.ceil(self.limit.per))
        left = (self.start - now) + self.limit.per
        return max(1, min(math.ceil(self.limit.per), math.ceil(left - 1e-6)))  # 1e-6: float noise

    def take(self, now: float) -> tuple[bool, int, int]:
        """Count one request: (allowed, remaining, reset seconds)."""
        self._roll(now)
        if self.count >= self.limit.requests:
            return False, 0, self.reset_in(now)
        self.count += 1
        return True, self.limit.requests - self.count, self.reset_in(now)

    def headers(self, remaining: int, reset: int) -> dict[str, str]:
        return {
            "x-sib-ratelimit-limit": str(self.limit.requests),
            "x-sib-ratelimit-remaining": str(remaining),
            "x-sib-ratelimit-reset": str(reset),
        }


@dataclass
class Contact:
    id: int
    email: str | None = None
    ext_id: str | None = None
    sms: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    email_blacklisted: bool = False
    sms_blacklisted: bool = False
    list_ids: set[int] = field(default_factory=set)
    created_at: str = field(default_factory=_now_iso)
    modified_at: str = field(default_factory=_now_iso)
    seq: int = 0  # modification order, used by forceMerge ("newest wins")

    def label(self) -> str:
        return self.ext_id or self.email or self.sms or str(self.id)

    def to_json(self) -> dict[str, Any]:
        attributes = dict(self.attributes)
        if self.sms:
            attributes["SMS"] = self.sms
        if self.ext_id:
            attributes["EXT_ID"] = self.ext_id
        out: dict[str, Any] = {"id": self.id}
        if self.email:
            out["email"] = self.email
        out.update(
            emailBlacklisted=self.email_blacklisted,
            smsBlacklisted=self.sms_blacklisted,
            createdAt=self.created_at,
            modifiedAt=self.modified_at,
            listIds=sorted(self.list_ids),
            listUnsubscribed=[],
            attributes=attributes,
            statistics={},
        )
        return out


@dataclass
class ContactPatch:
    """A validated set of changes for one contact (identifiers already normalized)."""

    email: str | None = None
    ext_id: str | None = None
    sms: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)  # None values clear the attribute
    email_blacklisted: bool | None = None
    sms_blacklisted: bool | None = None
    list_ids: list[int] = field(default_factory=list)
    unlink_list_ids: list[int] = field(default_factory=list)

    def has_identifier(self) -> bool:
        return bool(self.email or self.ext_id or self.sms)


@dataclass
class ListInfo:
    id: int
    name: str
    folder_id: int
    created_at: str = field(default_factory=_now_iso)


class BrevoState:
    """Everything the simulator knows: configuration, stores, rate-limit windows and counters."""

    def __init__(
        self,
        *,
        api_key: str,
        limits: dict[str, BucketLimit] | None = None,
        faults: BrevoFaults | None = None,
        attributes: list[dict[str, Any]] | None = None,
        lists: dict[int, str] | None = None,
        events_batch_max: int = EVENTS_BATCH_MAX,
        events_batch_bucket: str = "other",
        ecommerce_active: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if events_batch_bucket not in EVENTS_BATCH_BUCKETS:
            raise ValueError(f"events_batch_bucket must be one of {EVENTS_BATCH_BUCKETS}, not {events_batch_bucket!r}")
        self.api_key = api_key
        self.clock = clock
        self.events_batch_max = events_batch_max
        self.events_batch_bucket = events_batch_bucket
        self._initial_limits = {**DEFAULT_LIMITS, **(limits or {})}
        self._initial_faults = faults or BrevoFaults()
        self._initial_attributes = [
            dict(a) for a in (DEFAULT_ATTRIBUTES if attributes is None else attributes)
        ]
        self._initial_lists = dict(DEFAULT_LISTS if lists is None else lists)
        self._initial_ecommerce_active = ecommerce_active
        self.reset()

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the configuration given at construction: data, counters, windows, faults and limits."""
        self.faults = BrevoFaults(**asdict(self._initial_faults))
        self.faults.error_statuses = tuple(self.faults.error_statuses)
        self.rng = random.Random(self.faults.seed)
        self.windows: dict[str, FixedWindow] = {
            name: FixedWindow(BucketLimit(lim.requests, lim.per))
            for name, lim in self._initial_limits.items()
        }
        self.attributes: dict[str, dict[str, Any]] = {
            a["name"].upper(): {**a, "name": a["name"].upper()} for a in self._initial_attributes
        }
        self.folders: dict[int, str] = dict(DEFAULT_FOLDERS)
        self.lists: dict[int, ListInfo] = {
            lid: ListInfo(lid, name, next(iter(self.folders))) for lid, name in self._initial_lists.items()
        }
        self.contacts: dict[int, Contact] = {}
        self.by_email: dict[str, int] = {}
        self.by_ext_id: dict[str, int] = {}
        self.by_sms: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.events_received_at: list[float] = []  # epoch seconds each of `events` was stored at (same order)
        self.orders: dict[str, dict[str, Any]] = {}  # by order id, in first-received order; re-sent = update
        self.orders_updated = 0
        self.ecommerce_active = self._initial_ecommerce_active
        self.ecommerce_activations = 0
        self.display_currency = "EUR"
        self.processes: dict[int, dict[str, Any]] = {}
        self.process_polls: dict[int, int] = {}  # GETs left that still answer "in_process"
        self.process_files: dict[int, dict[str, tuple[str, list[str]]]] = {}  # report name -> (header, rows)
        self.contact_writes: Counter[str] = Counter({"created": 0, "updated": 0, "unchanged": 0})
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.rejected = 0
        self.rate_limited = 0
        self.injected = 0
        self.resets = 0
        self._next_contact_id = 1
        self._next_process_id = 1
        self._next_batch_id = 1
        self._seq = 0

    # ---- rate limits ------------------------------------------------------------------------------------------

    def bucket_for(self, method: str, path: str) -> str:
        """Map a /v3 request to its rate-limit bucket (reference §6)."""
        if path == "/v3/contacts" or path.startswith("/v3/contacts/"):
            return "contacts"
        if method == "POST" and path == "/v3/events":
            return "events"
        if method == "POST" and path == "/v3/orders/status":
            return "orders"
        if path == "/v3/events/batch":
            return "events_batch" if "events_batch" in self.windows else self.events_batch_bucket
        if path == "/v3/orders/status/batch" and "orders_batch" in self.windows:
            return "orders_batch"
        return "other"

    def set_limit(self, bucket: str, limit: BucketLimit | None) -> None:
        if limit is None:
            self.windows.pop(bucket, None)
        else:
            self.windows[bucket] = FixedWindow(limit)

    # ---- faults -----------------------------------------------------------------------------------------------

    def draw_fault(self) -> tuple[str, int] | None:
        """Draw this request's fault: ("not_found", 404), ("outage", 503), ("reset", 0), ("error", status) or None.

        The RNG is advanced by the same amount on every request, so a given seed and request sequence always
        produces the same faults whatever the rates are.
        """
        f = self.faults
        reset_draw, error_draw, status_draw = self.rng.random(), self.rng.random(), self.rng.random()
        if f.not_found_requests > 0:
            f.not_found_requests -= 1
            return ("not_found", 404)
        if f.not_found_until and self.clock() < f.not_found_until:
            return ("not_found", 404)
        if f.outage_until and self.clock() < f.outage_until:
            return ("outage", 503)
        if reset_draw < f.reset_rate:
            return ("reset", 0)
        if error_draw < f.error_rate and f.error_statuses:
            statuses = tuple(f.error_statuses)
            return ("error", statuses[min(int(status_draw * len(statuses)), len(statuses) - 1)])
        return None

    def update_faults(self, body: dict[str, Any]) -> None:
        known = {f.name for f in fields(BrevoFaults)} | {"outage_seconds", "not_found_seconds"}
        unknown = set(body) - known
        if unknown:
            raise _bad(f"Unknown fault field(s): {sorted(unknown)}")
        for key in ("error_rate", "reset_rate"):
            if key in body and not (_is_number(body[key]) and 0 <= body[key] <= 1):
                raise _bad(f"{key} must be a number between 0 and 1")
        for key in ("latency", "outage_until", "outage_seconds", "not_found_until", "not_found_seconds"):
            if key in body and not (_is_number(body[key]) and body[key] >= 0):
                raise _bad(f"{key} must be a non-negative number")
        if "error_statuses" in body and not (
            isinstance(body["error_statuses"], list) and all(_is_int(s) for s in body["error_statuses"])
        ):
            raise _bad("error_statuses must be a list of integers")
        if "seed" in body and not _is_int(body["seed"]):
            raise _bad("seed must be an integer")
        for key in ("not_found_requests", "orders_batch_drop", "import_delay_polls"):
            if key in body and not (_is_int(body[key]) and body[key] >= 0):
                raise _bad(f"{key} must be a non-negative integer")
        for key in ("error_rate", "reset_rate", "latency", "outage_until", "not_found_until"):
            if key in body:
                setattr(self.faults, key, float(body[key]))
        if "error_statuses" in body:
            self.faults.error_statuses = tuple(body["error_statuses"])
        if "outage_seconds" in body:
            self.faults.outage_until = self.clock() + float(body["outage_seconds"])
        if "not_found_seconds" in body:
            self.faults.not_found_until = self.clock() + float(body["not_found_seconds"])
        for key in ("not_found_requests", "orders_batch_drop", "import_delay_polls"):
            if key in body:
                setattr(self.faults, key, body[key])
        if "seed" in body:
            self.faults.seed = body["seed"]
            self.rng = random.Random(body["seed"])
        if "reject_ext_ids" in body:
            if not isinstance(body["reject_ext_ids"], list) or not all(isinstance(x, str) for x in body["reject_ext_ids"]):
                raise _bad("reject_ext_ids must be a list of strings")
            self.faults.reject_ext_ids = frozenset(body["reject_ext_ids"])

    # ---- contacts ---------------------------------------------------------------------------------------------

    def touch(self, contact: Contact) -> None:
        self._seq += 1
        contact.seq = self._seq
        contact.modified_at = _now_iso()

    def _index(self, contact: Contact) -> None:
        if contact.email:
            self.by_email[contact.email] = contact.id
        if contact.ext_id:
            self.by_ext_id[contact.ext_id] = contact.id
        if contact.sms:
            self.by_sms[contact.sms] = contact.id

    def _unindex(self, contact: Contact) -> None:
        for index, key in (
            (self.by_email, contact.email),
            (self.by_ext_id, contact.ext_id),
            (self.by_sms, contact.sms),
        ):
            if key is not None and index.get(key) == contact.id:
                del index[key]

    def holder(self, kind: str, value: str | None) -> Contact | None:
        """The contact holding identifier `value` of `kind` ("ext_id", "email" or "sms")."""
        index = {"ext_id": self.by_ext_id, "email": self.by_email, "sms": self.by_sms}[kind]
        cid = index.get(value) if value else None
        return self.contacts.get(cid) if cid is not None else None

    def holders(self, patch: ContactPatch) -> list[tuple[str, Contact]]:
        """(kind, contact) for each identifier of `patch` an existing contact holds: ext_id, then email, then sms."""
        found = []
        for kind, value in (("ext_id", patch.ext_id), ("email", patch.email), ("sms", patch.sms)):
            contact = self.holder(kind, value)
            if contact is not None:
                found.append((kind, contact))
        return found

    def matches(self, patch: ContactPatch) -> list[Contact]:
        """Distinct existing contacts holding any identifier of `patch`; the first is the one matched (by ext_id,
        else email, else SMS)."""
        out: list[Contact] = []
        for _kind, contact in self.holders(patch):
            if contact not in out:
                out.append(contact)
        return out

    def conflicts(self, contact: Contact | None, patch: ContactPatch, *, force_merge: bool) -> list[Contact]:
        """Other contacts holding an identifier `patch` would give `contact`: 400 duplicate_parameter naming the
        identifier kinds in `metadata.duplicate_identifiers`, unless force_merge (then they are returned)."""
        kinds, others = [], []
        for kind, holder in self.holders(patch):
            if contact is not None and holder.id == contact.id:
                continue
            kinds.append(kind)
            if holder not in others:
                others.append(holder)
        if kinds and not force_merge:
            raise duplicate_error(kinds)
        return others

    def count_write(self, outcome: str) -> None:
        """One contact write: "created", "updated" (a stored value changed) or "unchanged"."""
        self.contact_writes[outcome] += 1

    def delete_contact(self, contact: Contact) -> None:
        self._unindex(contact)
        del self.contacts[contact.id]

    def create_contact(self, patch: ContactPatch) -> Contact:
        contact = Contact(id=self._next_contact_id)
        self._next_contact_id += 1
        self.contacts[contact.id] = contact
        self.apply_patch(contact, patch)
        return contact

    @staticmethod
    def _snapshot(contact: Contact) -> tuple[Any, ...]:
        return (contact.email, contact.ext_id, contact.sms, dict(contact.attributes), contact.email_blacklisted,
                contact.sms_blacklisted, frozenset(contact.list_ids))

    def write(self, contact: Contact, patch: ContactPatch, *, merged: bool = False) -> str:
        """Apply `patch` to an existing contact and count the write: "updated" or "unchanged" (a merge updates)."""
        before = self._snapshot(contact)
        self.apply_patch(contact, patch)
        outcome = "unchanged" if self._snapshot(contact) == before and not merged else "updated"
        self.count_write(outcome)
        return outcome

    def apply_patch(self, contact: Contact, patch: ContactPatch) -> None:
        self._unindex(contact)
        if patch.email:
            contact.email = patch.email
        if patch.ext_id:
            contact.ext_id = patch.ext_id
        if patch.sms:
            contact.sms = patch.sms
        for name, value in patch.attributes.items():
            if value is None:
                contact.attributes.pop(name, None)
            else:
                contact.attributes[name] = value
        if patch.email_blacklisted is not None:
            contact.email_blacklisted = patch.email_blacklisted
        if patch.sms_blacklisted is not None:
            contact.sms_blacklisted = patch.sms_blacklisted
        contact.list_ids.update(patch.list_ids)
        contact.list_ids.difference_update(patch.unlink_list_ids)
        self._index(contact)
        self.touch(contact)

    def merge(self, survivor: Contact, others: list[Contact]) -> Contact:
        """forceMerge: the most recently modified contact survives, the others are deleted."""
        everyone = [survivor, *others]
        keep = max(everyone, key=lambda c: c.seq)
        for other in everyone:
            if other is not keep:
                keep.list_ids.update(other.list_ids)
                self.delete_contact(other)
        return keep

    def find_contact(
        self, identifier: str, identifier_type: str | None, *, allow_sms: bool = True
    ) -> Contact | None:
        """Resolve a path identifier (reference §1.2); ext_id/whatsapp/landline only with identifierType."""
        if identifier_type is not None and identifier_type not in IDENTIFIER_TYPES:
            raise _bad(f"Invalid identifierType: {identifier_type!r}")
        cid: int | None = None
        if identifier_type == "ext_id":
            cid = self.by_ext_id.get(identifier)
        elif identifier_type == "email_id" or (identifier_type is None and "@" in identifier):
            cid = self.by_email.get(identifier.strip().lower())
        elif identifier_type == "contact_id":
            if not identifier.isdigit():
                raise _bad(f"Invalid contact id: {identifier!r}")
            cid = int(identifier)
        elif identifier_type == "phone_id":
            cid = self.by_sms.get(normalize_sms(identifier))
        elif identifier_type is None and identifier.isdigit() and int(identifier) in self.contacts:
            cid = int(identifier)
        elif identifier_type is None and allow_sms and re.fullmatch(r"\+?[\d\s().-]{8,}", identifier):
            try:
                cid = self.by_sms.get(normalize_sms(identifier))
            except BrevoError:
                cid = None
        return self.contacts.get(cid) if cid is not None else None

    def members(self, list_id: int) -> list[Contact]:
        return [c for c in self.contacts.values() if list_id in c.list_ids]

    # ---- misc -------------------------------------------------------------------------------------------------

    def new_process(self, name: str, info: dict[str, Any] | None = None, *, delay_polls: int = 0) -> dict[str, Any]:
        process = {"id": self._next_process_id, "name": name, "status": "completed"}
        if info is not None:
            process["info"] = info
        self.processes[process["id"]] = process
        if delay_polls:
            self.process_polls[process["id"]] = delay_polls
        self._next_process_id += 1
        return process

    def process_view(self, pid: int, *, poll: bool = False) -> dict[str, Any]:
        """What GET /processes answers: "in_process" (no `info`) while polls are left; `poll` spends one."""
        process = self.processes[pid]
        left = self.process_polls.get(pid, 0)
        if left <= 0:
            return process
        if poll:
            self.process_polls[pid] = left - 1
        return {"id": process["id"], "name": process["name"], "status": "in_process"}

    def store_events(self, events: list[dict[str, Any]]) -> None:
        """Keep accepted events, each with the wall-clock time it was stored at (comparable across processes,
        unlike `clock`, which the rate windows use and tests replace)."""
        self.events.extend(events)
        self.events_received_at.extend([time.time()] * len(events))

    def drop_events(self) -> None:
        """Forget the events stored so far (a long benchmark that counts them keeps memory flat this way)."""
        self.events.clear()
        self.events_received_at.clear()

    def events_since(self, since: int) -> dict[str, Any]:
        """The events stored from the `since`-th on with their storage times, and how many are stored in all."""
        return {"total": len(self.events), "since": since,
                "events": [{"received_at": at, "event": event}
                           for at, event in zip(self.events_received_at[since:], self.events[since:], strict=True)]}

    def store_order(self, order: dict[str, Any], historical: bool) -> None:
        """Create or update an order by `id` (a re-sent id replaces the order in place, counted in orders_updated)."""
        if order["id"] in self.orders:
            self.orders_updated += 1
        self.orders[order["id"]] = {**order, "historical": historical}

    def new_batch_id(self) -> int:
        self._next_batch_id += 1
        return self._next_batch_id - 1

    def create_list(self, name: str, folder_id: int) -> ListInfo:
        lid = max([*self.lists, 0]) + 1
        self.lists[lid] = ListInfo(lid, name, folder_id)
        return self.lists[lid]

    def dump(self) -> dict[str, Any]:
        """Everything received: events, orders (one per id, with `historical`), contacts (GET's shape plus `email`
        and `ext_id`, null when absent), list members, processes, and the counters of `counts()`."""
        return {
            "events": self.events,
            "orders": list(self.orders.values()),
            "contacts": [{**c.to_json(), "email": c.email, "ext_id": c.ext_id} for c in self.contacts.values()],
            "lists": {str(lid): [c.label() for c in self.members(lid)] for lid in self.lists},
            **self._counters(),
            "processes": [self.process_view(pid) for pid in self.processes],
        }

    def counts(self) -> dict[str, Any]:
        """How much was received, without the payloads: `dump()`'s lists as their lengths (`lists` as members
        per list), events also per `event_name`, and the same counters: requests per bucket, statuses,
        `contact_writes: {created, updated, unchanged}`, `orders_updated`, `ecommerce_active`,
        `ecommerce_activations`."""
        return {
            "events": len(self.events),
            "event_names": dict(Counter(str(e.get("event_name")) for e in self.events)),
            "orders": len(self.orders),
            "contacts": len(self.contacts),
            "lists": {str(lid): len(self.members(lid)) for lid in self.lists},
            "processes": len(self.processes),
            **self._counters(),
        }

    def _counters(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "statuses": dict(self.statuses), "rejected": self.rejected,
                "rate_limited": self.rate_limited, "injected": self.injected, "resets": self.resets,
                "contact_writes": dict(self.contact_writes), "orders_updated": self.orders_updated,
                "ecommerce_active": self.ecommerce_active, "ecommerce_activations": self.ecommerce_activations}


BREVO_STATE: web.AppKey[BrevoState] = web.AppKey("brevo_state", BrevoState)
_BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("brevo_body", dict)
_RESET: web.RequestKey[bool] = web.RequestKey("brevo_reset", bool)


def _state(request: web.Request) -> BrevoState:
    return request.app[BREVO_STATE]


def _body(request: web.Request) -> dict[str, Any]:
    return request[_BODY]


# --------------------------------------------------------------------------------------------------------------
# validation helpers (one per payload)
# --------------------------------------------------------------------------------------------------------------


def _list_ids(state: BrevoState, value: Any, field_name: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise _bad(f"{field_name} must be an array of integers")
    missing = [v for v in value if v not in state.lists]
    if missing:
        raise _bad(f"{field_name}: list(s) not found: {missing}")
    return list(value)


def _optional_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise _bad(f"{key} must be a boolean")
    return value


def _contact_attributes(state: BrevoState, attributes: Any, patch: ContactPatch, *, strict: bool) -> None:
    """Fill `patch` from an `attributes` object.

    EMAIL / SMS / EXT_ID set identifiers. Other names must be defined attributes: with `strict` (POST/PUT
    /contacts, /contacts/batch) an unknown name is a 400 invalid_parameter so that the daemon dead-letters it
    instead of losing it, and a date attribute given anything but `YYYY-MM-DD` is a 400 "Invalid date format for
    attribute NAME" (field report, reference §1.5); without (import, events' contact_properties) both are dropped,
    as Brevo's import does. Any other value that does not fit its attribute's type (a boolean given "maybe", a
    float given "lots") is silently ignored (Brevo's documented behaviour).
    """
    if attributes is None:
        return
    if not isinstance(attributes, dict):
        raise _bad("attributes must be an object")
    for raw_name, value in attributes.items():
        name = str(raw_name).upper()
        if name == "EMAIL":
            if value not in (None, ""):
                patch.email = normalize_email(value)
        elif name == "SMS":
            if value not in (None, ""):
                patch.sms = normalize_sms(value)
        elif name == "EXT_ID":
            if value not in (None, ""):
                patch.ext_id = str(value)
        elif name not in state.attributes:
            if strict:
                raise _bad(f"Attribute {raw_name!r} does not exist in the account")
        else:
            definition = state.attributes[name]
            if strict and definition.get("type") == "date" and value is not None and not _is_date(value):
                raise _bad(f"Invalid date format for attribute {name}")
            fits, stored = coerce_attribute(definition, value)
            if fits:
                patch.attributes[name] = stored


def validate_contact(state: BrevoState, body: dict[str, Any], *, create: bool) -> ContactPatch:
    """Body of POST /contacts (create) or PUT /contacts/{identifier} (update)."""
    patch = ContactPatch()
    _contact_attributes(state, body.get("attributes"), patch, strict=True)
    if body.get("email") not in (None, ""):
        patch.email = normalize_email(body["email"])
    if body.get("ext_id") not in (None, ""):
        if not isinstance(body["ext_id"], str):
            raise _bad("ext_id must be a string")
        patch.ext_id = body["ext_id"]
    patch.email_blacklisted = _optional_bool(body, "emailBlacklisted")
    patch.sms_blacklisted = _optional_bool(body, "smsBlacklisted")
    patch.list_ids = _list_ids(state, body.get("listIds"), "listIds")
    if not create:
        patch.unlink_list_ids = _list_ids(state, body.get("unlinkListIds"), "unlinkListIds")
    if create and not patch.has_identifier():
        raise _missing("An identifier is required: email, ext_id or attributes.SMS")
    return patch


def validate_contacts_batch(state: BrevoState, body: dict[str, Any]) -> list[tuple[Contact, ContactPatch]]:
    """Body of POST /contacts/batch: update-only, exactly one of email/id/sms per item, all or nothing.

    In this order: an ill-formed item is a 400 naming it (`contacts[i]: ...`); then unknown contacts fail the whole
    call with 404 document_not_found "No contact found for indexes 3,4" (every unknown index, 0-based); then an
    identifier (attributes.EMAIL, ext_id, attributes.SMS) held by another contact, or given to two contacts in
    the call, is a 400 duplicate_parameter with `metadata.duplicate_identifiers` (reference §1.5 field reports).
    """
    items = body.get("contacts")
    if items is None:
        raise _missing("contacts is required")
    if not isinstance(items, list) or not items:
        raise _bad("contacts must be a non-empty array")
    updates: list[tuple[Contact, ContactPatch]] = []
    unknown: list[int] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad(f"contacts[{index}] must be an object")
        keys = [k for k in ("email", "id", "sms") if item.get(k) is not None]
        if len(keys) != 1:
            raise _bad(f"contacts[{index}]: exactly one of email, id or sms is required")
        try:
            if keys[0] == "email":
                contact = state.contacts.get(state.by_email.get(normalize_email(item["email"]), -1))
            elif keys[0] == "sms":
                contact = state.contacts.get(state.by_sms.get(normalize_sms(item["sms"]), -1))
            else:
                if not _is_int(item["id"]):
                    raise _bad("id must be an integer")
                contact = state.contacts.get(item["id"])
            patch = ContactPatch()
            _contact_attributes(state, item.get("attributes"), patch, strict=True)
            if item.get("ext_id") not in (None, ""):
                patch.ext_id = str(item["ext_id"])
            patch.email_blacklisted = _optional_bool(item, "emailBlacklisted")
            patch.sms_blacklisted = _optional_bool(item, "smsBlacklisted")
            patch.list_ids = _list_ids(state, item.get("listIds"), "listIds")
            patch.unlink_list_ids = _list_ids(state, item.get("unlinkListIds"), "unlinkListIds")
        except BrevoError as exc:
            raise exc.prefixed(f"contacts[{index}]") from None
        if contact is None:
            unknown.append(index)  # update-only: one unknown contact fails the whole call
        else:
            updates.append((contact, patch))
    if unknown:
        raise BrevoError(404, "document_not_found", "No contact found for indexes " + ",".join(map(str, unknown)))
    claimed: dict[tuple[str, str], int] = {}  # identifiers given in this call -> the contact they go to
    for contact, patch in updates:
        kinds = []
        for kind, value in (("email", patch.email), ("ext_id", patch.ext_id), ("sms", patch.sms)):
            if not value:
                continue
            holder = state.holder(kind, value)
            owner = claimed.get((kind, value), holder.id if holder is not None else None)
            if owner is not None and owner != contact.id:
                kinds.append(kind)
            claimed[(kind, value)] = contact.id
        if kinds:
            raise duplicate_error(kinds)
    return updates


@dataclass
class ImportJob:
    rows: list[dict[str, Any]]  # {"email", "ext_id", "sms", "attributes"} raw values
    list_ids: list[int]
    new_list: tuple[str, int] | None
    update_existing: bool
    empty_attributes: bool
    email_blacklist: bool
    sms_blacklist: bool


def validate_import(state: BrevoState, body: dict[str, Any]) -> ImportJob:
    """Body of POST /contacts/import: exactly one source (jsonBody or fileBody), listIds or newList."""
    sources = [k for k in ("fileUrl", "fileBody", "jsonBody") if body.get(k) is not None]
    if not sources:
        raise _missing("One of fileUrl, fileBody or jsonBody is required")
    if len(sources) > 1:
        raise _bad("Only one of fileUrl, fileBody or jsonBody may be given")
    if sources[0] == "fileUrl":
        raise _bad(
            "fileUrl is not supported by the sandbox (it makes no outbound calls); use fileBody or jsonBody"
        )
    rows = (
        _import_rows_json(body["jsonBody"])
        if sources[0] == "jsonBody"
        else _import_rows_csv(body["fileBody"])
    )
    list_ids = _list_ids(state, body.get("listIds"), "listIds")
    new_list = None
    if body.get("newList") is not None:
        spec = body["newList"]
        if not isinstance(spec, dict) or not isinstance(spec.get("listName"), str) or not spec["listName"]:
            raise _bad("newList.listName is required")
        if not _is_int(spec.get("folderId")) or spec["folderId"] not in state.folders:
            raise _bad("newList.folderId must be an existing folder id")
        new_list = (spec["listName"], spec["folderId"])
    if not list_ids and new_list is None:
        raise _missing("listIds or newList is required")
    flags = {}
    for key, default in (
        ("updateExistingContacts", True),
        ("emptyContactsAttributes", False),
        ("emailBlacklist", False),
        ("smsBlacklist", False),
    ):
        value = _optional_bool(body, key)
        flags[key] = default if value is None else value
    return ImportJob(
        rows,
        list_ids,
        new_list,
        flags["updateExistingContacts"],
        flags["emptyContactsAttributes"],
        flags["emailBlacklist"],
        flags["smsBlacklist"],
    )


def _import_rows_json(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise _bad("jsonBody must be an array")
    rows = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("attributes", {}), dict):
            raise _bad(f"jsonBody[{index}] must be an object with an attributes object")
        # A boolean false in a jsonBody was reported not to apply (reference §1.5): it is left out here too.
        attributes = {k: v for k, v in (item.get("attributes") or {}).items() if v is not False}
        rows.append(
            {
                "email": item.get("email") or attributes.pop("EMAIL", None),
                "ext_id": item.get("ext_id") or attributes.pop("EXT_ID", None),
                "sms": attributes.pop("SMS", None),
                "attributes": attributes,
            }
        )
    return rows


def _import_rows_csv(text: Any) -> list[dict[str, Any]]:
    if not isinstance(text, str) or not text.strip():
        raise _bad("fileBody must be non-empty CSV text with a header row")
    reader = csv.reader(io.StringIO(text), delimiter=";")
    header = [h.strip().upper() for h in next(reader)]
    if not any(h in IDENTIFIER_ATTRIBUTES for h in header):
        raise _bad("fileBody header must contain EMAIL, EXT_ID or SMS")
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        record = dict(zip(header, cells, strict=False))
        rows.append(
            {
                "email": record.pop("EMAIL", "") or None,
                "ext_id": record.pop("EXT_ID", "") or None,
                "sms": record.pop("SMS", "") or None,
                "attributes": record,
            }
        )
    return rows


def validate_list_members(body: dict[str, Any], *, allow_all: bool) -> tuple[str, list[Any]] | None:
    """Body of list add/remove: exactly one of emails/ids/extIds (≤150); None means `all: true`."""
    if allow_all and body.get("all") is True:
        return None
    kinds = [k for k in ("emails", "ids", "extIds") if body.get(k) is not None]
    if not kinds:
        raise _missing("One of emails, ids or extIds is required" + (" (or all: true)" if allow_all else ""))
    if len(kinds) > 1:
        raise _bad("Only one of emails, ids or extIds may be given")
    values = body[kinds[0]]
    if not isinstance(values, list) or not values:
        raise _bad(f"{kinds[0]} must be a non-empty array")
    if len(values) > LIST_MEMBERS_MAX:
        raise _bad(f"{kinds[0]} accepts at most {LIST_MEMBERS_MAX} entries", "out_of_range")
    if kinds[0] == "ids" and not all(_is_int(v) for v in values):
        raise _bad("ids must be integers")
    if kinds[0] != "ids" and not all(isinstance(v, str) for v in values):
        raise _bad(f"{kinds[0]} must be strings")
    return kinds[0], values


def validate_attribute(category: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Path + body of POST /contacts/attributes/{category}/{name}."""
    if category not in ATTRIBUTE_CATEGORIES:
        raise _bad(f"Invalid attribute category: {category!r}")
    if not ATTRIBUTE_NAME_RE.match(name):
        raise _bad(f"Invalid attribute name: {name!r}")
    definition: dict[str, Any] = {"name": name.upper(), "category": category}
    kind = body.get("type")
    if category in ("normal", "transactional", "category"):
        kind = kind or ("category" if category == "category" else "text")
        if kind not in ATTRIBUTE_TYPES:
            raise _bad(f"Invalid attribute type: {kind!r}")
        if (
            (kind in ("user", "multiple-choice") and category != "normal")
            or (kind == "id" and category != "transactional")
            or ((kind == "category") != (category == "category"))
        ):
            raise _bad(f"Attribute type {kind!r} is not allowed in category {category!r}")
        definition["type"] = kind
    elif kind is not None:
        raise _bad(f"type is not allowed for category {category!r}")
    for key in ("enumeration", "multiCategoryOptions", "value", "isRecurring"):
        if key in body:
            definition[key] = body[key]
    if category == "category" and not isinstance(body.get("enumeration"), list):
        raise _missing("enumeration is required for category attributes")
    return definition


def validate_event(event: Any, *, batch_item: bool) -> str | None:
    """One event (reference §4.1); returns the error message or None. Unknown top-level keys are ignored."""
    if not isinstance(event, dict):
        return "event must be an object"
    name = event.get("event_name")
    if name is None:
        return "event_name is required"
    if not isinstance(name, str) or not NAME_RE.match(name):
        return "event_name is invalid"
    identifiers = event.get("identifiers")
    if not isinstance(identifiers, dict) or not identifiers:
        return "identifiers is required"
    known = {k: v for k, v in identifiers.items() if k in EVENT_IDENTIFIER_KEYS and v not in (None, "")}
    if not known:
        return "identifiers must contain one of " + ", ".join(EVENT_IDENTIFIER_KEYS)
    if "contact_id" in known and not (_is_int(known["contact_id"]) and known["contact_id"] > 0):
        return "identifiers.contact_id must be a positive integer"
    for key in ("email_id", "ext_id", "phone_id", "whatsapp_id", "landline_number_id"):
        if key in known and not isinstance(known[key], str):
            return f"identifiers.{key} must be a string"
    if "email_id" in known and not IDENTIFIER_EMAIL_RE.match(known["email_id"]):
        return "identifiers.email_id is invalid"
    if "event_date" in event and event["event_date"] is not None:
        parsed = _parse_iso_datetime(event["event_date"])
        if parsed is None or parsed.tzinfo is None:
            return "event_date must be an ISO-8601 date-time with a timezone"
    contact_properties = event.get("contact_properties")
    if contact_properties is not None:
        if not isinstance(contact_properties, dict):
            return "contact_properties must be an object"
        for value in contact_properties.values():
            if batch_item and not (isinstance(value, str) or _is_int(value)):
                return "contact_properties values must be string or integer"
            if not batch_item and not (isinstance(value, str | bool) or _is_number(value)):
                return "contact_properties values must be string, number or boolean"
    event_properties = event.get("event_properties")
    if event_properties is not None:
        if not isinstance(event_properties, dict):
            return "event_properties must be an object"
        # Only top-level keys are checked; nested objects are free-form.
        if not all(isinstance(k, str) and NAME_RE.match(k) for k in event_properties):
            return "event_properties keys must match [A-Za-z0-9_-]{1,255}"
        if len(orjson.dumps(event_properties)) > EVENT_PROPERTIES_MAX_BYTES:
            return "event_properties exceeds 50 KB"
    if event.get("object") is not None and not isinstance(event["object"], dict):
        return "object must be an object"
    return None


def _order_date_ok(value: Any) -> bool:
    if not isinstance(value, str) or not ORDER_DATE_RE.match(value):
        return False
    try:
        datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    return True


def validate_order(order: Any) -> BrevoError | None:
    """One order object (reference §5); returns the error or None."""
    if not isinstance(order, dict):
        return _bad("order must be an object")
    for key in ("id", "createdAt", "updatedAt", "status", "amount", "products"):
        if order.get(key) is None:
            return _missing(f"{key} is required")
    if not isinstance(order["id"], str) or not order["id"]:
        return _bad("id must be a non-empty string")
    for key in ("createdAt", "updatedAt"):
        if not _order_date_ok(order[key]):
            return _bad(f"{key} must be a UTC date-time YYYY-MM-DDTHH:mm:ss(.SSS)Z")
    if not isinstance(order["status"], str) or not order["status"]:
        return _bad("status must be a non-empty string")
    if not _is_number(order["amount"]):
        return _bad("amount must be a number")
    products = order["products"]
    if not isinstance(products, list) or not products:
        return _bad("products must be a non-empty array")
    for index, product in enumerate(products):
        if not isinstance(product, dict):
            return _bad(f"products[{index}] must be an object")
        if product.get("productId") is None or product.get("price") is None:
            return _missing(f"products[{index}]: productId and price are required")
        if not isinstance(product["productId"], str) or not product["productId"]:
            return _bad(f"products[{index}].productId must be a non-empty string")
        if not _is_number(product["price"]):
            return _bad(f"products[{index}].price must be a number")
        quantity, quantity_float = product.get("quantity"), product.get("quantityFloat")
        if quantity is None and quantity_float is None:
            return _missing(f"products[{index}]: quantity or quantityFloat is required")
        if quantity is not None and not _is_int(quantity):
            return _bad(f"products[{index}].quantity must be an integer")
        if quantity_float is not None and not _is_number(quantity_float):
            return _bad(f"products[{index}].quantityFloat must be a number")
    identifiers = order.get("identifiers")
    if identifiers is not None:
        if not isinstance(identifiers, dict) or any(k not in ORDER_IDENTIFIER_KEYS for k in identifiers):
            return _bad("identifiers accepts only " + ", ".join(ORDER_IDENTIFIER_KEYS))
        if identifiers.get("email_id") is not None and not (
            isinstance(identifiers["email_id"], str) and IDENTIFIER_EMAIL_RE.match(identifiers["email_id"])
        ):
            return _bad("identifiers.email_id is invalid")
    coupons = order.get("coupons")
    if coupons is not None and not (isinstance(coupons, list) and all(isinstance(c, str) for c in coupons)):
        return _bad("coupons must be an array of strings")
    meta = order.get("metaInfo")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str | bool) or _is_int(v) for v in meta.values())
    ):
        return _bad("metaInfo values must be string, integer or boolean")
    return None


def _int_query(request: web.Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise _bad(f"{name} must be a non-negative integer")
    value = int(raw)
    if maximum is not None and value > maximum:
        raise _bad(f"{name} must be at most {maximum}", "out_of_range")
    return value


def _page(request: web.Request, items: list[Any], default_limit: int, max_limit: int) -> list[Any]:
    limit = _int_query(request, "limit", default_limit, max_limit)
    offset = _int_query(request, "offset", 0)
    sort = request.query.get("sort", "desc")
    if sort not in ("asc", "desc"):
        raise _bad("sort must be asc or desc")
    ordered = items if sort == "asc" else list(reversed(items))
    return ordered[offset : offset + limit]


# --------------------------------------------------------------------------------------------------------------
# /v3 handlers
# --------------------------------------------------------------------------------------------------------------


async def create_contact(request: web.Request) -> web.Response:
    state, body = _state(request), _body(request)
    patch = validate_contact(state, body, create=True)
    update_enabled = _optional_bool(body, "updateEnabled") or False
    force_merge = _optional_bool(body, "forceMerge") or False
    existing = state.matches(patch)
    if not existing:
        state.count_write("created")
        return _json({"id": state.create_contact(patch).id}, status=201)
    contact = existing[0]  # matched by ext_id, else email, else SMS
    others = state.conflicts(contact, patch, force_merge=force_merge and update_enabled)
    if not update_enabled:
        raise _bad("Contact already exist", "duplicate_parameter")
    if others:
        contact = state.merge(contact, others)
    state.write(contact, patch, merged=bool(others))
    if body.get("getId") is True:
        return _json({"id": contact.id})
    return web.Response(status=204)


def _path_contact(request: web.Request, *, allow_sms: bool) -> Contact:
    state = _state(request)
    contact = state.find_contact(
        request.match_info["identifier"], request.query.get("identifierType"), allow_sms=allow_sms
    )
    if contact is None:
        raise BrevoError(404, "document_not_found", "Contact does not exist")
    return contact


async def get_contact(request: web.Request) -> web.Response:
    return _json(_path_contact(request, allow_sms=True).to_json())


async def update_contact(request: web.Request) -> web.Response:
    state, body = _state(request), _body(request)
    contact = _path_contact(request, allow_sms=False)
    patch = validate_contact(state, body, create=False)
    others = state.conflicts(contact, patch, force_merge=bool(body.get("forceMerge")))
    if others:
        contact = state.merge(contact, others)
    state.write(contact, patch, merged=bool(others))
    return web.Response(status=204)


async def delete_contact(request: web.Request) -> web.Response:
    _state(request).delete_contact(_path_contact(request, allow_sms=False))
    return web.Response(status=204)


async def list_contacts(request: web.Request) -> web.Response:
    contacts = list(_state(request).contacts.values())
    page = _page(request, contacts, 50, 1000)
    return _json({"contacts": [c.to_json() for c in page], "count": len(contacts)})


async def batch_contacts(request: web.Request) -> web.Response:
    state = _state(request)
    for contact, patch in validate_contacts_batch(state, _body(request)):
        state.write(contact, patch)
    return web.Response(status=204)


def _import_row_patch(state: BrevoState, job: ImportJob, row: dict[str, Any]) -> ContactPatch:
    patch = ContactPatch(
        email_blacklisted=job.email_blacklist or None, sms_blacklisted=job.sms_blacklist or None
    )
    if row["email"]:
        patch.email = normalize_email(row["email"])
    if row["sms"]:
        patch.sms = normalize_sms(row["sms"])
    if row["ext_id"]:
        patch.ext_id = str(row["ext_id"])
    cells = {k: v for k, v in row["attributes"].items() if v not in ("", None) or job.empty_attributes}
    _contact_attributes(state, {k: (None if v == "" else v) for k, v in cells.items()}, patch, strict=False)
    return patch


IMPORT_REPORTS = (
    "invalid_emails", "duplicate_contact_id", "duplicate_ext_id", "duplicate_email_id", "duplicate_phone_id",
    "duplicate_whatsapp_id", "duplicate_landline_number_id",
)  # fmt: skip
_DUPLICATE_REPORT = {"email": "duplicate_email_id", "ext_id": "duplicate_ext_id", "sms": "duplicate_phone_id"}


async def import_contacts(request: web.Request) -> web.Response:
    """Apply the rows now; the process reports "completed" (after `import_delay_polls` polls) with
    `info.import`: for each report of IMPORT_REPORTS a loopback CSV URL when it lists something, else null.

    A row whose email is invalid is skipped and listed in `invalid_emails` (`email` column, the address as
    sent); a row whose SMS has no country code is skipped and counted invalid, listed nowhere; a row whose
    identifiers point at two different contacts (matched by EXT_ID, its EMAIL or SMS held by another) is skipped
    and listed in `duplicate_email_id` / `duplicate_phone_id`. A row with EXT_ID and no email creates an
    ext_id-only contact. Rows of one import apply in order (a later row wins)."""
    state = _state(request)
    job = validate_import(state, _body(request))
    list_ids = list(job.list_ids)
    if job.new_list:
        list_ids.append(state.create_list(*job.new_list).id)
    stats = Counter({"created": 0, "updated": 0, "unchanged": 0, "skipped": 0, "invalid": 0, "duplicates": 0})
    files: dict[str, list[str]] = {}
    for row in job.rows:
        try:
            patch = _import_row_patch(state, job, row)
        except BrevoError:
            stats["invalid"] += 1
            if row["email"] and not _valid_email(row["email"]):
                files.setdefault("invalid_emails", []).append(str(row["email"]))
            continue
        if not patch.has_identifier():
            stats["skipped"] += 1
            continue
        patch.list_ids = list_ids
        holders = state.holders(patch)
        conflicting = [(kind, c) for kind, c in holders if c is not holders[0][1]]
        if conflicting:
            stats["duplicates"] += 1
            for kind, _contact in conflicting:
                files.setdefault(_DUPLICATE_REPORT[kind], []).append(str(getattr(patch, kind)))
        elif not holders:
            state.create_contact(patch)
            state.count_write("created")
            stats["created"] += 1
        elif job.update_existing:
            stats[state.write(holders[0][1], patch)] += 1
        else:
            contact = holders[0][1]
            outcome = "updated" if not set(list_ids) <= contact.list_ids else "unchanged"
            contact.list_ids.update(list_ids)
            state.count_write(outcome)
            stats["skipped"] += 1
    process = state.new_process("IMPORTUSER", delay_polls=state.faults.import_delay_polls)
    base = f"{request.scheme}://{request.host}/_sandbox/brevo/processes/{process['id']}"
    report = {name: (f"{base}/{name}.csv" if files.get(name) else None) for name in IMPORT_REPORTS}
    headers = {"invalid_emails": "email", "duplicate_email_id": "email", "duplicate_ext_id": "ext_id",
               "duplicate_phone_id": "sms"}
    state.process_files[process["id"]] = {name: (headers[name], rows) for name, rows in files.items()}
    process["info"] = {"import": report, "sandbox": dict(stats)}
    return _json({"processId": process["id"]}, status=202)


async def get_process(request: web.Request) -> web.Response:
    state, pid = _state(request), request.match_info["process_id"]
    if not pid.isdigit() or int(pid) not in state.processes:
        raise BrevoError(404, "document_not_found", "Process does not exist")
    return _json(state.process_view(int(pid), poll=True))


async def list_processes(request: web.Request) -> web.Response:
    state = _state(request)
    processes = [state.process_view(pid) for pid in state.processes]
    return _json({"processes": _page(request, processes, 10, 50), "count": len(processes)})


async def get_attributes(request: web.Request) -> web.Response:
    return _json({"attributes": list(_state(request).attributes.values())})


async def create_attribute(request: web.Request) -> web.Response:
    state = _state(request)
    definition = validate_attribute(
        request.match_info["category"], request.match_info["name"], _body(request)
    )
    if definition["name"] in state.attributes:
        raise _bad(f"Attribute {definition['name']} already exists", "duplicate_parameter")
    state.attributes[definition["name"]] = definition
    return web.Response(status=201)


def _list_json(state: BrevoState, info: ListInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "folderId": info.folder_id,
        "uniqueSubscribers": len(state.members(info.id)),
        "totalBlacklisted": 0,
        "totalSubscribers": 0,
    }


def _path_list(request: web.Request) -> ListInfo:
    raw = request.match_info["list_id"]
    info = _state(request).lists.get(int(raw)) if raw.isdigit() else None
    if info is None:
        raise BrevoError(404, "document_not_found", "List ID does not exist")
    return info


async def get_lists(request: web.Request) -> web.Response:
    state = _state(request)
    lists = list(state.lists.values())
    page = _page(request, lists, 10, 50)
    return _json({"lists": [_list_json(state, i) for i in page], "count": len(lists)})


async def get_list(request: web.Request) -> web.Response:
    state, info = _state(request), _path_list(request)
    return _json(
        {**_list_json(state, info), "createdAt": info.created_at, "campaignStats": [], "dynamicList": False}
    )


async def create_list(request: web.Request) -> web.Response:
    state, body = _state(request), _body(request)
    if body.get("name") is None or body.get("folderId") is None:
        raise _missing("name and folderId are required")
    if not isinstance(body["name"], str) or not body["name"]:
        raise _bad("name must be a non-empty string")
    if not _is_int(body["folderId"]) or body["folderId"] not in state.folders:
        raise _bad("folderId must be an existing folder id")
    return _json({"id": state.create_list(body["name"], body["folderId"]).id}, status=201)


async def get_folders(request: web.Request) -> web.Response:
    folders = [{"id": fid, "name": name} for fid, name in _state(request).folders.items()]
    return _json({"folders": _page(request, folders, 10, 50), "count": len(folders)})


async def create_folder(request: web.Request) -> web.Response:
    state, name = _state(request), _body(request).get("name")
    if not isinstance(name, str) or not name:
        raise _missing("name is required")
    fid = max([*state.folders, 0]) + 1
    state.folders[fid] = name
    return _json({"id": fid}, status=201)


def _lookup_member(state: BrevoState, kind: str, value: Any) -> Contact | None:
    if kind == "ids":
        return state.contacts.get(value)
    if kind == "emails":
        return state.contacts.get(state.by_email.get(value.strip().lower(), -1))
    return state.contacts.get(state.by_ext_id.get(value, -1))


async def list_add(request: web.Request) -> web.Response:
    state, info = _state(request), _path_list(request)
    selection = validate_list_members(_body(request), allow_all=False)
    assert selection is not None
    kind, values = selection
    success, failure = [], []
    for value in values:
        contact = _lookup_member(state, kind, value)
        if contact is None:
            failure.append(value)
            continue
        if info.id not in contact.list_ids:
            contact.list_ids.add(info.id)
            state.touch(contact)
        success.append(value)
    return _json({"contacts": {"success": success, "failure": failure}}, status=201)


async def list_remove(request: web.Request) -> web.Response:
    state, info = _state(request), _path_list(request)
    selection = validate_list_members(_body(request), allow_all=True)
    if selection is None:
        members = state.members(info.id)
        for contact in members:
            contact.list_ids.discard(info.id)
            state.touch(contact)
        process = state.new_process("REMOVE_LIST_CONTACTS")
        return _json({"contacts": {"total": len(members), "processId": process["id"]}}, status=201)
    kind, values = selection
    success, failure = [], []
    for value in values:
        contact = _lookup_member(state, kind, value)
        if contact is None or info.id not in contact.list_ids:
            failure.append(value)  # unknown contact, or not a member of the list
            continue
        contact.list_ids.discard(info.id)
        state.touch(contact)
        success.append(value)
    return _json({"contacts": {"success": success, "failure": failure}}, status=201)


async def list_members(request: web.Request) -> web.Response:
    state, info = _state(request), _path_list(request)
    members = state.members(info.id)
    page = _page(request, members, 50, 500)
    return _json({"contacts": [c.to_json() for c in page], "count": len(members)})


def _apply_contact_properties(state: BrevoState, event: dict[str, Any]) -> None:
    """Set an accepted event's contact_properties on its contact when that contact exists (never creates one).

    contact_id wins over the other identifiers; unknown or ill-fitting attributes are dropped.
    """
    properties = event.get("contact_properties")
    if not properties:
        return
    identifiers = event["identifiers"]
    cid = identifiers.get("contact_id")
    if cid is None:
        email, ext_id = identifiers.get("email_id"), identifiers.get("ext_id")
        cid = state.by_email.get(email.lower()) if isinstance(email, str) else None
        if cid is None and isinstance(ext_id, str):
            cid = state.by_ext_id.get(ext_id)
    contact = state.contacts.get(cid) if cid is not None else None
    if contact is None:
        return
    patch = ContactPatch()
    names = {k: v for k, v in properties.items() if str(k).upper() not in IDENTIFIER_ATTRIBUTES}
    _contact_attributes(state, names, patch, strict=False)
    state.apply_patch(contact, patch)


def _refused(state: BrevoState, event: dict[str, Any]) -> str | None:
    """The `reject_ext_ids` fault: a well-formed event Brevo still refuses (as for a blocked contact)."""
    ext_id = (event.get("identifiers") or {}).get("ext_id")
    if ext_id is not None and ext_id in state.faults.reject_ext_ids:
        return f"contact {ext_id} cannot receive events"
    return None


async def create_event(request: web.Request) -> web.Response:
    state, body = _state(request), _body(request)
    message = validate_event(body, batch_item=False) or _refused(state, body)
    if message:
        raise _bad(message)
    state.store_events([body])
    _apply_contact_properties(state, body)
    return web.Response(status=204)


async def create_events_batch(request: web.Request) -> web.Response:
    state, body = _state(request), _body(request)
    events = body.get("events")
    if events is None:
        raise _missing("events is required")
    if not isinstance(events, list) or not events:
        raise _bad("events must be a non-empty array")
    if len(events) > state.events_batch_max:
        raise _bad(f"at most {state.events_batch_max} events per batch", "out_of_range")
    errors: dict[str, list[int]] = {}
    accepted = []
    for index, event in enumerate(events):
        message = validate_event(event, batch_item=True) or _refused(state, event)
        if message:
            errors.setdefault(message, []).append(index)
        else:
            accepted.append(event)
    state.store_events(accepted)
    for event in accepted:
        _apply_contact_properties(state, event)
    if not errors:
        return _json({"message": "Events queued", "count": len(accepted)}, status=202)
    failed = len(events) - len(accepted)
    report = {
        "status": "partial" if accepted else "failed",
        "total_events": len(events),
        "successful_events": len(accepted),
        "failed_events": failed,
        "errors": [{"eventIndex": indexes, "message": message} for message, indexes in errors.items()],
    }
    if accepted:
        return _json(report, status=207)
    # Brevo's documented all-failed body plus the §0.1 code/message pair, so either reading works.
    return _json(
        {"code": "invalid_parameter", "message": "All events failed validation", **report}, status=400
    )


ECOMMERCE_INACTIVE = (
    "eCommerce is not activated on this account. Activate it with POST /ecommerce/activate or in Brevo "
    "(Settings > eCommerce)"
)


def _require_ecommerce(state: BrevoState) -> None:
    if not state.ecommerce_active:
        raise BrevoError(403, "permission_denied", ECOMMERCE_INACTIVE)


async def ecommerce_activate(request: web.Request) -> web.Response:
    """POST /ecommerce/activate (no body): 200, no body ("activation is in process"); active at once here."""
    state = _state(request)
    state.ecommerce_active = True
    state.ecommerce_activations += 1
    return web.Response(status=200)


async def get_display_currency(request: web.Request) -> web.Response:
    state = _state(request)
    _require_ecommerce(state)
    return _json({"code": state.display_currency})


async def set_display_currency(request: web.Request) -> web.Response:
    state, body = _state(request), _body(request)
    _require_ecommerce(state)
    code = body.get("code")
    if code is None:
        raise _missing("code is required")
    if not (isinstance(code, str) and re.fullmatch(r"[A-Z]{3}", code)):
        raise BrevoError(422, "unprocessable_entity", "code must be an ISO 4217 currency code")
    state.display_currency = code
    return _json({"code": code})


async def list_orders(request: web.Request) -> web.Response:
    """GET /orders: `limit` (default 50, max 100), `offset`, `sort` (default desc, by first receipt)."""
    state = _state(request)
    _require_ecommerce(state)
    orders = list(state.orders.values())
    return _json({"orders": _page(request, orders, 50, 100), "count": len(orders)})


async def create_order(request: web.Request) -> web.Response:
    state, body = _state(request), _body(request)
    _require_ecommerce(state)
    error = validate_order(body)
    if error:
        raise error
    state.store_order(body, historical=False)
    return web.Response(status=204)


async def create_orders_batch(request: web.Request) -> web.Response:
    state, body = _state(request), _body(request)
    _require_ecommerce(state)
    orders = body.get("orders")
    if orders is None:
        raise _missing("orders is required")
    if not isinstance(orders, list) or not orders:
        raise _bad("orders must be a non-empty array")
    if len(orders) > ORDERS_BATCH_MAX:
        raise _bad(f"at most {ORDERS_BATCH_MAX} orders per batch", "out_of_range")
    historical = _optional_bool(body, "historical")
    historical = True if historical is None else historical
    if body.get("notifyUrl") is not None and not isinstance(body["notifyUrl"], str):
        raise _bad("notifyUrl must be a string")
    for index, order in enumerate(orders):  # all or nothing
        error = validate_order(order)
        if error:
            raise error.prefixed(f"orders[{index}]")
    if state.faults.orders_batch_drop > 0:  # fault: the last order of this batch never lands
        state.faults.orders_batch_drop -= 1
        orders = orders[:-1]
    for order in orders:
        state.store_order(order, historical)
    return _json({"batchId": state.new_batch_id(), "count": len(orders)}, status=202)


# --------------------------------------------------------------------------------------------------------------
# middleware: faults, auth, rate limits, body parsing, error shape, counters
# --------------------------------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_CODES = {404: "document_not_found", 405: "method_not_allowed", 413: "out_of_range"}


BODYLESS_PATHS = frozenset({"/v3/ecommerce/activate"})  # POSTs that take no body


async def _read_json_body(request: web.Request) -> dict[str, Any]:
    """POST/PUT bodies: JSON objects only (406 for another content type, 400 for bad JSON)."""
    raw = await request.read()
    if not raw.strip():
        if request.path in BODYLESS_PATHS:
            return {}
        raise _missing("No inputs in the body")
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise BrevoError(406, "not_acceptable", "Content-Type must be application/json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BrevoError(400, "bad_request", "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BrevoError(400, "bad_request", "Request body must be a JSON object")
    return body


async def _serve_v3(
    request: web.Request, handler: Handler, state: BrevoState, bucket: str
) -> web.StreamResponse:
    fault = state.draw_fault()
    if state.faults.latency > 0:
        await asyncio.sleep(state.faults.latency)
    if fault is not None:
        return _injected(request, state, bucket, fault)
    if request.headers.get("api-key") != state.api_key:
        state.rejected += 1
        return _error_response(401, "unauthorized", "Key not found")
    window = state.windows[bucket]
    allowed, remaining, reset = window.take(state.clock())
    headers = window.headers(remaining, reset)
    if not allowed:
        state.rate_limited += 1
        return _error_response(429, "too_many_requests", "Too many requests, rate limit exceeded", headers)
    try:
        routing_error = getattr(request.match_info, "http_exception", None)
        if routing_error is not None:
            raise routing_error
        if request.method in ("POST", "PUT"):
            request[_BODY] = await _read_json_body(request)
        response = await handler(request)
    except BrevoError as exc:
        response = _error_response(exc.status, exc.code, exc.message, metadata=exc.metadata)
    except web.HTTPException as exc:
        response = _error_response(exc.status, HTTP_CODES.get(exc.status, "bad_request"), exc.reason)
    if 400 <= response.status < 500:
        state.rejected += 1
    response.headers.update(headers)
    return response


def _injected(
    request: web.Request, state: BrevoState, bucket: str, fault: tuple[str, int]
) -> web.StreamResponse:
    kind, status = fault
    state.injected += 1
    if kind == "reset":
        state.resets += 1
        request[_RESET] = True
        if request.transport is not None:
            request.transport.abort()
        # Writing this response fails on the aborted transport; aiohttp treats that as a client disconnect.
        return web.Response(status=500)
    if kind == "not_found":
        # Not Brevo answering: no rate-limit headers, no JSON.
        return web.Response(status=404, text=NOT_FOUND_PAGE, content_type="text/html")
    if kind == "outage":
        return _error_response(503, "service_unavailable", "Sandbox outage: service temporarily unavailable")
    if status == 429:
        # An injected 429 is a momentary throttle, not a spent window: it asks for a 1-second wait, so that
        # a fault on an hourly bucket does not read as "come back in an hour".
        window = state.windows[bucket]
        headers = window.headers(0, min(1, window.reset_in(state.clock())))
        return _error_response(429, "too_many_requests", "Injected rate limit", headers)
    return _error_response(status, "internal_error", f"Injected failure {status}")


@web.middleware
async def brevo_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v3/"):
        return await handler(request)
    state = request.app[BREVO_STATE]
    bucket = state.bucket_for(request.method, request.path)
    state.requests[bucket] += 1
    response = await _serve_v3(request, handler, state, bucket)
    if not request.get(_RESET):  # resets are counted in state.resets, they have no status
        state.statuses[str(response.status)] += 1
    return response


# --------------------------------------------------------------------------------------------------------------
# sandbox control (no auth, no rate limit, no faults)
# --------------------------------------------------------------------------------------------------------------


async def _control_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise BrevoError(400, "bad_request", "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BrevoError(400, "bad_request", "Request body must be a JSON object")
    return body


def _faults_json(state: BrevoState) -> dict[str, Any]:
    return {**asdict(state.faults), "error_statuses": list(state.faults.error_statuses),
            "reject_ext_ids": sorted(state.faults.reject_ext_ids)}


async def sandbox_received(request: web.Request) -> web.Response:
    return _json(_state(request).dump())


async def sandbox_received_count(request: web.Request) -> web.Response:
    """What `received` holds, counted: cheap enough to poll while thousands of events arrive."""
    return _json(_state(request).counts())


async def sandbox_received_events(request: web.Request) -> web.Response:
    """`?since=N`: the events stored from the N-th on, each `{received_at, event}`, and `total` stored."""
    try:
        since = _int_query(request, "since", 0)
    except BrevoError as exc:
        return _error_response(exc.status, exc.code, exc.message)
    return _json(_state(request).events_since(since))


async def sandbox_faults(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        state.update_faults(await _control_body(request))
    except BrevoError as exc:
        return _error_response(exc.status, exc.code, exc.message)
    return _json(_faults_json(state))


async def sandbox_limits(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        body = await _control_body(request)
        for bucket, spec in body.items():
            if bucket not in BUCKETS:
                raise _bad(f"Unknown bucket {bucket!r}; expected one of {list(BUCKETS)}")
            if spec is None and bucket in OPTIONAL_BUCKETS:
                continue
            if not (
                isinstance(spec, dict)
                and _is_int(spec.get("requests"))
                and spec["requests"] > 0
                and _is_number(spec.get("per"))
                and spec["per"] > 0
            ):
                raise _bad(f"{bucket}: expected {{'requests': positive int, 'per': positive seconds}}")
    except BrevoError as exc:
        return _error_response(exc.status, exc.code, exc.message)
    for bucket, spec in body.items():
        state.set_limit(bucket, None if spec is None else BucketLimit(spec["requests"], float(spec["per"])))
    return _json({name: asdict(w.limit) for name, w in state.windows.items()})


async def sandbox_ecommerce(request: web.Request) -> web.Response:
    """GET: `{"active": bool}`; POST `{"active": false}` deactivates eCommerce (true activates it)."""
    state = _state(request)
    if request.method == "POST":
        try:
            body = await _control_body(request)
            if set(body) != {"active"} or not isinstance(body["active"], bool):
                raise _bad('expected {"active": true|false}')
        except BrevoError as exc:
            return _error_response(exc.status, exc.code, exc.message)
        state.ecommerce_active = body["active"]
    return _json({"active": state.ecommerce_active})


async def sandbox_process_file(request: web.Request) -> web.Response:
    """The CSV an import's `info.import.<report>` URL points to: a header line, then one value per line."""
    state, pid, name = _state(request), request.match_info["process_id"], request.match_info["report"]
    files = state.process_files.get(int(pid)) if pid.isdigit() else None
    if files is None or name not in files:
        return _error_response(404, "document_not_found", "No such report")
    header, rows = files[name]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([header])
    writer.writerows([value] for value in rows)
    return web.Response(text=out.getvalue(), content_type="text/csv")


async def sandbox_reset(request: web.Request) -> web.Response:
    _state(request).reset()
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------------------
# application
# --------------------------------------------------------------------------------------------------------------


def make_brevo_app(
    *,
    api_key: str,
    limits: dict[str, BucketLimit] | None = None,
    faults: BrevoFaults | None = None,
    attributes: list[dict[str, Any]] | None = None,
    lists: dict[int, str] | None = None,
    events_batch_max: int = EVENTS_BATCH_MAX,
    events_batch_bucket: str = "other",
    ecommerce_active: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the simulator app; `app[BREVO_STATE]` is the live state.

    `events_batch_bucket`: which rate bucket `/events/batch` spends, "other" or "events" (EVENTS_BATCH_BUCKETS).
    `clock`: what the rate windows and the outage / not-found durations are measured on (a test passes a fake
    one and advances it instead of sleeping).
    """
    app = web.Application(middlewares=[brevo_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[BREVO_STATE] = BrevoState(
        api_key=api_key,
        limits=limits,
        faults=faults,
        attributes=attributes,
        lists=lists,
        events_batch_max=events_batch_max,
        events_batch_bucket=events_batch_bucket,
        ecommerce_active=ecommerce_active,
        clock=clock,
    )
    r = app.router
    r.add_post("/v3/contacts", create_contact)
    r.add_get("/v3/contacts", list_contacts)
    r.add_post("/v3/contacts/batch", batch_contacts)
    r.add_post("/v3/contacts/import", import_contacts)
    r.add_get("/v3/contacts/attributes", get_attributes)
    r.add_post("/v3/contacts/attributes/{category}/{name}", create_attribute)
    r.add_get("/v3/contacts/folders", get_folders)
    r.add_post("/v3/contacts/folders", create_folder)
    r.add_get("/v3/contacts/lists", get_lists)
    r.add_post("/v3/contacts/lists", create_list)
    r.add_get("/v3/contacts/lists/{list_id}", get_list)
    r.add_get("/v3/contacts/lists/{list_id}/contacts", list_members)
    r.add_post("/v3/contacts/lists/{list_id}/contacts/add", list_add)
    r.add_post("/v3/contacts/lists/{list_id}/contacts/remove", list_remove)
    r.add_get("/v3/contacts/{identifier}", get_contact)
    r.add_put("/v3/contacts/{identifier}", update_contact)
    r.add_delete("/v3/contacts/{identifier}", delete_contact)
    r.add_get("/v3/processes", list_processes)
    r.add_get("/v3/processes/{process_id}", get_process)
    r.add_post("/v3/events", create_event)
    r.add_post("/v3/events/batch", create_events_batch)
    r.add_post("/v3/orders/status", create_order)
    r.add_post("/v3/orders/status/batch", create_orders_batch)
    r.add_get("/v3/orders", list_orders)
    r.add_post("/v3/ecommerce/activate", ecommerce_activate)
    r.add_get("/v3/ecommerce/config/displayCurrency", get_display_currency)
    r.add_post("/v3/ecommerce/config/displayCurrency", set_display_currency)
    r.add_get("/_sandbox/brevo/received", sandbox_received)
    r.add_get("/_sandbox/brevo/received/count", sandbox_received_count)
    r.add_get("/_sandbox/brevo/received/events", sandbox_received_events)
    r.add_post("/_sandbox/brevo/faults", sandbox_faults)
    r.add_post("/_sandbox/brevo/limits", sandbox_limits)
    r.add_post("/_sandbox/brevo/reset", sandbox_reset)
    r.add_get("/_sandbox/brevo/ecommerce", sandbox_ecommerce)
    r.add_post("/_sandbox/brevo/ecommerce", sandbox_ecommerce)
    r.add_get("/_sandbox/brevo/processes/{process_id}/{report}.csv", sandbox_process_file)
    return app
