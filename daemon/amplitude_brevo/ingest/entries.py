"""The spooled entry: what the ingest server stores per accepted request, so consumers need nothing else.

A JSON object (``v`` 1)::

    {"v": 1, "kind": "httpapi", "caller": "203.0.113.7", "received_at_ms": 1764686400123,
     "key_fingerprint": "1a2b3c4d", "options": {"min_id_length": 3}, "events": [...]}

Identify and Group Identify entries carry ``"identifications": [...]`` instead of ``events``. Items are as
validated (strings cut at 1,024 characters, too-short ids removed). ``caller`` is the address Amplitude would
have seen (the peer, or what a trusted proxy's ``X-Forwarded-For`` names), which forwarding uses for an event
whose ``ip`` is absent or ``"$remote"``. The API key itself is never stored, only its fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from amplitude_brevo.ingest.protocol import Accepted

VERSION = 1
EVENT_KINDS = frozenset({"httpapi", "batch"})


@dataclass(frozen=True, slots=True)
class SpooledRequest:
    kind: str
    caller: str
    received_at_ms: int
    key_fingerprint: str
    items: list[dict[str, Any]]
    options: dict[str, Any] | None = None


def encode_entry(accepted: Accepted, *, caller: str, received_at_ms: int) -> bytes:
    document: dict[str, Any] = {
        "v": VERSION,
        "kind": accepted.kind,
        "caller": caller,
        "received_at_ms": received_at_ms,
        "key_fingerprint": accepted.key_fingerprint,
    }
    if accepted.kind in EVENT_KINDS:
        if accepted.options is not None:
            document["options"] = accepted.options
        document["events"] = accepted.items
    else:
        document["identifications"] = accepted.items
    return orjson.dumps(document)


def decode_entry(body: bytes) -> SpooledRequest:
    document = orjson.loads(body)
    if document.get("v") != VERSION:
        raise ValueError(f"spool entry version {document.get('v')!r}, this build reads {VERSION}")
    kind = document["kind"]
    items = document["events"] if kind in EVENT_KINDS else document["identifications"]
    return SpooledRequest(
        kind=kind,
        caller=document["caller"],
        received_at_ms=document["received_at_ms"],
        key_fingerprint=document["key_fingerprint"],
        items=items,
        options=document.get("options"),
    )
