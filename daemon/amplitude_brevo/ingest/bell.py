"""The spool's bell: the ingest server rings it after each commit, and the spool's readers (the forwarder to
Amplitude, the producer into Brevo) wake at once instead of at their next poll.

Readers subscribe the `asyncio.Event` they wait on while they run; a reader replaced at a reload subscribes
its own, so the server never needs to know who reads.
"""

from __future__ import annotations

import asyncio


class SpoolBell:
    def __init__(self) -> None:
        self._events: set[asyncio.Event] = set()

    def ring(self) -> None:
        for event in self._events:
            event.set()

    def subscribe(self, event: asyncio.Event) -> None:
        self._events.add(event)

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._events.discard(event)
