"""Config errors: ConfigError, key paths as the operator reads them, and secret scrubbing."""

from __future__ import annotations

import json
import re

from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """The config is invalid; ``errors`` holds every problem as ``"key.path: message"``."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# Errors raised from model validators land at the model's own location. To point at a field (or several),
# a validator raises `located(...)`; the formatter appends each relative path to the model's location.


def located(*errors: tuple[Loc, str]) -> PydanticCustomError:
    return PydanticCustomError("located", "located errors", {"errors": list(errors)})


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


def scrub(text: str, secrets: set[str] | list[str]) -> str:
    # Belt and braces: messages are built without input values for secret keys, but a secret pasted into
    # the wrong key (e.g. `lag: ${BREVO_API_KEY}`) would be echoed by that key's message.
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
