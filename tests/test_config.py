"""Tests for the configuration layer: the shipped config.yaml, resolution rules, and every error path."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from amplitude_brevo.config import (
    BUDGET_NAMES,
    PLAN_BUDGETS,
    Config,
    ConfigError,
    RateLimit,
    load_config,
    parse_config,
    parse_duration,
    parse_hour,
    render_config,
    secret_values,
    unbuilt_settings,
)
from amplitude_brevo.secrets import Secret

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config.yaml"
CONFIGS = Path(__file__).parent / "configs"

AMP_KEY, AMP_SECRET, BREVO_KEY, HOOK = (
    "sekrit-AMP-123",
    "sekrit-AMPSEC-456",
    "sekrit-BREVO-789",
    "sekrit-HOOK-000",
)
FILE_SECRET = "sekrit-FILE-321"
ENV = {"AMPLITUDE_API_KEY": AMP_KEY, "AMPLITUDE_SECRET_KEY": AMP_SECRET, "BREVO_API_KEY": BREVO_KEY}
ALL_SECRETS = (AMP_KEY, AMP_SECRET, BREVO_KEY, HOOK, FILE_SECRET)
H, D = 3600.0, 86400.0


def shipped_data() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text())


def minimal(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "connectors": {
            "amplitude": {"api_key": AMP_KEY, "secret_key": AMP_SECRET},
            "brevo": {"api_key": BREVO_KEY},
        }
    }
    data.update(sections)
    return data


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in ALL_SECRETS:
            assert secret not in text, f"secret {secret!r} leaked into: {text}"


# --------------------------------------------------------------------------------------------------------
# The shipped config and the seed's example


def test_shipped_config_loads_with_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WEBHOOK_TOKEN", raising=False)
    cfg = load_config(SHIPPED)  # env defaults to os.environ

    amp, brevo = cfg.connectors.amplitude, cfg.connectors.brevo
    assert amp.enabled and amp.api_key.reveal() == AMP_KEY and amp.secret_key.reveal() == AMP_SECRET
    assert (amp.data_center, amp.ingest_url, amp.api_url) == (
        "US",
        "https://api2.amplitude.com",
        "https://amplitude.com",
    )
    assert brevo.api_key.reveal() == BREVO_KEY
    assert (brevo.api_url, brevo.plan) == ("https://api.brevo.com/v3", "general")
    assert cfg.sync.events and cfg.sync.user_properties and cfg.sync.cohorts and cfg.sync.revenue
    assert (cfg.lists.active_users, cfg.lists.power_users, cfg.lists.churning_users) == (10, 11, 12)
    assert cfg.event_mapping == {"Purchase": "order_completed", "Sign Up": "customer_created"}
    assert cfg.property_mapping["first_name"] == "FIRSTNAME"
    assert (cfg.identity.ext_id, cfg.identity.email_property, cfg.identity.anonymous) == (
        "user_id",
        "email",
        "skip",
    )
    assert cfg.export.start == datetime(2026, 11, 1, 0, tzinfo=UTC)
    assert (cfg.export.lag, cfg.export.poll_interval, cfg.export.max_window) == (3 * H, 300.0, 24 * H)
    assert cfg.export.readers == 2
    [cohort] = cfg.cohorts
    assert (cohort.id, cohort.list_id, cohort.mode, cohort.every) == ("def456", 13, "mirror", H)
    assert cfg.cohort_guard.max_removal_fraction == 0.5
    assert cfg.segments.every == H
    assert cfg.segments.active_users.seen_within == 7 * D and cfg.segments.active_users.kind == "seen_within"
    assert cfg.segments.power_users.cohort == "abc123" and cfg.segments.power_users.kind == "cohort"
    churn = cfg.segments.churning_users
    assert (churn.active_within, churn.not_seen_for, churn.kind) == (60 * D, 14 * D, "active_not_seen")
    assert cfg.user_activity.enabled and cfg.user_activity.refresh_after == 24 * H
    assert cfg.revenue.orders and cfg.revenue.ltv_attribute is None and cfg.revenue.count_attribute is None
    assert cfg.ingest.enabled and cfg.ingest.forward_to_amplitude
    assert (cfg.ingest.host, cfg.ingest.port) == ("127.0.0.1", 8787)
    assert cfg.ingest.api_keys == [Secret(AMP_KEY)]
    assert cfg.ingest.webhook_token is None  # ${WEBHOOK_TOKEN:-} with the variable unset
    assert (cfg.admin.host, cfg.admin.port) == ("127.0.0.1", 9464)
    assert (cfg.state.path, cfg.state.dedupe_window) == ("/var/lib/amplitude-brevo/state.db", 7 * D)
    assert cfg.rate_limits == PLAN_BUDGETS["general"]
    assert list(cfg.rate_limits) == list(BUDGET_NAMES)
    assert (cfg.batching.max_items, cfg.batching.max_wait, cfg.batching.queue_capacity) == (1000, 2.0, 50000)
    assert cfg.shutdown_timeout == 20.0
    assert (cfg.logging.level, cfg.logging.format) == ("info", "auto")


def test_shipped_config_with_webhook_token() -> None:
    cfg = load_config(SHIPPED, env={**ENV, "WEBHOOK_TOKEN": HOOK})
    assert cfg.ingest.webhook_token == Secret(HOOK)
    assert HOOK in secret_values(cfg)


def test_shipped_config_covers_every_key() -> None:
    """config.yaml documents every key of every section (nothing left to defaults silently)."""

    def keys(model: type, prefix: str = "") -> set[str]:
        out = set()
        for name, info in model.model_fields.items():
            ann = info.annotation
            inner = getattr(ann, "model_fields", None)
            out.add(prefix + name)
            if inner is not None and name not in ("rate_limits",):
                out |= keys(ann, prefix + name + ".")
        return out

    def present(data: Any, prefix: str = "") -> set[str]:
        out = set()
        if isinstance(data, dict):
            for k, v in data.items():
                out.add(prefix + str(k))
                out |= present(v, prefix + str(k) + ".")
        return out

    expected = {k for k in keys(Config) if not k.startswith("segments.") or k.count(".") == 1}
    assert expected - present(shipped_data()) == set()


SEED = """
connectors:
  amplitude:
    enabled: true
    api_key: "your-amplitude-api-key"
    secret_key: "your-amplitude-secret-key"
    data_center: "US" # or "EU"

