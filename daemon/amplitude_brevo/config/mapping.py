"""What flows to Brevo and as whom: the sync switches, identity rules and revenue options."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator

from .fields import AttributeName, NonEmptyStr, Section, lower


class Sync(Section):
    events: bool = True
    user_properties: bool = True
    cohorts: bool = True
    revenue: bool = True


class Identity(Section):
    ext_id: NonEmptyStr = "user_id"
    email_property: NonEmptyStr = "email"
    anonymous: Annotated[Literal["skip", "use_device_id"], BeforeValidator(lower)] = "skip"


class Revenue(Section):
    orders: bool = True
    ltv_attribute: AttributeName | None = None
    count_attribute: AttributeName | None = None
