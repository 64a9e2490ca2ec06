"""`dlq replay` of each sink's dead letters against the Brevo simulator: events one by one, orders grouped into
`/orders/status/batch` with `historical: true`, contacts as upserts; dedupe keys recorded once accepted."""

from __future__ import annotations

import orjson
from aiohttp.test_utils import TestServer

from amplitude_brevo.config import parse_config
from amplitude_brevo.dlq import replay
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE, make_brevo_app
from amplitude_brevo.state import DeadLetter, StateStore

from .conftest import SECRETS, base_config


def order(i: int) -> dict:
    return {"id": f"key-{i}", "createdAt": "2026-11-01T10:00:00.000Z", "updatedAt": "2026-11-01T10:00:00.000Z",
            "status": "completed", "amount": 10.0 + i, "products": [{"productId": "sku", "price": 10.0 + i,
                                                                       "quantity": 1}],
            "identifiers": {"ext_id": f"u{i}"}}


async def test_replay_by_sink_sends_orders_in_one_historical_batch_and_contacts_as_upserts(tmp_path):
    app = make_brevo_app(api_key=SECRETS["BREVO_API_KEY"])
    async with TestServer(app) as server:
        cfg = parse_config(base_config(tmp_path, connectors={"brevo": {"api_url": str(server.make_url("/v3"))}}),
                           env=SECRETS)
        async with await StateStore.open(tmp_path / "state.db") as state:
            await state.add_dead_letters(
                [DeadLetter("export", "brevo_orders", orjson.dumps(order(i)), "eCommerce is not activated")
                 for i in range(3)]
                + [DeadLetter("contacts", "brevo_contacts", orjson.dumps(
                    {"ext_id": "u9", "email": "u9@example.org", "attributes": {"FIRSTNAME": "Nine"},
                     "in_brevo": False, "brevo_email": None, "brevo_id": None, "seq": 4}), "HTTP 500 ...")]
                + [DeadLetter("export", "brevo_events", b'{"member": "x"}', "malformed JSON line")])
            result = await replay(cfg, state, sink="brevo_orders")
            brevo = app[BREVO_STATE]
            assert sorted(result.sent) == [1, 2, 3] and not result.refused
            assert [o["historical"] for o in brevo.orders.values()] == [True] * 3
            assert brevo.requests["other"] + brevo.requests.get("orders_batch", 0) == 1, "one batch request"
            assert await state.unseen(["orders:key-0", "orders:key-2"]) == set(), "recorded once accepted"

            result = await replay(cfg, state, sink="brevo_contacts")
            assert result.sent == [4]
            [contact] = brevo.contacts.values()
            assert (contact.ext_id, contact.email, contact.attributes["FIRSTNAME"]) == ("u9", "u9@example.org", "Nine")

            result = await replay(cfg, state, source="export")
            assert result.sent == [] and list(result.not_replayable) == [5], "bad source data stays listed"
