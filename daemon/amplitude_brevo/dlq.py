"""`dlq replay`: re-send dead-lettered Brevo payloads, recording what gets through."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .clients.http import make_session
from .config import Config
from .logs import get_logger
from .retry import Backoff
from .sinks.brevo_client import BrevoClient, Outcome, validate_response
from .sinks.budgets import Budgets
from .state import StateStore, StoredDeadLetter

log = get_logger("dlq")


@dataclass
class ReplayResult:
    sent: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    not_replayable: dict[int, str] = field(default_factory=dict)


def replay_target(letter: StoredDeadLetter) -> tuple[str, dict[str, Any]] | str:
    """(path, payload) to re-send, or why this dead letter cannot be re-sent as it is."""
    try:
        item = orjson.loads(letter.item)
    except orjson.JSONDecodeError:
        return "the item is not JSON"
    if letter.sink == "brevo_events" and isinstance(item, dict) and "event_name" in item and "identifiers" in item:
        return "/events", item
    return "not a Brevo payload (bad source data: fix it in Amplitude, then backfill the hour)"


async def replay(
    cfg: Config, store: StateStore, *, ids: list[int] | None = None, source: str | None = None,
    max_attempts: int = 5,
) -> ReplayResult:
    """Send each selected dead letter once more (retrying transient errors a few times)."""
    if ids:
        letters = [dl for i in ids if (dl := await store.get_dead_letter(i)) is not None]
    else:
        letters = await store.list_dead_letters(source=source, limit=100_000)
    result = ReplayResult()
    brevo = cfg.connectors.brevo
    async with make_session() as session:
        client = BrevoClient(session, base_url=brevo.api_url, api_key=brevo.api_key, budgets=Budgets(cfg.rate_limits),
                             backoff=Backoff(base=0.5, cap=10, max_attempts=max_attempts))
        for letter in letters:
            if letter.replayed_at is not None:
                continue
            target = replay_target(letter)
            if isinstance(target, str):
                result.not_replayable[letter.id] = target
                continue
            path, payload = target
            try:
                response = await client.call("POST", path, payload)
            except RuntimeError as exc:  # retries exhausted
                result.refused[letter.id] = str(exc)
                continue
            if validate_response(response.status) is Outcome.OK:
                await store.mark_replayed([letter.id])
                key = (payload.get("event_properties") or {}).get("amplitude_insert_id")
                if key:
                    await store.commit_delivery(["events:" + str(key)], sink="brevo_events")
                result.sent.append(letter.id)
                log.info("dlq.replayed", id=letter.id, path=path)
            else:
                result.refused[letter.id] = f"HTTP {response.status} {response.message}"
                log.warning("dlq.replay_refused", id=letter.id, status=response.status, reason=response.message)
    return result
