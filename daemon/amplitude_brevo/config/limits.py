"""Throughput and output: Brevo rate budgets per plan, batching, logging."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from .errors import located
from .fields import HOUR, Duration, PositiveDuration, PositiveInt, Section, did_you_mean, lower, not_bool

BUDGET_NAMES = (
    "brevo_events", "brevo_events_batch", "brevo_contacts", "brevo_orders", "brevo_orders_batch", "brevo_other",
)


class RateLimit(Section):
    """At most ``requests`` requests every ``per`` seconds (one aiolimiter budget)."""

    requests: PositiveInt
    per: PositiveDuration


def _budget(requests: int, per: float) -> RateLimit:
    return RateLimit(requests=requests, per=per)


# Brevo's published limits (reference/brevo-api.md §6). brevo_other covers the batch endpoints whose bucket
# is unstated ("all other endpoints": 100/200/600 requests per hour). /events/batch gets a budget of its own
# with those same figures, and so does /orders/status/batch (brevo_orders_batch), so that events, orders and
# /processes cannot starve one another; the sinks read x-sib-ratelimit-* on every answer and pause when the
# server says a window is spent.
PLAN_BUDGETS: dict[str, dict[str, RateLimit]] = {
    "general": {
        "brevo_events": _budget(10, 1),
        "brevo_events_batch": _budget(100, HOUR),
        "brevo_contacts": _budget(10, 1),
        "brevo_orders": _budget(5, 1),
        "brevo_orders_batch": _budget(100, HOUR),
        "brevo_other": _budget(100, HOUR),
    },
    "advanced": {
        "brevo_events": _budget(20, 1),
        "brevo_events_batch": _budget(200, HOUR),
        "brevo_contacts": _budget(20, 1),
        "brevo_orders": _budget(10, 1),
        "brevo_orders_batch": _budget(200, HOUR),
        "brevo_other": _budget(200, HOUR),
    },
    "extended": {
        "brevo_events": _budget(60, 1),
        "brevo_events_batch": _budget(600, HOUR),
        "brevo_contacts": _budget(60, 1),
        "brevo_orders": _budget(15, 1),
        "brevo_orders_batch": _budget(600, HOUR),
        "brevo_other": _budget(600, HOUR),
    },
}


def _budget_name(name: str) -> str:
    if name not in BUDGET_NAMES:
        raise ValueError(f"unknown rate limit budget{did_you_mean(name, list(BUDGET_NAMES))}")
    return name


BudgetName = Annotated[str, AfterValidator(_budget_name)]


class Batching(Section):
    max_items: Annotated[int, BeforeValidator(not_bool), Field(ge=1, le=1000)] = 1000
    max_wait: Duration = 2.0
    queue_capacity: PositiveInt = 50000

    @model_validator(mode="after")
    def _capacity_holds_a_batch(self) -> Batching:
        if self.queue_capacity < self.max_items:
            raise located((("queue_capacity",), f"must be at least max_items ({self.max_items})"))
        return self


class Logging(Section):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(lower)] = "info"
    format: Annotated[Literal["auto", "json", "console"], BeforeValidator(lower)] = "auto"
