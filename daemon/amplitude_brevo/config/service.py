"""What the daemon serves and keeps: the ingest and admin listeners, the state file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from amplitude_brevo.secrets import Secret

from .fields import (
    DAY,
    ByteSize,
    Cidr,
    Listen,
    NonEmptyStr,
    PositiveDuration,
    PositiveInt,
    Section,
    empty_secret_to_none,
    split_listen,
)


class _Listener(Section):
    """A section with a `listen: "host:port"` key (declared by each subclass, to keep its key order)."""

    if TYPE_CHECKING:
        listen: str

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class Ingest(_Listener):
    enabled: bool = True
    listen: Listen = "127.0.0.1:8787"
    forward_to_amplitude: bool = True
    api_keys: list[Secret] = Field(default_factory=list)
    webhook_token: Secret | None = None
    allow_from: list[Cidr] = Field(default_factory=list)  # empty: any caller
    trusted_proxies: list[Cidr] = Field(default_factory=list)  # whose X-Forwarded-For names the caller
    # The spool's bound: past it, requests get Amplitude's 429 until the consumers catch up.
    spool_max_requests: PositiveInt = 1_000_000
    spool_max_size: ByteSize = 1024**3

    @field_validator("api_keys", mode="before")
    @classmethod
    def _drop_empty_keys(cls, value: Any) -> Any:
        if isinstance(value, str | Secret):
            value = [value]
        if isinstance(value, list):
            # `["${NEW_KEY:-}", "${OLD_KEY}"]`: an unset optional key is simply not accepted.
            value = [v for v in value if v is not None and v != "" and not (isinstance(v, Secret) and not v)]
        return value

    _token_none = field_validator("webhook_token", mode="before")(empty_secret_to_none)


class Admin(_Listener):
    listen: Listen = "127.0.0.1:9464"


class State(Section):
    path: NonEmptyStr = "/var/lib/amplitude-brevo/state.db"
    dedupe_window: PositiveDuration = 7 * DAY
