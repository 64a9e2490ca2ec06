"""The root model: every section of config.yaml in one frozen Config."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .audiences import CohortConfig, CohortGuard, Lists, Segments, UserActivity
from .connectors import Connectors
from .export import Export
from .fields import EventName, NonEmptyStr, PositiveDuration, Section
from .limits import PLAN_BUDGETS, Batching, BudgetName, Logging, RateLimit
from .mapping import Identity, Revenue, Sync
from .service import Admin, Ingest, State


class Config(Section):
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
    # Resolved: always every one of BUDGET_NAMES, plan defaults overridden per budget by the YAML.
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
