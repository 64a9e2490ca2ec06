"""Consumer: queued Brevo events → `POST /events/batch` (up to 1,000 a request), `POST /events` one by one
when the batch endpoint's budget is spent for a long while, or for a lone event.

The shared machinery (batches, splitting, budgets, settling, stop) is `BrevoSink`; this module says what is
particular to events: a batch body is `{"events": [...]}` of the events' own JSON bytes, and a 207/400 names
the refused events in `errors[].eventIndex`.
"""

from __future__ import annotations

from typing import Any

from ..pipeline.items import Item
from .brevo_client import BrevoResponse
from .brevo_sink import BrevoSink, SinkStats

__all__ = ["BrevoEventsSink", "SinkStats"]

SINK = "brevo_events"


class BrevoEventsSink(BrevoSink):
    name = SINK
    noun = "event"
    batch_path = "/events/batch"
    batch_budget = "brevo_events_batch"
    single_budget = "brevo_events"
    max_batch_size = 1000  # the simulator's and, as far as is known, Brevo's limit (reference §4.2: unpublished)

    def reload(self, cfg: Any) -> None:
        brevo = cfg.connectors.brevo
        self.client.reconfigure(base_url=brevo.api_url, api_key=brevo.api_key)
        self.resize(brevo.events_batch_size)

    def batch_body(self, bodies: list[bytes]) -> bytes:
        # The events' bodies are JSON already: join them, no decoding or re-encoding.
        return b'{"events":[' + b",".join(bodies) + b"]}"

    def single_request(self, item: Item) -> tuple[str, str, bytes]:
        return "POST", "/events", item.body

    def refused_items(self, response: BrevoResponse, size: int) -> dict[int, str]:
        """`errors: [{eventIndex: [..], message}]` of a 207/400 → {position: message}."""
        failed: dict[int, str] = {}
        body = response.body
        if response.status not in (207, 400) or not isinstance(body, dict):
            return failed
        for error in body.get("errors") or []:
            if not isinstance(error, dict):
                continue
            indexes = error.get("eventIndex")
            if isinstance(indexes, int):
                indexes = [indexes]
            for index in indexes if isinstance(indexes, list) else []:
                if isinstance(index, int) and 0 <= index < size:
                    failed[index] = str(error.get("message") or "invalid event")
        return failed
