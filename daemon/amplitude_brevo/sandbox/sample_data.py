"""Deterministic, realistic Amplitude Export API rows (one lazy generator per server-upload hour).

Identified users carry in `user_properties` a source for every key of the seed's `property_mapping` (SPEC
Appendix A): email, first_name, last_name, phone (absent for ~5 %), plan_type, signup_date (`YYYY-MM-DD`),
total_purchases, lifetime_revenue, last_active (ISO, from the row's event time), device_type (also a top-level
column, with another value); plus interests and newsletter (boolean).

A small, fixed share of users carries values Brevo refuses or that cannot be converted, picked by user index so
that they do not depend on the seed and do not change the rows, their number or their event types
(`bad_value_users(spec)` lists them):
- signup_date unparseable: index % 100 == 37 (1 %): "31/02/2024" or "soon", alternately;
- email Brevo refuses: index % 200 == 11 (0.5 %): "first..last11@domain" (passes a naive `x@y.z` check, refused
  by Brevo's) or "first.last211@@domain" (refused by both), alternately;
- newsletter "maybe" instead of true/false: index % 50 == 23 (2 %);
- phone without a country code: ~15 % of users (drawn with the rest of the user).
"""

from __future__ import annotations

import bisect
import random
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import accumulate
from typing import Any

from .. import durations

__all__ = [
    "BAD_EMAIL",
    "BAD_NEWSLETTER",
    "BAD_SIGNUP_DATE",
    "DEFAULT_EVENT_TYPES",
    "EXPORT_ROW_FIELDS",
    "REVENUE_EVENT_TYPES",
    "DatasetSpec",
    "bad_value_users",
    "format_ts",
    "hour_key",
    "hours",
    "parse_hour_key",
    "rows_for_hour",
]

DEFAULT_EVENT_TYPES: tuple[str, ...] = (
    "Purchase",
    "Sign Up",
    "Add to Cart",
    "Page View",
    "Feature Click",
    "Revenue",
    "Subscription Started",
    "session_start",
    "$identify",
)
REVENUE_EVENT_TYPES = frozenset({"Purchase", "Revenue", "Subscription Started"})

# Every top-level key of an exported row (reference: amplitude-api.md §1, "Complete field list").
EXPORT_ROW_FIELDS: tuple[str, ...] = (
    "$insert_id", "$insert_key", "$schema", "adid", "amplitude_attribution_ids", "amplitude_event_type",
    "amplitude_id", "app", "city", "client_event_time", "client_upload_time", "country", "data", "data_type",
    "device_brand", "device_carrier", "device_family", "device_id", "device_manufacturer", "device_model",
    "device_type", "dma", "event_id", "event_properties", "event_time", "event_type", "global_user_properties",
    "group_properties", "groups", "idfa", "ip_address", "is_attribution_event", "language", "library",
    "location_lat", "location_lng", "os_name", "os_version", "partner_id", "paying", "plan", "platform",
    "processed_time", "region", "sample_rate", "server_received_time", "server_upload_time", "session_id",
    "source_id", "start_version", "user_creation_time", "user_id", "user_properties", "uuid", "version_name",
)  # fmt: skip

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
_HOUR_KEY_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})$")


@dataclass(frozen=True)
class DatasetSpec:
    """Shape of the simulated project: which hours hold data, how much, and how it looks."""

    seed: int = 42
    start: datetime = datetime(2024, 1, 15, 0, tzinfo=UTC)  # first server-upload hour (UTC)
    hours: int = 6
    rows_per_hour: int = 2000
    users: int = 500
    app_id: int = 187520
    anonymous_fraction: float = 0.05
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    late_fraction: float = 0.02  # rows whose event_time is hours before their server_upload_time

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _as_hour(self.start))
        object.__setattr__(self, "event_types", tuple(self.event_types))
        if self.hours < 0 or self.rows_per_hour < 0 or self.users < 1 or not self.event_types:
            raise ValueError("DatasetSpec needs hours >= 0, rows_per_hour >= 0, users >= 1, event types")

    @property
    def end(self) -> datetime:
        """Exclusive end of the data (the hour after the last one holding data)."""
        return self.start + timedelta(hours=self.hours)

    def has_hour(self, hour: datetime) -> bool:
        return self.start <= _as_hour(hour) < self.end


