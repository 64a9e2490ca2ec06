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


ORDERS_PER_REPLAY = 1000  # orders in one /orders/status/batch request (Brevo's maximum)


def replay_target(letter: StoredDeadLetter) -> tuple[str, dict[str, Any]] | str:
    """(path, payload) to re-send, or why this dead letter cannot be re-sent as it is.

    Events go to `/events`; a contact to `POST /contacts` as an upsert (by ext_id, email as known then);
    orders to `/orders/status/batch`, `historical: true` (a replay should not start automations for orders
    that may be days old), grouped by `replay()` into requests of up to 1,000."""
    try:
        item = orjson.loads(letter.item)
    except orjson.JSONDecodeError:
        return "the item is not JSON"
    if not isinstance(item, dict):
        return "not a Brevo payload"
    if letter.sink == "brevo_events" and "event_name" in item and "identifiers" in item:
        return "/events", item
    if letter.sink == "brevo_orders" and "id" in item and "products" in item:
        return "/orders/status/batch", item
    if letter.sink == "brevo_contacts" and "ext_id" in item and "attributes" in item:
        contact = {"ext_id": item["ext_id"], "attributes": item.get("attributes") or {}, "updateEnabled": True}
        if item.get("email"):
            contact["email"] = item["email"]
        return "/contacts", contact
    return "not a Brevo payload (bad source data: fix it in Amplitude, then backfill the hour)"


async def replay(
    cfg: Config, store: StateStore, *, ids: list[int] | None = None, source: str | None = None,
    sink: str | None = None, max_attempts: int = 5,
) -> ReplayResult:
    """Send each selected dead letter once more (retrying transient errors a few times)."""
    if ids:
        letters = [dl for i in ids if (dl := await store.get_dead_letter(i)) is not None]
    else:
        letters = await store.list_dead_letters(source=source, limit=100_000)
    if sink is not None:
        letters = [dl for dl in letters if dl.sink == sink]
    result = ReplayResult()
    brevo = cfg.connectors.brevo
    async with make_session() as session:
        client = BrevoClient(session, base_url=brevo.api_url, api_key=brevo.api_key, budgets=Budgets(cfg.rate_limits),
                             backoff=Backoff(base=0.5, cap=10, max_attempts=max_attempts))
        orders: list[tuple[int, dict[str, Any]]] = []
        for letter in letters:
            if letter.replayed_at is not None:
                continue
            target = replay_target(letter)
            if isinstance(target, str):
                result.not_replayable[letter.id] = target
                continue
            path, payload = target
            if path == "/orders/status/batch":
                orders.append((letter.id, payload))
                continue
            key = (payload.get("event_properties") or {}).get("amplitude_insert_id")
            await _send(client, store, result, [letter.id], path, payload,
                        keys=["events:" + str(key)] if key else [], sink="brevo_events")
        for start in range(0, len(orders), ORDERS_PER_REPLAY):
            part = orders[start:start + ORDERS_PER_REPLAY]
            body = {"orders": [order for _, order in part], "historical": True}
            await _send(client, store, result, [i for i, _ in part], "/orders/status/batch", body,
                        keys=["orders:" + str(order["id"]) for _, order in part], sink="brevo_orders",
                        budget="brevo_orders_batch")
    return result


async def _send(client: BrevoClient, store: StateStore, result: ReplayResult, ids: list[int], path: str,
                payload: dict[str, Any], *, keys: list[str], sink: str, budget: str | None = None) -> None:
    """One replay request for the dead letters `ids`; their dedupe keys are recorded once Brevo accepts."""
    try:
        response = await client.call("POST", path, payload, budget=budget)
    except RuntimeError as exc:  # retries exhausted
        for i in ids:
            result.refused[i] = str(exc)
        return
    if validate_response(response.status) is Outcome.OK:
        await store.mark_replayed(ids)
        if keys:
            await store.commit_delivery(keys, sink=sink)
        result.sent.extend(ids)
        log.info("dlq.replayed", ids=ids, path=path)
    else:
        for i in ids:
            result.refused[i] = f"HTTP {response.status} {response.message}"
        log.warning("dlq.replay_refused", ids=ids, status=response.status, reason=response.message)