# Data sync options
sync:
  events: true
  user_properties: true
  cohorts: true
  revenue: true

# Brevo list assignment
lists:
  active_users: 10
  power_users: 11
  churning_users: 12

event_mapping:
  # Amplitude event -> Brevo event
  "Purchase": "order_completed"
  "Sign Up": "customer_created"
  "Add to Cart": "cart_updated"
  "Page View": "page_viewed"
  "Feature Click": "feature_used"
  # Revenue events
  "Revenue": "revenue_event"
  "Subscription Started": "subscription_created"

property_mapping:
  # Amplitude property -> Brevo attribute
  email: email
  first_name: FIRSTNAME
  last_name: LASTNAME
  phone: SMS
  plan_type: PLAN
  signup_date: SIGNUP_DATE
  total_purchases: ORDER_COUNT
  lifetime_revenue: LTV
  last_active: LAST_ACTIVE
  device_type: DEVICE
"""


def test_seed_appendix_a_with_brevo_key_is_valid() -> None:
    data = yaml.safe_load(SEED)
    data["connectors"]["brevo"] = {"api_key": BREVO_KEY}
    cfg = parse_config(data, env={})
    assert len(cfg.event_mapping) == 7 and cfg.event_mapping["Add to Cart"] == "cart_updated"
    assert cfg.property_mapping["phone"] == "SMS"
    # The lists are filled by the default segment rules.
    seg = cfg.segments
    assert seg.active_users.seen_within == 7 * D
    assert (seg.power_users.min_active_days, seg.power_users.within) == (10, 30 * D)
    assert (seg.churning_users.active_within, seg.churning_users.not_seen_for) == (60 * D, 14 * D)
    assert cfg.cohorts == [] and cfg.export.start is None
    # Apps send the project key to the ingest endpoint, so it is accepted by default.
    assert cfg.ingest.api_keys == [Secret("your-amplitude-api-key")]


# SPEC §3's example config, as printed there: every key of it must be accepted.
SPEC_EXAMPLE = """
connectors:
  amplitude:
    enabled: true
    api_key: "${AMPLITUDE_API_KEY}"
    secret_key: "${AMPLITUDE_SECRET_KEY}"
    data_center: "US"
    ingest_url: null
    api_url: null
  brevo:
    api_key: "${BREVO_API_KEY}"
    api_url: null
    plan: general
    create_attributes: false
sync: {events: true, user_properties: true, cohorts: true, revenue: true}
lists: {active_users: 10, power_users: 11, churning_users: 12}
event_mapping:
  "Purchase": "order_completed"
  "Sign Up": "customer_created"
property_mapping:
  email: email
  first_name: FIRSTNAME
  lifetime_revenue: LTV
identity:
  ext_id: user_id
  email_property: email
  anonymous: skip
export:
  start: "2026-11-01T00"
  lag: 3h
  poll_interval: 5m
  max_window: 24h
cohorts:
  - {id: "def456", list_id: 13, mode: mirror, every: 1h}
cohort_guard: {max_removal_fraction: 0.5}
segments:
  every: 1h
  active_users:   {seen_within: 7d}
  power_users:    {cohort: "abc123"}
  churning_users: {active_within: 60d, not_seen_for: 14d}
user_activity: {enabled: true, refresh_after: 24h}
revenue:
  orders: true
  ltv_attribute: null
  count_attribute: null
ingest:
  enabled: true
  listen: "127.0.0.1:8787"
  forward_to_amplitude: true
  api_keys: ["${AMPLITUDE_API_KEY}"]
  webhook_token: "${WEBHOOK_TOKEN:-}"
  allow_from: []
  trusted_proxies: []
admin: {listen: "127.0.0.1:9464"}
state: {path: "/var/lib/amplitude-brevo/state.db", dedupe_window: 7d}
rate_limits:
  brevo_events: {requests: 10, per: 1s}
  brevo_contacts: {requests: 10, per: 1s}
