"""The resolved config for people and for the log filter: render_config() and secret_values()."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel

from amplitude_brevo.secrets import Secret

from .errors import scrub
from .model import Config


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
    return scrub(text, secret_values(cfg))
