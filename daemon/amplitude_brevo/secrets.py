"""The `Secret` type: a credential that never shows its value in repr, str, logs or dumps."""

from __future__ import annotations

import hmac
from typing import Any

from pydantic_core import PydanticCustomError, core_schema

MASK = "***"


class Secret:
    """A string credential (API key, token) that prints as ``***``.

    The value is only reachable through :meth:`reveal`, so a secret can travel through reprs of configs,
    exceptions and structured logs without leaking. Comparison is constant-time and also works against a
    plain ``str``, so ``request_key in cfg.ingest.api_keys`` does what it reads like.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not isinstance(value, str):
            raise TypeError("Secret value must be a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return repr(MASK)

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        # Equal to hash(str) so that a set/dict of secrets can be probed with a plain string.
        return hash(self._value)

    def __reduce__(self) -> Any:
        # Pickling would copy the value somewhere we no longer control (e.g. a multiprocessing queue dump).
        raise TypeError("Secret cannot be pickled")

    # pydantic integration: a field typed `Secret` accepts a str (or a Secret) and dumps as '***'.
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _validate_secret,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _s: MASK),
        )


def _validate_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    # Deliberately no value in the message: this is a credential slot.
    raise PydanticCustomError("secret_type", "must be a string (quote it in YAML)")