batching: {max_items: 1000, max_wait: 2s, queue_capacity: 50000}
shutdown_timeout: 20s
logging: {level: info, format: auto}
"""


def test_spec_example_config_is_valid() -> None:
    cfg = parse_config(yaml.safe_load(SPEC_EXAMPLE), env=ENV)
    assert cfg.connectors.brevo.create_attributes is False
    assert (cfg.ingest.allow_from, cfg.ingest.trusted_proxies) == ([], [])
    assert cfg.ingest.api_keys == [Secret(AMP_KEY)]


def test_ingest_networks_are_normalized() -> None:
    cfg = parse_config(
        minimal(ingest={"allow_from": ["10.0.0.1/8", " ::1/128", "192.168.1.7"], "trusted_proxies": ["fd00::/8"]}),
        env={},
    )
    assert cfg.ingest.allow_from == ["10.0.0.0/8", "::1/128", "192.168.1.7/32"]
    assert cfg.ingest.trusted_proxies == ["fd00::/8"]


# --------------------------------------------------------------------------------------------------------
# Resolution rules


def test_env_expansion_with_defaults() -> None:
    data = minimal(
        state={"path": "${STATE_DIR:-/tmp/ab}/state.db", "dedupe_window": "${DEDUPE:-2d}"},
        identity={"ext_id": "${EXT:-}user_id", "email_property": "$${literal}"},
        ingest={"listen": "${HOST:-127.0.0.1}:${PORT:-8787}"},
    )
    cfg = parse_config(data, env={"PORT": "9000", "HOST": ""})
    assert cfg.state.path == "/tmp/ab/state.db"
    assert cfg.state.dedupe_window == 2 * D
    assert cfg.identity.ext_id == "user_id"
    assert cfg.identity.email_property == "${literal}"
    assert (cfg.ingest.host, cfg.ingest.port) == ("127.0.0.1", 9000)  # `:-` also covers a set-but-empty var
    cfg = parse_config(data, env={"STATE_DIR": "/srv", "DEDUPE": "3600"})
    assert (cfg.state.path, cfg.state.dedupe_window) == ("/srv/state.db", 3600.0)


def test_env_expansion_inside_lists_and_numbers() -> None:
    data = minimal(
        lists={"active_users": "${ACTIVE_LIST}"},
        ingest={"api_keys": ["${NEW_KEY:-}", "${OLD_KEY}"], "webhook_token": "${WEBHOOK_TOKEN:-}"},
    )
    cfg = parse_config(data, env={"ACTIVE_LIST": "42", "OLD_KEY": AMP_KEY})
    assert cfg.lists.active_users == 42
    assert cfg.ingest.api_keys == [Secret(AMP_KEY)]  # the empty optional key is dropped
    assert cfg.ingest.webhook_token is None


def test_secret_files_from_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "brevo.key").write_text(FILE_SECRET + "\n")
    (creds / "ingest.keys").write_text(f"{AMP_KEY}\n\n{AMP_SECRET}\n")
    (tmp_path / "hook.token").write_text(HOOK)  # not in the credentials dir: found next to the config
    data = minimal(ingest={"api_keys_file": "ingest.keys", "webhook_token_file": "hook.token"})
    del data["connectors"]["brevo"]["api_key"]
    data["connectors"]["brevo"]["api_key_file"] = "brevo.key"
    cfg = parse_config(data, env={"CREDENTIALS_DIRECTORY": str(creds)}, base_dir=tmp_path)
    assert cfg.connectors.brevo.api_key.reveal() == FILE_SECRET  # trailing newline stripped
    assert cfg.ingest.api_keys == [Secret(AMP_KEY), Secret(AMP_SECRET)]
    assert cfg.ingest.webhook_token == Secret(HOOK)
    assert_no_secrets(repr(cfg), render_config(cfg))


def test_secret_file_relative_to_config_file(tmp_path: Path) -> None:
    (tmp_path / "amp.secret").write_text(AMP_SECRET + "\r\n")
    conf = tmp_path / "config.yaml"
    conf.write_text(
        "connectors:\n"
        "  amplitude: {api_key: '${AMPLITUDE_API_KEY}', secret_key_file: amp.secret}\n"
        "  brevo: {api_key_file: '" + str(tmp_path / "brevo.key") + "'}\n"
    )
    (tmp_path / "brevo.key").write_text(BREVO_KEY)
    cfg = load_config(conf, env={"AMPLITUDE_API_KEY": AMP_KEY})
    assert cfg.connectors.amplitude.secret_key.reveal() == AMP_SECRET
    assert cfg.connectors.brevo.api_key.reveal() == BREVO_KEY


def test_eu_data_center_defaults_and_url_overrides() -> None:
    data = minimal()
    data["connectors"]["amplitude"]["data_center"] = "eu"
    data["connectors"]["brevo"]["api_url"] = "http://127.0.0.1:9100/v3/"
    cfg = parse_config(data, env={})
    amp = cfg.connectors.amplitude
    assert (amp.data_center, amp.ingest_url, amp.api_url) == (
        "EU",
        "https://api.eu.amplitude.com",
        "https://analytics.eu.amplitude.com",
    )
    # Plain http is fine on loopback; the trailing slash is stripped.
    assert cfg.connectors.brevo.api_url == "http://127.0.0.1:9100/v3"

    data["connectors"]["amplitude"].update(ingest_url="http://localhost:8000", api_url="http://[::1]:8001/")
    amp = parse_config(data, env={}).connectors.amplitude
    assert (amp.ingest_url, amp.api_url) == ("http://localhost:8000", "http://[::1]:8001")


def test_rate_limit_overrides_merge_with_plan() -> None:
    data = minimal(
        rate_limits={"brevo_events": {"requests": 50, "per": "2s"}, "brevo_other": {"requests": 300}}
    )
    data["connectors"]["brevo"]["plan"] = "Advanced"
    cfg = parse_config(data, env={})
    assert cfg.connectors.brevo.plan == "advanced"
    assert cfg.rate_limits == {
        "brevo_events": RateLimit(requests=50, per=2.0),
        "brevo_events_batch": RateLimit(requests=200, per=3600.0),
        "brevo_contacts": RateLimit(requests=20, per=1.0),
        "brevo_orders": RateLimit(requests=10, per=1.0),
        "brevo_orders_batch": RateLimit(requests=200, per=3600.0),
        "brevo_other": RateLimit(requests=300, per=3600.0),  # partial override keeps the plan's `per`
    }


@pytest.mark.parametrize("plan", ["general", "advanced", "extended"])
def test_plan_defaults(plan: str) -> None:
    data = minimal()
    data["connectors"]["brevo"]["plan"] = plan
    cfg = parse_config(data, env={})
    assert cfg.rate_limits == PLAN_BUDGETS[plan]
    assert set(PLAN_BUDGETS[plan]) == set(BUDGET_NAMES)


def test_plan_budget_figures() -> None:
    figures = {p: {n: (b.requests, b.per) for n, b in budgets.items()} for p, budgets in PLAN_BUDGETS.items()}
    assert figures == {
        "general": {
            "brevo_events": (10, 1),
            "brevo_events_batch": (100, 3600),
            "brevo_contacts": (10, 1),
            "brevo_orders": (5, 1),
            "brevo_orders_batch": (100, 3600),
            "brevo_other": (100, 3600),
        },
        "advanced": {
            "brevo_events": (20, 1),
            "brevo_events_batch": (200, 3600),
            "brevo_contacts": (20, 1),
            "brevo_orders": (10, 1),
            "brevo_orders_batch": (200, 3600),
            "brevo_other": (200, 3600),
        },
        "extended": {
            "brevo_events": (60, 1),
            "brevo_events_batch": (600, 3600),
            "brevo_contacts": (60, 1),
            "brevo_orders": (15, 1),
            "brevo_orders_batch": (600, 3600),
            "brevo_other": (600, 3600),
        },
    }


def test_brevo_contacts_keys() -> None:
    brevo = parse_config(minimal(), env={}).connectors.brevo
    assert (brevo.contacts_batch_size, brevo.contacts_import_min, brevo.import_list_id) == (100, 50, None)
    data = minimal()
    data["connectors"]["brevo"].update(contacts_batch_size=1000, contacts_import_min=1, import_list_id="7")
    brevo = parse_config(data, env={}).connectors.brevo
    assert (brevo.contacts_batch_size, brevo.contacts_import_min, brevo.import_list_id) == (1000, 1, 7)


def test_revenue_attributes_distinct_from_property_mapping_are_fine() -> None:
    cfg = parse_config(
        minimal(property_mapping={"lifetime_revenue": "LTV"}, revenue={"ltv_attribute": "AMP_LTV",
                                                                       "count_attribute": "AMP_ORDERS"}),
        env={},
    )
    assert (cfg.revenue.ltv_attribute, cfg.revenue.count_attribute) == ("AMP_LTV", "AMP_ORDERS")


def test_amplitude_disabled_needs_no_keys_and_nulls_mean_defaults() -> None:
    data = {
        "connectors": {"amplitude": {"enabled": False, "api_url": None}, "brevo": {"api_key": BREVO_KEY}},
        "sync": None,
        "segments": {"active_users": None},
        "logging": {"level": "DEBUG", "format": "JSON"},
        "cohorts": [{"id": 123456, "list_id": "7", "mode": "Append"}],
    }
    cfg = parse_config(data, env={})
    assert cfg.connectors.amplitude.api_key is None
    assert cfg.connectors.amplitude.api_url == "https://amplitude.com"
    assert cfg.sync.events and cfg.segments.active_users.seen_within == 7 * D
    assert (cfg.logging.level, cfg.logging.format) == ("debug", "json")
    assert cfg.cohorts[0].id == "123456" and cfg.cohorts[0].list_id == 7 and cfg.cohorts[0].mode == "append"
    assert cfg.ingest.api_keys == []


def test_export_start_forms() -> None:
    for value in ("20261101T05", "2026-11-01T05", "2026-11-01T05:30:00Z", "2026-11-01T06:30:00+01:00"):
        cfg = parse_config(minimal(export={"start": value}), env={})
        assert cfg.export.start == datetime(2026, 11, 1, 5, tzinfo=UTC), value
    # Unquoted in YAML, a timestamp arrives as a datetime object.
    data = yaml.safe_load("export: {start: 2026-11-01 05:00:00}")
    cfg = parse_config(minimal(**data), env={})
    assert cfg.export.start == datetime(2026, 11, 1, 5, tzinfo=UTC)


def test_listen_address_helpers() -> None:
    cfg = parse_config(minimal(ingest={"listen": "[::1]:0"}, admin={"listen": "localhost:9999"}), env={})
    assert (cfg.ingest.host, cfg.ingest.port) == ("::1", 0)
    assert (cfg.admin.host, cfg.admin.port) == ("localhost", 9999)


def test_config_is_frozen() -> None:
    cfg = parse_config(minimal(), env={})
    with pytest.raises(ValidationError):
        cfg.batching.max_items = 5  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------------
# Bad configs: every one names its key path and leaks no secret


DELETE = object()


@dataclasses.dataclass
class Bad:
    id: str
    edits: list[tuple[tuple[Any, ...], Any]]
    path: str
    fragment: str = ""
    env: dict[str, str] | None = None


BAD_CONFIGS = [
    Bad("unknown top-level key", [(("loging",), {"level": "info"})], "loging", "did you mean 'logging'?"),
    Bad(
        "unknown nested key",
        [(("connectors", "brevo", "plna"), "general")],
        "connectors.brevo.plna",
        "did you mean 'plan'?",
    ),
    Bad(
        "unknown key in list item",
        [(("cohorts", 0, "lst_id"), 5)],
        "cohorts[0].lst_id",
        "did you mean 'list_id'?",
    ),
    Bad(
        "bad event name",
        [(("event_mapping", "Add to Cart"), "cart updated")],
        'event_mapping."Add to Cart"',
        "'cart updated' is not a valid Brevo event name",
    ),
    Bad(
        "http non-loopback url",
        [(("connectors", "brevo", "api_url"), "http://api.brevo.com/v3")],
        "connectors.brevo.api_url",
        "http:// is refused",
    ),
    Bad(
        "non-http scheme",
        [(("connectors", "amplitude", "api_url"), "ftp://amplitude.com")],
        "connectors.amplitude.api_url",
        "https://",
    ),
    Bad("bad duration", [(("export", "lag"), "3 hours")], "export.lag", "90s, 5m, 3h, 7d"),
    Bad("negative duration", [(("shutdown_timeout",), -5)], "shutdown_timeout", "not a duration"),
    Bad(
        "max_window not whole hours",
        [(("export", "max_window"), "90m")],
        "export.max_window",
        "whole number of hours",
    ),
    Bad("too many readers", [(("export", "readers"), 64)], "export.readers", "less than or equal to 16"),
    Bad("negative readers", [(("export", "readers"), -1)], "export.readers", "greater than or equal to 0"),
    Bad(
        "bad data_center",
        [(("connectors", "amplitude", "data_center"), "AP")],
        "connectors.amplitude.data_center",
        "'US' or 'EU'",
    ),
    Bad(
        "bad plan",
        [(("connectors", "brevo", "plan"), "premium")],
        "connectors.brevo.plan",
        "'general', 'advanced' or 'extended'",
    ),
    Bad(
        "missing brevo api_key",
        [(("connectors", "brevo", "api_key"), DELETE)],
        "connectors.brevo.api_key",
        "is required",
    ),
    Bad("missing connectors", [(("connectors",), DELETE)], "connectors.brevo.api_key", "is required"),
    Bad(
        "empty brevo api_key",
        [(("connectors", "brevo", "api_key"), "${BREVO_EMPTY:-}")],
        "connectors.brevo.api_key",
        "must not be empty",
    ),
    Bad(
        "missing amplitude secret_key",
        [(("connectors", "amplitude", "secret_key"), DELETE)],
        "connectors.amplitude.secret_key",
        "required when connectors.amplitude.enabled",
    ),
    Bad(
        "unset env var",
        [(("connectors", "brevo", "api_key"), "${BREVO_KEY_TYPO}")],
        "connectors.brevo.api_key",
        "BREVO_KEY_TYPO is not set",
    ),
    Bad("malformed env reference", [(("state", "path"), "${1BAD:-x}/db")], "state.path", "malformed"),
    Bad(
        "missing secret file",
        [(("connectors", "brevo", "api_key"), DELETE), (("connectors", "brevo", "api_key_file"), "nope.key")],
        "connectors.brevo.api_key_file",
        "cannot read",
    ),
    Bad(
        "both key and key file",
        [(("connectors", "brevo", "api_key_file"), "brevo.key")],
        "connectors.brevo.api_key_file",
        "not both",
    ),
    Bad(
        "_file on a non-secret key",
        [(("identity", "ext_id_file"), "ext.txt")],
        "identity.ext_id_file",
        "only secrets",
    ),
    Bad("bad list id type", [(("lists", "active_users"), "ten")], "lists.active_users", "valid integer"),
    Bad("bool list id", [(("lists", "active_users"), True)], "lists.active_users", "not true/false"),
    Bad("non-positive list id", [(("lists", "churning_users"), 0)], "lists.churning_users", "greater than 0"),
    Bad(
        "mirror cohort on a segment list",
        [(("cohorts", 0, "list_id"), 11)],
        "cohorts[0].list_id",
        "list 11 is already mirrored by lists.power_users",
    ),
    Bad(
        "two segments on one list",
        [(("lists", "churning_users"), 10)],
        "lists.churning_users",
        "list 10 is already mirrored by lists.active_users",
    ),
    Bad(
        "two mirror cohorts on one list",
        [(("cohorts", 1), {"id": "xyz789", "list_id": 13})],
        "cohorts[1].list_id",
        "list 13 is already mirrored by cohorts[0].list_id",
    ),
    Bad(
        "bad cohort mode",
        [(("cohorts", 0, "mode"), "sync")],
        "cohorts[0].mode",
        "'mirror', 'append' or 'remove'",
    ),
    Bad("cohort missing list_id", [(("cohorts", 0, "list_id"), DELETE)], "cohorts[0].list_id", "is required"),
    Bad("cohorts not a list", [(("cohorts",), {"id": "x"})], "cohorts", "must be a list"),
    Bad(
        "mixed segment rule",
        [(("segments", "active_users"), {"seen_within": "7d", "cohort": "abc"})],
        "segments.active_users",
        "mixes",
    ),
    Bad(
        "incomplete segment rule",
        [(("segments", "churning_users"), {"active_within": "60d"})],
        "segments.churning_users",
        "also needs not_seen_for",
    ),
    Bad("empty segment rule", [(("segments", "power_users"), {})], "segments.power_users", "empty rule"),
    Bad(
        "impossible churn rule",
        [(("segments", "churning_users", "not_seen_for"), "90d")],
        "segments.churning_users.not_seen_for",
        "shorter than",
    ),
    Bad(
        "max_items over 1000",
        [(("batching", "max_items"), 5000)],
        "batching.max_items",
        "less than or equal to 1000",
    ),
    Bad(
        "queue smaller than a batch",
        [(("batching", "queue_capacity"), 10)],
        "batching.queue_capacity",
        "at least max_items",
    ),
    Bad(
        "bad allow_from network",
        [(("ingest", "allow_from"), ["10.0.0.0/33"])],
        "ingest.allow_from[0]",
        "is not an IP network",
    ),
    Bad("listen without port", [(("ingest", "listen"), "localhost")], "ingest.listen", "host:port"),
    Bad("listen port out of range", [(("admin", "listen"), "127.0.0.1:70000")], "admin.listen", "host:port"),
    Bad(
        "unknown rate limit budget",
        [(("rate_limits", "brevo_event"), {"requests": 5, "per": "1s"})],
        "rate_limits.brevo_event",
        "did you mean 'brevo_events'?",
    ),
    Bad(
        "negative rate",
        [(("rate_limits", "brevo_events", "requests"), -5)],
        "rate_limits.brevo_events.requests",
        "greater than 0",
    ),
    Bad(
        "zero rate period",
        [(("rate_limits", "brevo_contacts", "per"), 0)],
        "rate_limits.brevo_contacts.per",
        "greater than 0",
    ),
    Bad(
        "bad logging level",
        [(("logging", "level"), "verbose")],
        "logging.level",
        "'debug', 'info', 'warning' or 'error'",
    ),
    Bad("unparseable export.start", [(("export", "start"), "yesterday")], "export.start", "YYYY-MM-DDTHH"),
    Bad(
        "bad export.start", [(("export", "start"), "2026-13-01T00")], "export.start", "month must be in 1..12"
    ),
    Bad(
        "bad removal fraction",
        [(("cohort_guard", "max_removal_fraction"), 1.5)],
        "cohort_guard.max_removal_fraction",
        "less than or equal to 1",
    ),
    Bad(
        "bad attribute name",
        [(("revenue", "ltv_attribute"), "amp ltv")],
        "revenue.ltv_attribute",
        "not a valid Brevo attribute name",
    ),
    Bad(
        "revenue attribute also in property_mapping",
        [(("revenue", "ltv_attribute"), "LTV")],
        "revenue.ltv_attribute",
        "'LTV' is also written by property_mapping.lifetime_revenue; one Brevo attribute takes one source",
    ),
    Bad(
        "revenue attribute also in property_mapping, other case",
        [(("property_mapping", "total purchases"), "order_count"), (("revenue", "count_attribute"), "ORDER_COUNT")],
        "revenue.count_attribute",
        """'ORDER_COUNT' is also written by property_mapping."total purchases"; one Brevo attribute takes one""",
    ),
    Bad(
        "ltv and count on one attribute",
        [(("revenue", "ltv_attribute"), "AMP_LTV"), (("revenue", "count_attribute"), "AMP_LTV")],
        "revenue.count_attribute",
        "'AMP_LTV' is also written by revenue.ltv_attribute; one Brevo attribute takes one source",
    ),
    Bad(
        "contacts batch too large",
        [(("connectors", "brevo", "contacts_batch_size"), 1001)],
        "connectors.brevo.contacts_batch_size",
        "less than or equal to 1000",
    ),
    Bad(
        "contacts batch empty",
        [(("connectors", "brevo", "contacts_batch_size"), 0)],
        "connectors.brevo.contacts_batch_size",
        "greater than or equal to 1",
    ),
    Bad(
        "zero import threshold",
        [(("connectors", "brevo", "contacts_import_min"), 0)],
        "connectors.brevo.contacts_import_min",
        "greater than or equal to 1",
    ),
    Bad(
        "bad import list id",
        [(("connectors", "brevo", "import_list_id"), 0)],
        "connectors.brevo.import_list_id",
        "greater than 0",
    ),
    Bad("bad bool", [(("sync", "events"), "maybe")], "sync.events", "true or false"),
    Bad("section not a mapping", [(("batching",), "fast")], "batching", "must be a mapping"),
    Bad(
        "secret not a string",
        [(("ingest", "webhook_token"), 12345)],
        "ingest.webhook_token",
        "must be a string",
    ),
    # A secret pasted into the wrong key is echoed by that key's message; it must come out masked.
    Bad(
        "secret in a non-secret key",
        [(("export", "lag"), "${BREVO_API_KEY}")],
        "export.lag",
        "not a duration",
    ),
    Bad(
        "secret as event name",
        [(("event_mapping", "Purchase"), "x ${AMPLITUDE_SECRET_KEY}")],
        "event_mapping.Purchase",
        "not a valid Brevo event name",
    ),
]


def apply_edits(data: dict[str, Any], edits: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for path, value in edits:
        node: Any = data
        for part in path[:-1]:
            node = node[part]
        if value is DELETE:
            del node[path[-1]]
        elif isinstance(node, list) and path[-1] == len(node):
            node.append(value)
        else:
            node[path[-1]] = value
    return data


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[c.id for c in BAD_CONFIGS])
def test_bad_config(case: Bad, tmp_path: Path) -> None:
    base = shipped_data()
    base["ingest"]["webhook_token"] = HOOK  # an inline secret too
    (tmp_path / "brevo.key").write_text(FILE_SECRET)
    data = apply_edits(base, case.edits)
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=case.env or ENV, base_dir=tmp_path)
    err = info.value
    matching = [line for line in err.errors if line.startswith(case.path + ": ")]
    assert matching, f"no error at {case.path!r} in:\n{err}"
    assert any(case.fragment in line for line in matching), f"{case.fragment!r} not in {matching}"
    assert str(err) == "\n".join(err.errors)
    assert_no_secrets(str(err), repr(err), repr(err.errors), repr(err.__cause__), repr(err.__context__))


def test_bad_config_count() -> None:
    assert len(BAD_CONFIGS) >= 20


def test_all_problems_reported_at_once() -> None:
    data = apply_edits(
        shipped_data(),
        [
            (("loging",), {}),
            (("connectors", "amplitude", "data_center"), "AP"),
            (("connectors", "brevo", "api_key"), "${MISSING_VAR}"),
            (("event_mapping", "Add to Cart"), "cart updated"),
            (("cohorts", 0, "list_id"), 11),
            (("segments", "active_users"), {"seen_within": "soon"}),
            (("batching", "max_items"), 0),
            (("rate_limits", "brevo_evnts"), {"requests": 1, "per": 1}),
            (("logging", "level"), "loud"),
        ],
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=ENV)
    paths = [line.split(": ", 1)[0] for line in info.value.errors]
    assert paths == [  # in document order
        "connectors.amplitude.data_center",
        "connectors.brevo.api_key",
        'event_mapping."Add to Cart"',
        "cohorts[0].list_id",
        "segments.active_users.seen_within",
        "rate_limits.brevo_evnts",
        "batching.max_items",
        "logging.level",
        "loging",
    ]
    assert_no_secrets(str(info.value))


def test_unset_env_var_reported_once_per_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(state={"path": "${A}/${B}"}), env={})
    assert info.value.errors == [
        "state.path: environment variable A is not set (use ${A:-default} if optional)",
        "state.path: environment variable B is not set (use ${B:-default} if optional)",
    ]


# --------------------------------------------------------------------------------------------------------
# Settings accepted but not built yet


NOT_BUILT = "is accepted but not built yet in this version; it is ignored"


def unbuilt_keys(cfg: Config) -> list[str]:
    messages = unbuilt_settings(cfg)
    assert all(NOT_BUILT in m for m in messages), messages
    return [m.split(" ", 1)[0] for m in messages]


def test_unbuilt_settings_of_the_shipped_config() -> None:
    cfg = load_config(SHIPPED, env=ENV)
    assert unbuilt_keys(cfg) == ["cohorts", "lists", "user_activity.enabled"]
    messages = unbuilt_settings(cfg)
    assert "def456" in messages[0]
    assert_no_secrets(*messages)
    with_token = load_config(SHIPPED, env={**ENV, "WEBHOOK_TOKEN": HOOK})
    assert unbuilt_keys(with_token)[-1] == "ingest.webhook_token" and "127.0.0.1:8787" in unbuilt_settings(with_token)[-1]
    assert_no_secrets(*unbuilt_settings(with_token))


# The export path alone: nothing unbuilt is asked for.
QUIET = minimal(sync={}, ingest={"enabled": False})
PLAN_ATTRIBUTE = (("property_mapping",), {"email": "email", "plan": "PLAN"})
A_COHORT = (("cohorts",), [{"id": "c1", "list_id": 5}])


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ([], []),
        ([(("sync",), DELETE), (("ingest",), DELETE)], []),  # defaults count: the endpoint is built
        # Built: creating attributes, user properties -> contact attributes, revenue -> orders and LTV.
        ([(("connectors", "brevo", "create_attributes"), True)], []),
        # Identity targets are carried in `identifiers`: no contact attribute to write.
        ([(("property_mapping",), {"email": "email", "uid": "EXT_ID"})], []),
        ([PLAN_ATTRIBUTE], ["user_activity.enabled"]),  # contact attributes it would enrich
        ([PLAN_ATTRIBUTE, (("sync", "user_properties"), False)], []),
        ([A_COHORT], ["cohorts"]),
        ([A_COHORT, (("sync", "cohorts"), False)], []),
        ([(("sync", "revenue"), True), (("revenue",), {"orders": False})], []),
        ([(("sync", "revenue"), True), (("revenue",), {"orders": True, "ltv_attribute": "AMP_LTV"})], []),
        ([(("lists",), {"power_users": 11})], ["lists", "user_activity.enabled"]),
        ([(("lists",), {"power_users": 11}), (("user_activity",), {"enabled": False})], ["lists"]),
        ([(("segments",), {"every": "2h"})], []),  # rules without lists are not synced, built or not
        ([(("ingest", "enabled"), True)], []),
        ([(("ingest",), {"enabled": True, "webhook_token": "hook"})], ["ingest.webhook_token"]),  # cohort webhooks
        ([(("ingest",), {"enabled": False, "webhook_token": "hook"})], []),
    ],
)
def test_unbuilt_settings_rules(edits: list[tuple[tuple[Any, ...], Any]], expected: list[str]) -> None:
    assert unbuilt_keys(parse_config(apply_edits(QUIET, edits), env={})) == expected


# --------------------------------------------------------------------------------------------------------
# secrets=False: for status and dlq list/show/purge, from a shell without the keys


def test_without_secrets_unset_key_variables_leave_keys_empty() -> None:
    with pytest.raises(ConfigError):
        load_config(SHIPPED, env={})
    cfg = load_config(SHIPPED, env={}, secrets=False)
    amp, brevo = cfg.connectors.amplitude, cfg.connectors.brevo
    assert (amp.api_key, amp.secret_key, cfg.ingest.webhook_token) == (None, None, None)
    assert not brevo.api_key and cfg.ingest.api_keys == []
    assert cfg.state.path == "/var/lib/amplitude-brevo/state.db" and cfg.cohorts[0].id == "def456"
    # A variable that is set is still used.
    cfg = load_config(SHIPPED, env={"BREVO_API_KEY": BREVO_KEY}, secrets=False)
    assert cfg.connectors.brevo.api_key.reveal() == BREVO_KEY and secret_values(cfg) == [BREVO_KEY]


def test_without_secrets_key_files_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "brevo.key").write_text(FILE_SECRET)
    data = minimal(ingest={"api_keys_file": "/nonexistent/ingest.keys"})
    data["connectors"]["brevo"] = {"api_key_file": "brevo.key"}
    data["connectors"]["amplitude"] = {"api_key_file": "missing.key", "secret_key_file": "${CREDS_DIR}/amp"}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={}, base_dir=tmp_path)
    assert [e.split(": ", 1)[0] for e in info.value.errors] == [
        "connectors.amplitude.api_key_file",
        "connectors.amplitude.secret_key_file",
        "connectors.amplitude.secret_key_file",
        "ingest.api_keys_file",
    ]
    cfg = parse_config(data, env={}, base_dir=tmp_path, secrets=False)
    assert cfg.connectors.amplitude.api_key is None and cfg.connectors.amplitude.secret_key is None
    assert not cfg.connectors.brevo.api_key and cfg.ingest.api_keys == []
    assert secret_values(cfg) == []  # brevo.key exists but was not read
    assert_no_secrets(repr(cfg), render_config(cfg))


def test_without_secrets_everything_else_is_still_validated() -> None:
    data = apply_edits(
        shipped_data(),
        [
            (("state", "path"), "${STATE_DIRECTORY}/state.db"),  # not a secret: still must be set
            (("event_mapping", "Add to Cart"), "cart updated"),
            (("connectors", "amplitude", "secret_key"), DELETE),  # not written at all
            (("connectors", "brevo", "api_key"), DELETE),
            (("ingest", "webhook_token_file"), "hook.token"),  # both a key and its file
        ],
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={}, secrets=False)
    paths = [e.split(": ", 1)[0] for e in info.value.errors]
    assert paths == [
        "connectors.amplitude.secret_key",
        "connectors.brevo.api_key",
        'event_mapping."Add to Cart"',
        "ingest.webhook_token_file",
        "state.path",
    ]
    assert any("STATE_DIRECTORY is not set" in e for e in info.value.errors)


def test_every_load_reads_key_files_again(tmp_path: Path) -> None:
    """What makes `systemctl reload` rotate keys that come from files: reload calls load_config()."""
    key = tmp_path / "brevo.key"
    conf = tmp_path / "config.yaml"
    conf.write_text(f"connectors:\n  amplitude: {{enabled: false}}\n  brevo: {{api_key_file: '{key}'}}\n")
    key.write_text(BREVO_KEY)
    assert load_config(conf, env={}).connectors.brevo.api_key.reveal() == BREVO_KEY
    key.write_text(FILE_SECRET + "\n")
    assert load_config(conf, env={}).connectors.brevo.api_key.reveal() == FILE_SECRET


# --------------------------------------------------------------------------------------------------------
# load_config: file-level errors


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml", env={})


def test_yaml_syntax_error_has_line_and_no_content(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f'connectors:\n  brevo:\n    api_key: "{BREVO_KEY}\n  bad: [\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    [line] = info.value.errors
    assert line.startswith(f"{path}:") and "invalid YAML" in line
    assert_no_secrets(line)
    path.write_text("connectors:\n  brevo: {api_key: x}\n   amplitude: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3:"):
        load_config(path, env={})


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lists:\n  active_users: 1\n  active_users: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:3:.*duplicate key 'active_users' \(first on line 2\)"):
        load_config(path, env={})


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_config_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="config file is empty"):
        load_config(path, env={})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(path, env={})


def test_fixture_configs_load() -> None:
    cfg = load_config(CONFIGS / "minimal.yaml", env=ENV)
    assert cfg.connectors.brevo.api_key.reveal() == BREVO_KEY
    assert cfg.lists.active_users is None


# --------------------------------------------------------------------------------------------------------
# No secret in repr / render; secret_values for the log filter


def test_repr_and_render_contain_no_secrets() -> None:
    cfg = load_config(SHIPPED, env={**ENV, "WEBHOOK_TOKEN": HOOK})
    assert_no_secrets(repr(cfg), str(cfg), render_config(cfg), repr(cfg.model_dump()), cfg.model_dump_json())
    rendered = yaml.safe_load(render_config(cfg))
    assert rendered["connectors"]["brevo"]["api_key"] == "***"
    assert rendered["ingest"]["api_keys"] == ["***"]
    assert rendered["ingest"]["webhook_token"] == "***"
    assert rendered["export"] == {
        "start": "2026-11-01T00",
        "lag": "3h",
        "poll_interval": "5m",
        "max_window": "1d",
        "readers": 2,
    }
    assert rendered["segments"]["power_users"] == {"cohort": "abc123"}
    assert rendered["rate_limits"]["brevo_other"] == {"requests": 100, "per": "1h"}


def test_secret_values_lists_every_secret() -> None:
    cfg = load_config(SHIPPED, env={**ENV, "WEBHOOK_TOKEN": HOOK})
    assert set(secret_values(cfg)) == {AMP_KEY, AMP_SECRET, BREVO_KEY, HOOK}
    cfg = parse_config(minimal(ingest={"api_keys": []}), env={})
    assert set(secret_values(cfg)) == {AMP_KEY, AMP_SECRET, BREVO_KEY}


def test_secret_type() -> None:
    s = Secret(BREVO_KEY)
    assert repr(s) == "'***'" and str(s) == "***" and f"{s}" == "***" and f"{s:>5}" == "  ***"
    assert s.reveal() == BREVO_KEY
    assert s == Secret(BREVO_KEY) and s != Secret("other") and s == BREVO_KEY
    assert BREVO_KEY in [Secret(AMP_KEY), s]
    assert len({s, Secret(BREVO_KEY)}) == 1 and BREVO_KEY in {s}
    assert bool(s) and not Secret("")
    assert_no_secrets(repr([s]), repr({"k": s}))
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# parse_duration / parse_hour


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("3h", 10800.0),
        ("7d", 604800.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        (" 2S ", 2.0),
        ("120", 120.0),
        (0, 0.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "h", "5x", "3 hours", "-5s", "1h-", "5mm", -1, True, None, float("inf"), "1e3"]
)
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", ["20261101T05", "2026-11-01T05"])
def test_parse_hour(value: str) -> None:
    hour = parse_hour(value)
    assert hour == datetime(2026, 11, 1, 5, tzinfo=UTC) and hour.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-01",
        "2026-11-01T5",
        "20261101T5",
        "2026-11-01 05",
        "2026-13-01T00",
        "2026-11-01T24",
        "2026/11/01T05",
        "",
    ],
)
def test_parse_hour_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_hour(value)
