"""What travels through the sink queues: one item for one sink, carrying the ack token of its source position.

A source reads at positions (an export hour, a spool id, a webhook message, a cohort sync run). Every item it
queues — and one row may fan out into items for several sinks — carries an `AckToken` naming its position in
that source's `OffsetTracker`. The sink resolves each item once Brevo has answered for it (delivered or
dead-lettered) through the `Acknowledger`; the tracker alone decides when a position is done everywhere and
the checkpoint may move. Nobody calls back into the source object (Vector's finalizers, STYLE.md).
"""

from __future__ import annotations

from typing import Any


class AckToken:
    """A source position: shared by every item read there, whichever sink each went to."""

    __slots__ = ("tracker", "position")

    def __init__(self, tracker: Any, position: Any) -> None:
        self.tracker = tracker  # an OffsetTracker (pipeline/acks.py)
        self.position = position

    @property
    def source(self) -> str:
        """The source's name, as dead letters record it (`export`, `ingest`, …)."""
        return self.tracker.source

    def __repr__(self) -> str:
        return f"AckToken({self.tracker.name!r}, {self.position!r})"


class Item:
    """One unit of work for one sink.

    `key` is the dedupe-record key in the sink's namespace (`events:<insert_id>`, `orders:<insert_id>`), or
    None for writes that are idempotent and need no record (contacts, lists). `body` is the Brevo payload as
    compact JSON bytes: what is sent, and what a dead letter keeps.
    """

    __slots__ = ("key", "body", "token")

    def __init__(self, key: str | None, body: bytes, token: AckToken) -> None:
        self.key = key
        self.body = body
        self.token = token

    @property
    def dedupe_key(self) -> str | None:
        """The key without its namespace (`amplitude_insert_id` of an event), or None."""
        return None if self.key is None else self.key.split(":", 1)[1]

    def __repr__(self) -> str:
        return f"Item(key={self.key!r}, token={self.token!r}, body={self.body[:80]!r}…)"