def _as_hour(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    if value.minute or value.second or value.microsecond:
        raise ValueError(f"not a whole UTC hour: {value.isoformat()}")
    return value


def hour_key(hour: datetime) -> str:
    """The Export API's hour notation, ``YYYYMMDDTHH``, of a whole UTC hour."""
    return durations.hour_key(_as_hour(hour))


def parse_hour_key(key: str) -> datetime:
    """Parse ``YYYYMMDDTHH`` (UTC); raises ValueError on anything else."""
    m = _HOUR_KEY_RE.match(key)
    if not m:
        raise ValueError(f"bad hour {key!r}, expected YYYYMMDDTHH")
    y, mo, d, h = (int(g) for g in m.groups())
    return datetime(y, mo, d, h, tzinfo=UTC)


def hours(spec: DatasetSpec) -> list[datetime]:
    """The server-upload hours that hold data, in order."""
    return [spec.start + timedelta(hours=i) for i in range(spec.hours)]


# ---------------------------------------------------------------------------------------------------------
# timestamps: "2024-01-15 10:23:45.123000" (space, 6-digit micros, ms precision, no zone, UTC)

_MINUTE_MS = 60_000
_SEC_MS = tuple(f"{s:02d}.{m:03d}000" for s in range(60) for m in range(0, 1000, 1))  # 60k short strings
_minute_cache: dict[int, str] = {}


def _minute_prefix(minute: int) -> str:
    if len(_minute_cache) > 500_000:
        _minute_cache.clear()
    p = _minute_cache[minute] = (_EPOCH + timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:")
    return p


def format_ts(ms: int) -> str:
    """Format epoch milliseconds the way export rows carry timestamps."""
    minute, rem = divmod(ms, _MINUTE_MS)
    p = _minute_cache.get(minute)
    if p is None:
        p = _minute_prefix(minute)
    return p + _SEC_MS[rem]


def _iso_z(ms: int) -> str:
    s = format_ts(ms)
    return f"{s[:10]}T{s[11:23]}Z"


def _ms(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(milliseconds=1)


_UUID_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _uuid(raw: bytes) -> str:
    """Format 16 random bytes as a version-4 UUID string."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# ---------------------------------------------------------------------------------------------------------
# static vocabularies

_FIRST = (
    "Ana", "José", "Zoë", "Liam", "Emma", "Noah", "Olivia", "Lucas", "Mia", "Hugo", "Léa", "Jonas", "Sofia",
    "Mateo", "Chloé", "Aarav", "Yuki", "Fatima", "Oliver", "Ingrid", "Sean", "Priya", "Giulia", "Bjørn",
)  # fmt: skip
_LAST = (
    "Garcia", "Müller", "O'Brien", "Smith", "Dubois", "Rossi", "Silva", "Kowalski", "Nguyen", "Tanaka",
    "Johansson", "Patel", "Martin", "Bernard", "Schmidt", "López", "Fischer", "Moreau", "Kim", "Andersen",
)  # fmt: skip
_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "example.com", "proton.me", "acme.io", "gmx.de", "orange.fr")

# country, region, city, dma, lat, lng, language, phone country code, national phone style
_LOCATIONS = (
    ("United States", "California", "San Francisco", "San Francisco-Oakland-San Jose, CA", 37.7749, -122.4194,
     "English", "1", "us"),
    ("United States", "New York", "New York", "New York, NY", 40.7128, -74.006, "English", "1", "us"),
    ("United States", "Texas", "Austin", "Austin, TX", 30.2672, -97.7431, "English", "1", "us"),
    ("United States", "Washington", "Seattle", "Seattle-Tacoma, WA", 47.6062, -122.3321, "English", "1", "us"),
    ("France", "Île-de-France", "Paris", None, 48.8566, 2.3522, "French", "33", "fr"),
    ("France", "Auvergne-Rhône-Alpes", "Lyon", None, 45.764, 4.8357, "French", "33", "fr"),
    ("Germany", "Berlin", "Berlin", None, 52.52, 13.405, "German", "49", "eu"),
    ("United Kingdom", "England", "London", None, 51.5074, -0.1278, "English", "44", "eu"),
    ("Spain", "Madrid", "Madrid", None, 40.4168, -3.7038, "Spanish", "34", "eu"),
    ("Brazil", "Sao Paulo", "São Paulo", None, -23.5505, -46.6333, "Portuguese", "55", "eu"),
    ("Canada", "Quebec", "Montréal", None, 45.5017, -73.5673, "French", "1", "us"),
    ("Japan", "Tokyo", "Tokyo", None, 35.6762, 139.6503, "Japanese", "81", "eu"),
    ("India", "Maharashtra", "Mumbai", None, 19.076, 72.8777, "English", "91", "eu"),
    ("Italy", "Lombardy", "Milan", None, 45.4642, 9.19, "Italian", "39", "eu"),
    ("Switzerland", "Zurich", "Zürich", None, 47.3769, 8.5417, "German", "41", "eu"),
)  # fmt: skip

# platform, os_name, os_version, device_family, device_type, brand, manufacturer, model, carrier, library,
# mobile, user_properties.device_type
_DEVICES = (
    ("iOS", "ios", "17.2.1", "Apple iPhone", "Apple iPhone 15 Pro", "Apple", "Apple", "iPhone16,1", "Verizon",
     "amplitude-swift/1.4.3", True, "mobile"),
    ("iOS", "ios", "16.7.4", "Apple iPhone", "Apple iPhone 12", "Apple", "Apple", "iPhone13,2", "AT&T",
     "amplitude-swift/1.4.3", True, "mobile"),
    ("iOS", "ipados", "17.1", "Apple iPad", "Apple iPad Air", "Apple", "Apple", "iPad13,16", None,
     "amplitude-swift/1.4.3", True, "tablet"),
    ("Android", "android", "14", "Samsung Galaxy S23", "Samsung Galaxy S23", "samsung", "samsung", "SM-S911B",
     "T-Mobile", "amplitude-android/1.16.0", True, "mobile"),
    ("Android", "android", "13", "Google Pixel 7", "Google Pixel 7", "google", "Google", "Pixel 7", "Orange F",
     "amplitude-android/1.16.0", True, "mobile"),
    ("Web", "Chrome", "120", "Mac", "Apple Mac", None, None, None, None, "amplitude-ts/2.4.1", False, "desktop"),
    ("Web", "Chrome", "121", "Windows", "Windows", None, None, None, None, "amplitude-ts/2.4.1", False, "desktop"),
    ("Web", "Firefox", "122.0", "Windows", "Windows", None, None, None, None, "amplitude-ts/2.4.1", False,
     "desktop"),
    ("Web", "Safari", "17.2", "Mac", "Apple Mac", None, None, None, None, "amplitude-ts/2.4.1", False, "desktop"),
    ("Web", "Mobile Safari", "17.2", "Apple iPhone", "Apple iPhone", None, None, None, None,
     "amplitude-ts/2.4.1", False, "mobile"),
)  # fmt: skip
_APP_VERSIONS = ("3.4.1", "3.4.0", "3.3.2", "3.2.0")
_PLANS = ("free", "free", "free", "starter", "pro", "pro", "enterprise")
_PLAN_PRICES = {"starter": 9.0, "pro": 29.0, "enterprise": 199.0, "free": 0.0}
_INTERESTS = ("chess", "music", "cooking", "running", "travel", "photography", "gaming", "finance", "yoga")
_UTM_SOURCES = ("google", "facebook", "newsletter", "twitter", "linkedin", "direct", "bing")
_UTM_MEDIUMS = ("cpc", "social", "email", "organic", "referral")
_CAMPAIGNS = ("winter_sale", "spring_launch", "retargeting_q1", "brand", "black friday")
_PAGES = (
    ("Home", "/"), ("Pricing", "/pricing"), ("Product — Details", "/product/sku-0042"), ("Blog: Release notes", "/blog/release-notes"),
    ("Checkout", "/checkout"), ("Account settings", "/account/settings"), ("Docs / Getting started", "/docs/start"),
)  # fmt: skip
_REFERRERS = ("https://www.google.com/", "https://t.co/", "https://news.ycombinator.com/", None, "https://www.bing.com/")
_FEATURES = (
    ("export_csv", "btn-export", "Dashboard"), ("share_link", "btn-share", "Report"),
    ("dark_mode", "toggle-theme", "Settings"), ("invite_teammate", "btn-invite", "Team"),
    ("create_chart", "btn-new-chart", "Dashboard"), ("search", "input-search", "Home"),
)  # fmt: skip
_PRODUCTS = tuple(
    (f"sku-{i:04d}", name, cat, price)
    for i, (name, cat, price) in enumerate(
        (
            ("Classic T-Shirt", "apparel", 19.99), ("Hoodie \"Night\"", "apparel", 49.0),
            ("Espresso Beans 1kg", "grocery", 24.5), ("Wireless Mouse", "electronics", 29.9),
            ("USB-C Hub", "electronics", 59.0), ("Yoga Mat", "sport", 35.0), ("Notebook A5", "office", 7.5),
            ("Gift Card", "gift", 50.0), ("Running Shoes", "sport", 119.0), ("Desk Lamp", "home", 42.0),
        ),
        start=1,
    )
)  # fmt: skip
_COMPANIES = ("acme", "globex", "initech", "umbrella", "hooli")
_SIGNUP_METHODS = ("email", "google", "apple", "github")
_CURRENCIES = ("USD", "USD", "USD", "EUR", "EUR", "GBP")
_SCHEMA_PLAN = {"branch": "main", "source": "web", "version": "7"}

# Bad values, by user index: (modulus, remainder) — see the module docstring.
BAD_SIGNUP_DATE = (100, 37)
BAD_EMAIL = (200, 11)
BAD_NEWSLETTER = (50, 23)
_BAD_SIGNUP_DATES = ("31/02/2024", "soon")


def _has(rule: tuple[int, int], idx: int) -> bool:
    return idx % rule[0] == rule[1]


_EVENT_WEIGHTS = {
    "Page View": 30.0, "Feature Click": 18.0, "session_start": 12.0, "Add to Cart": 9.0, "$identify": 6.0,
    "Purchase": 6.0, "Sign Up": 4.0, "Revenue": 3.0, "Subscription Started": 2.0,
}  # fmt: skip


def _ascii(s: str) -> str:
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().replace("'", "").lower()


@dataclass(frozen=True, slots=True, eq=False)
class _Actor:
    """A known user, or an anonymous device."""

    user_id: str | None
    amplitude_id: int
    device_id: str
    device: tuple[Any, ...]
    location: tuple[Any, ...]
    ip: str
    creation_ms: int
    creation_ts: str
    start_version: str | None
    adid: str | None
    idfa: str | None
    company: str | None
    paying: bool
    static: dict[str, Any]  # immutable per-actor columns, merged into every row
    web: bool
    # identified users only
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    plan_type: str = "free"
    signup_date: str | None = None
    base_purchases: int = 0
    purchase_rate: float = 0.0
    avg_order: float = 0.0
    interests: tuple[str, ...] = ()
    newsletter: bool | str = False  # "maybe" for a few users (BAD_NEWSLETTER)
    utm_source: str | None = None


def _phone(rng: random.Random, loc: tuple[Any, ...]) -> str | None:
    x = rng.random()
    cc, style = loc[7], loc[8]
    if style == "us":
        area, line = rng.randint(201, 989), rng.randint(0, 9999)
        national, e164 = f"({area}) 555-{line:04d}", f"+1{area}555{line:04d}"
    elif style == "fr":
        digits = f"{rng.choice('67')}{rng.randint(0, 99_999_999):08d}"
        national = "0" + " ".join([digits[0]] + [digits[i : i + 2] for i in range(1, 9, 2)])
        e164 = f"+33{digits}"
    else:
        digits = f"{rng.randint(100_000_000, 999_999_999)}"
        national, e164 = f"0{digits}", f"+{cc}{digits}"
    if x < 0.80:
        return e164
    if x < 0.95:
        return national  # no country code: the daemon has to normalise or drop it
    return None


def _static_columns(c: dict[str, Any], paying: bool) -> dict[str, Any]:
    device, loc = c["device"], c["location"]
    mobile = device[10]
    return {
        "platform": device[0],
        "os_name": device[1],
        "os_version": device[2],
        "device_family": device[3],
        "device_type": device[4],
        "device_brand": device[5],
        "device_manufacturer": device[6],
        "device_model": device[7],
        "device_carrier": device[8],
        "library": device[9],
        "version_name": _APP_VERSIONS[0] if mobile else None,
        "start_version": c["start_version"],
        "language": loc[6],
        "country": loc[0],
        "region": loc[1],
        "city": loc[2],
        "dma": loc[3],
        "location_lat": loc[4] if mobile else None,
        "location_lng": loc[5] if mobile else None,
        "ip_address": c["ip"],
        "paying": paying,
        "adid": c["adid"],
        "idfa": c["idfa"],
        "is_attribution_event": False,
        "amplitude_attribution_ids": None,
        "sample_rate": None,
        "$schema": 12,
        "$insert_key": None,
        "data_type": "event",
        "partner_id": None,
        "source_id": None,
    }


def _make_actor(spec: DatasetSpec, idx: int, anonymous: bool) -> _Actor:
    rng = random.Random(f"{spec.seed}:{'anon' if anonymous else 'user'}:{idx}")
    device = rng.choice(_DEVICES)
    loc = rng.choice(_LOCATIONS)
    mobile = device[10]
    start_ms = _ms(spec.start)
    creation_ms = start_ms - rng.randint(1 * _DAY_MS, 400 * _DAY_MS) - rng.randint(0, _DAY_MS)
    common: dict[str, Any] = {
        "amplitude_id": 100_000_000_000 + (idx * 7919 + (5_000_000 if anonymous else 0)) * 1013 + spec.seed,
        "device_id": _uuid(rng.randbytes(16)),
        "device": device,
        "location": loc,
        "ip": f"{rng.choice((81, 92, 172, 203, 198))}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "creation_ms": creation_ms,
        "creation_ts": format_ts(creation_ms),
        "start_version": rng.choice(_APP_VERSIONS[1:]) if mobile else None,
        "adid": _uuid(rng.randbytes(16)) if device[0] == "Android" and rng.random() < 0.6 else None,
        "idfa": _uuid(rng.randbytes(16)).upper() if device[0] == "iOS" and rng.random() < 0.3 else None,
        "company": rng.choice(_COMPANIES) if rng.random() < 0.25 else None,
    }
    common["web"] = device[0] == "Web"
    if anonymous:
        return _Actor(user_id=None, paying=False, static=_static_columns(common, False), **common)
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = f"{_ascii(first)}.{_ascii(last)}{idx}"
    email = f"{local}@{rng.choice(_DOMAINS)}"
    if rng.random() < 0.04:  # some apps send mixed-case / padded emails
        email = email[:1].upper() + email[1:].replace(".com", ".COM")
    if _has(BAD_EMAIL, idx):  # no random draw here: the other users' values stay as they were
        domain = email.split("@", 1)[1]
        email = f"{_ascii(first)}..{_ascii(last)}{idx}@{domain}" if idx // 200 % 2 == 0 else f"{local}@@{domain}"
    plan = rng.choice(_PLANS)
    paying = plan != "free" or rng.random() < 0.3
    signup_date = format_ts(creation_ms)[:10]
    if _has(BAD_SIGNUP_DATE, idx):
        signup_date = _BAD_SIGNUP_DATES[idx // 100 % 2]
    actor = _Actor(
        user_id=f"user-{idx:05d}",
        paying=paying,
        static=_static_columns(common, paying),
        email=email,
        first_name=first,
        last_name=last,
        phone=_phone(rng, loc),
        plan_type=plan,
        signup_date=signup_date,
        base_purchases=rng.randint(0, 40) if paying else 0,
        purchase_rate=rng.random() * 0.2,
        avg_order=round(rng.uniform(15, 120), 2),
        interests=tuple(rng.sample(_INTERESTS, rng.randint(0, 3))),
        newsletter=rng.random() < 0.6,
        utm_source=rng.choice(_UTM_SOURCES),
        **common,
    )
    if _has(BAD_NEWSLETTER, idx):
        object.__setattr__(actor, "newsletter", "maybe")
    return actor


@lru_cache(maxsize=16)
def _population(spec: DatasetSpec) -> tuple[tuple[_Actor, ...], tuple[_Actor, ...]]:
    users = tuple(_make_actor(spec, i, False) for i in range(spec.users))
    anon = tuple(_make_actor(spec, i, True) for i in range(max(10, spec.users // 2)))
    return users, anon


def bad_value_users(spec: DatasetSpec) -> dict[str, dict[str, Any]]:
    """The identified users of `spec` carrying a bad value, per kind: user id -> the value.

    Kinds: `signup_date` (unparseable), `email` (refused by Brevo), `newsletter` ("maybe"), `phone` (no country
    code). A user may be listed under several kinds. Whether a user has rows at all depends on the spec.
    """
    users, _anon = _population(spec)
    out: dict[str, dict[str, Any]] = {"signup_date": {}, "email": {}, "newsletter": {}, "phone": {}}
    for idx, actor in enumerate(users):
        assert actor.user_id is not None
        if _has(BAD_SIGNUP_DATE, idx):
            out["signup_date"][actor.user_id] = actor.signup_date
        if _has(BAD_EMAIL, idx):
            out["email"][actor.user_id] = actor.email
        if _has(BAD_NEWSLETTER, idx):
            out["newsletter"][actor.user_id] = actor.newsletter
        if actor.phone is not None and not actor.phone.startswith("+"):
            out["phone"][actor.user_id] = actor.phone
    return out


@lru_cache(maxsize=16)
def _event_table(event_types: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    weights = [_EVENT_WEIGHTS.get(t, 5.0) for t in event_types]
    total = sum(weights)
    return event_types, tuple(c / total for c in accumulate(weights))


# ---------------------------------------------------------------------------------------------------------
# per-event properties


def _event_properties(
    etype: str, r: Any, actor: _Actor, hkey: str, i: int
) -> tuple[dict[str, Any], str | None]:
    """Returns (event_properties, amplitude_event_type)."""
    if etype == "Page View":
        title, path = _PAGES[int(r() * len(_PAGES))]
        src = _UTM_SOURCES[int(r() * len(_UTM_SOURCES))]
        return {
            "page title": title,
            "page path": path,
            "referrer": _REFERRERS[int(r() * len(_REFERRERS))],
            "utm.source": src,
            "utm.campaign": _CAMPAIGNS[int(r() * len(_CAMPAIGNS))],
            "scroll_depth": round(r(), 2),
            "load_time_ms": 150 + int(r() * 2500),
        }, None
    if etype == "Feature Click":
        feature, button, screen = _FEATURES[int(r() * len(_FEATURES))]
        return {
            "feature": feature,
            "button.id": button,
            "screen name": screen,
            "position": int(r() * 12),
            "experiment.variant": "control" if r() < 0.5 else "treatment",
        }, None
    if etype == "Add to Cart":
        sku, name, cat, price = _PRODUCTS[int(r() * len(_PRODUCTS))]
        return {
            "product_id": sku,
            "product name": name,
            "category": cat,
            "price": price,
            "quantity": 1 + int(r() * 3),
            "currency": _CURRENCIES[int(r() * len(_CURRENCIES))],
            "cart.size": 1 + int(r() * 6),
        }, None
    if etype == "Purchase":
        sku, name, cat, price = _PRODUCTS[int(r() * len(_PRODUCTS))]
        qty = 1 + int(r() * 3)
        props: dict[str, Any] = {
            "order_id": f"ord-{hkey}-{i:06d}",
            "item_count": qty,
            "$price": price,
            "$quantity": qty,
            "items": [{"sku": sku, "name": name, "qty": qty}],
            "payment method": ("card", "paypal", "apple_pay")[int(r() * 3)],
            "coupon": "WINTER10" if r() < 0.15 else None,
        }
        if r() >= 0.1:  # most carry the full revenue set; some only price + quantity
            props.update(
                {
                    "$revenue": round(price * qty, 2),
                    "$productId": sku,
                    "$revenueType": "purchase",
                    "$currency": _CURRENCIES[int(r() * len(_CURRENCIES))],
                }
            )
        return props, "revenue"
    if etype == "Revenue":
        sku, _name, _cat, price = _PRODUCTS[int(r() * len(_PRODUCTS))]
        qty = 1 + int(r() * 2)
        if r() < 0.08:  # refund
            return {
                "$price": -price,
                "$quantity": qty,
                "$revenue": round(-price * qty, 2),
                "$productId": sku,
                "$revenueType": "refund",
                "reason": "customer request",
            }, "revenue"
        props = {"$price": price, "$quantity": qty}
        if r() >= 0.15:
            props.update({"$revenue": round(price * qty, 2), "$productId": sku, "$revenueType": "purchase"})
        return props, "revenue"
    if etype == "Subscription Started":
        plan = ("starter", "pro", "pro", "enterprise")[int(r() * 4)]
        yearly = r() < 0.3
        price = round(_PLAN_PRICES[plan] * (10 if yearly else 1), 2)
        return {
            "plan": plan,
            "billing period": "yearly" if yearly else "monthly",
            "trial": r() < 0.2,
            "$price": price,
            "$quantity": 1,
            "$revenue": price,
            "$productId": f"plan-{plan}-{'yearly' if yearly else 'monthly'}",
            "$revenueType": "subscription",
            "$currency": "USD",
        }, "revenue"
    if etype == "Sign Up":
        return {
            "method": _SIGNUP_METHODS[int(r() * len(_SIGNUP_METHODS))],
            "utm.source": actor.utm_source or _UTM_SOURCES[int(r() * len(_UTM_SOURCES))],
            "referrer": _REFERRERS[int(r() * len(_REFERRERS))],
            "invited": r() < 0.2,
        }, None
    if etype == "session_start":
        return {}, "session_start"
    if etype == "$identify":
        return {}, "identify"
    return {"source": "custom", "value": int(r() * 100), "tags": ["sandbox", etype.lower()]}, None


def _user_properties(actor: _Actor, event_ms: int, hours_in: float) -> dict[str, Any]:
    d = actor.device
    if actor.user_id is None:
        up: dict[str, Any] = {"device_type": d[11], "initial_utm_source": "direct", "interests": []}
        return up
    purchases = actor.base_purchases + int(hours_in * actor.purchase_rate)
    up = {
        "email": actor.email,
        "first_name": actor.first_name,
        "last_name": actor.last_name,
        "phone": actor.phone,
        "plan_type": actor.plan_type,
        "signup_date": actor.signup_date,
        "total_purchases": purchases,
        "lifetime_revenue": round(purchases * actor.avg_order, 2),
        "last_active": _iso_z(event_ms),
        "device_type": d[11],
        "interests": list(actor.interests),
        "newsletter": actor.newsletter,
    }
    if actor.phone is None:
        del up["phone"]
    return up


# ---------------------------------------------------------------------------------------------------------


def rows_for_hour(spec: DatasetSpec, hour: datetime) -> Iterator[dict[str, Any]]:
    """Lazily yield the export rows whose ``server_upload_time`` lies in ``hour`` (sorted by it).

    Deterministic: the same spec and hour always give the same rows. Hours outside the dataset yield nothing.
    Each yielded dict is fresh (callers may mutate it).
    """
    hour = _as_hour(hour)
    if not spec.has_hour(hour):
        return
    users, anon = _population(spec)
    etypes, ecum = _event_table(spec.event_types)
    n = spec.rows_per_hour
    hkey = hour_key(hour)
    rng = random.Random(f"{spec.seed}:{hkey}")
    r = rng.random
    rbytes = rng.randbytes
    hour_ms = _ms(hour)
    hours_in = (hour - spec.start) / timedelta(hours=1)
    app = spec.app_id
    n_users, n_anon = len(users), len(anon)
    anon_frac, late_frac = spec.anonymous_fraction, spec.late_fraction
    bisect_right = bisect.bisect_right
    fmt = format_ts
    step = _HOUR_MS / n if n else 0.0
    last_type = len(etypes) - 1
    for i in range(n):
        upload_ms = hour_ms + int((i + r()) * step)
        if r() < anon_frac:
            actor = anon[int(r() * n_anon)]
        else:
            actor = users[int(n_users * r() ** 2)]  # skewed: low indexes are power users
        etype = etypes[min(bisect_right(ecum, r()), last_type)]

        received_ms = upload_ms - int(r() * 400)
        latency = 20 + int(r() * 800)
        x = r()
        skew = (1 if x < 0.015 else -1) * (120_000 + int(r() * 1_500_000)) if x < 0.03 else 0
        client_upload_ms = received_ms - latency + skew
        if r() < late_frac:
            client_event_ms = client_upload_ms - _HOUR_MS - int(r() * 47 * _HOUR_MS)
        else:
            client_event_ms = client_upload_ms - int(r() * 30_000)
        delta = received_ms - client_upload_ms
        event_ms = client_event_ms + delta if (delta >= 60_000 or delta <= -60_000) else client_event_ms
        processed_ms = upload_ms + 500 + int(r() * 5500)

        event_props, amp_type = _event_properties(etype, r, actor, hkey, i)
        if etype == "$identify":
            session_id = -1
        else:
            session_id = event_ms - event_ms % 1_800_000 + actor.amplitude_id % 60_000
        event_id = 1 + int(r() * 5000)
        insert_id = f"{actor.device_id[:8]}-{event_ms}-{event_id}" if r() >= 0.08 else None
        company = actor.company

        yield {
            "uuid": _uuid(rbytes(16)),
            "app": app,
            "amplitude_id": actor.amplitude_id,
            "user_id": actor.user_id,
            "device_id": actor.device_id,
            "event_type": etype,
            "event_id": event_id,
            "session_id": session_id,
            "$insert_id": insert_id,
            "event_time": fmt(event_ms),
            "client_event_time": fmt(client_event_ms),
            "client_upload_time": fmt(client_upload_ms),
            "server_received_time": fmt(received_ms),
            "server_upload_time": fmt(upload_ms),
            "processed_time": fmt(processed_ms),
            "user_creation_time": actor.creation_ts,
            "event_properties": event_props,
            "user_properties": _user_properties(actor, event_ms, hours_in),
            "groups": {"company": [company]} if company else {},
            "group_properties": {},
            "data": {"first_event": etype == "Sign Up"},
            **actor.static,
            "amplitude_event_type": amp_type,
            "plan": dict(_SCHEMA_PLAN) if actor.web else None,
            "global_user_properties": {},
        }
