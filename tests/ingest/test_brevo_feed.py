"""Spooled requests → what the Brevo sinks get (ingest/brevo_feed.py): the export's outputs and profile operations."""

from __future__ import annotations

import orjson

from amplitude_brevo.ingest.brevo_feed import BrevoFeed
from amplitude_brevo.ingest.entries import SpooledRequest
from amplitude_brevo.pipeline.remap import EVENTS_SINK, ORDERS_SINK, PROFILES_SINK, MappingRules

RULES = MappingRules({"Purchase": "order_completed"}, {"email": "email", "plan_type": "PLAN", "visits": "VISITS",
                                                      "platform": "PLATFORM"},
                     sinks=(EVENTS_SINK, ORDERS_SINK, PROFILES_SINK), count_revenue=True)
SEED = {"user_id": "user_123", "event_type": "Purchase", "insert_id": "ins-1", "platform": "iOS",
        "event_properties": {"revenue": 89.99, "product_id": "SKU-001"},
        "user_properties": {"$set": {"plan_type": "premium", "email": "A@Example.com", "unmapped": 1},
                            "$add": {"visits": 2}}, "time": 1764400000000}


def request(kind: str, items: list) -> SpooledRequest:
    return SpooledRequest(kind=kind, caller="203.0.113.7", received_at_ms=1764400005000, key_fingerprint="ab12cd34",
                          items=items)


def profile_items(chunk) -> list[dict]:
    return [orjson.loads(b) for b in chunk.outputs[PROFILES_SINK].bodies]


def test_an_event_makes_the_exports_event_and_order_a_revenue_fact_and_its_operations():
    chunk = BrevoFeed(RULES).map_request(7, request("httpapi", [SEED]))
    assert chunk.rows == 1 and chunk.letters == []
    assert chunk.outputs[EVENTS_SINK].keys == ["events:ins-1"]
    assert chunk.outputs[ORDERS_SINK].keys == ["orders:ins-1"], "the export's dedupe keys: seen once either way"
    fact, ops = profile_items(chunk)
    assert fact == {"r": 1, "k": "ins-1", "u": "user_123", "a": 89.99, "t": "2025-11-29T07:06:40.000Z"}
    assert ops["k"] == "7-0" and ops["u"] == "user_123" and ops["f"] == ops["l"] == "2025-11-29T07:06:40.000Z"
    assert ops["o"] == {"$set": {"plan_type": "premium"}, "$add": {"visits": 2}}, "mapped keys only"
    assert ops["c"] == {"platform": "iOS"} and (ops["e"], ops["m"]) == ("a@example.com", "set")


def test_plain_user_properties_are_a_set_and_set_once_marks_the_email():
    event = {**SEED, "user_properties": {"plan_type": "pro"}}
    [_, ops] = profile_items(BrevoFeed(RULES).map_request(1, request("batch", [event])))
    assert ops["o"] == {"$set": {"plan_type": "pro"}}
    event = {**SEED, "user_properties": {"$setOnce": {"email": "b@example.com"}}}
    [_, ops] = profile_items(BrevoFeed(RULES).map_request(1, request("batch", [event])))
    assert (ops["e"], ops["m"]) == ("b@example.com", "once") and "o" not in ops


def test_an_identify_makes_operations_only_and_a_group_identify_nothing():
    ident = {"user_id": "user_123", "user_properties": {"$add": {"visits": 3}}}
    chunk = BrevoFeed(RULES).map_request(3, request("identify", [ident]))
    assert chunk.outputs[EVENTS_SINK].bodies == [] and chunk.outputs[ORDERS_SINK].bodies == []
    [ops] = profile_items(chunk)
    assert ops["o"] == {"$add": {"visits": 3}} and "f" not in ops and "l" not in ops, "an identify is not activity"
    chunk = BrevoFeed(RULES).map_request(4, request("groupidentify", [{"group_type": "org", "group_value": "x"}]))
    assert all(not out.bodies for out in chunk.outputs.values())


def test_without_profiles_no_operations_are_made():
    rules = MappingRules({"Purchase": "order_completed"}, {}, sinks=(EVENTS_SINK,))
    chunk = BrevoFeed(rules).map_request(1, request("httpapi", [SEED]))
    assert list(chunk.outputs) == [EVENTS_SINK] and len(chunk.outputs[EVENTS_SINK].bodies) == 1
