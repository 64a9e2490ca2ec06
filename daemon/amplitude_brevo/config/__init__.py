"""Typed configuration: one frozen pydantic model per YAML section; load_config() reports every error at once.

The package, by what a reader looks for:

    fields.py      field types and validators (durations, URLs, listen addresses, ids), the section base
    connectors.py  connectors.amplitude, connectors.brevo
    mapping.py     sync, identity, revenue (and the one-source-per-attribute rule)
    export.py      export
    audiences.py   lists, cohorts, cohort_guard, segments, user_activity (and the one-writer-per-list rule)
    service.py     ingest, admin, state
    limits.py      rate_limits (plan budgets), batching, logging
    model.py       Config, the root of them all
    loader.py      load_config(), parse_config(): ${VAR} and *_file resolution, error formatting
    render.py      render_config(), secret_values()
    unbuilt.py     unbuilt_settings(): configured capabilities this version does not have yet
"""

from amplitude_brevo.durations import parse_duration, parse_hour

from .audiences import CohortConfig, CohortGuard, Lists, SegmentRule, Segments, UserActivity
from .connectors import AMPLITUDE_HOSTS, BREVO_API_URL, AmplitudeConnector, BrevoConnector, Connectors
from .errors import ConfigError, Loc, format_path
from .export import Export
from .fields import split_listen
from .limits import BUDGET_NAMES, PLAN_BUDGETS, Batching, Logging, RateLimit
from .loader import SECRET_PATHS, load_config, parse_config
from .mapping import Identity, Revenue, Sync
from .model import Config
from .render import render_config, secret_values
from .service import Admin, Ingest, State
from .unbuilt import unbuilt_settings

__all__ = [
    "AMPLITUDE_HOSTS",
    "BREVO_API_URL",
    "BUDGET_NAMES",
    "PLAN_BUDGETS",
    "SECRET_PATHS",
    "Admin",
    "AmplitudeConnector",
    "Batching",
    "BrevoConnector",
    "CohortConfig",
    "CohortGuard",
    "Config",
    "ConfigError",
    "Connectors",
    "Export",
    "Identity",
    "Ingest",
    "Lists",
    "Loc",
    "Logging",
    "RateLimit",
    "Revenue",
    "SegmentRule",
    "Segments",
    "State",
    "Sync",
    "UserActivity",
    "format_path",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_hour",
    "render_config",
    "secret_values",
    "split_listen",
    "unbuilt_settings",
]
