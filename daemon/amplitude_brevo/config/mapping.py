"""What flows to Brevo and as whom: the sync switches, identity rules and revenue options."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from .errors import Loc, format_path
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


_REVENUE_ATTRIBUTES = ("ltv_attribute", "count_attribute")


def attribute_writer_errors(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """A Brevo attribute may have one source: a `property_mapping` entry or a `revenue.*_attribute`.

    Compared case-insensitively (Brevo attribute names are capitals). Checked on the raw data, like
    `list_writer_errors`, so that it is reported together with unrelated errors elsewhere in the file.
    """
    revenue = data.get("revenue")
    if not isinstance(revenue, dict):
        return []
    mapping = data.get("property_mapping")
    writers: dict[str, str] = {}
    if isinstance(mapping, dict):
        for source, target in mapping.items():
            if isinstance(target, str) and target.strip():
                writers.setdefault(target.strip().upper(), format_path(("property_mapping", source)))
    errors: list[tuple[Loc, str]] = []
    for key in _REVENUE_ATTRIBUTES:
        name = revenue.get(key)
        if not isinstance(name, str) or not name.strip():
            continue
        loc: Loc = ("revenue", key)
        other = writers.get(name.strip().upper())
        if other is not None:
            errors.append((loc, f"{name!r} is also written by {other}; one Brevo attribute takes one source"))
        else:
            writers[name.strip().upper()] = format_path(loc)
    return errors
