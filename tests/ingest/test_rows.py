"""Spooled HTTP V2 events as export rows (ingest/rows.py): the export path's consumers apply to them unchanged."""

from __future__ import annotations

import orjson
import pytest

from amplitude_brevo.ingest.rows import export_time, live_row
from amplitude_brevo.pipeline.remap import EVENTS_SINK, ORDERS_SINK, BrevoEvent, MappingRules, remap_event
from amplitude_brevo.pipeline.revenue import remap_order

APPENDIX_A_EVENTS = {"Purchase": "order_completed", "Sign Up": "customer_created", "Page View": "page_viewed"}
APPENDIX_A_PROPS = {"email": "email", "first_name": "FIRSTNAME", "plan_type": "PLAN", "device_type": "DEVICE",
                    "carrier": "CARRIER"}
RULES = MappingRules(APPENDIX_A_EVENTS, APPENDIX_A_PROPS, sinks=(EVENTS_SINK, ORDERS_SINK, "profiles"))
# The seed's HTTP V2 example (SPEC Appendix A).
SEED_EVENT = {"user_id": "user_123", "event_type": "Purchase",
              "event_properties": {"revenue": 89.99, "product_id": "SKU-001", "product_name": "Widget Pro"},
              "user_properties": {"$set": {"plan_type": "premium"}}, "time": 1764400000000}


def row_of(event: dict, **kw):
    live = live_row(event, spool_id=kw.pop("spool_id", 7), index=kw.pop("index", 0),
                    received_at_ms=kw.pop("received_at_ms", 1764400005000))
    return RULES.row_decoder.decode(live.line), live


def test_the_seeds_example_becomes_order_completed_and_an_order_of_89_99_for_sku_001():
    row, live = row_of(SEED_EVENT)
    event = remap_event(row, RULES)
    assert isinstance(event, BrevoEvent)
    payload = event.payload
    assert payload["event_name"] == "order_completed"
    assert payload["event_date"] == "2025-11-29T07:06:40.000Z"
    assert payload["identifiers"] == {"ext_id": "user_123"}
    assert payload["contact_properties"] == {"PLAN": "premium"}, "the $set values are the event's properties"
    order = orjson.loads(remap_order(row, RULES).body)
    assert order["amount"] == 89.99 and order["products"][0]["productId"] == "SKU-001"
    assert live.operations == {"$set": {"plan_type": "premium"}}


def test_the_dedupe_key_is_the_insert_id_the_export_will_show_else_the_spool_position():
    row, _ = row_of({**SEED_EVENT, "insert_id": "abc-123"})
    assert row.dedupe_key == "abc-123"
    row, _ = row_of(SEED_EVENT, spool_id=42, index=3)
    assert row.dedupe_key == "ingest-42-3"


def test_times_are_in_the_exports_format_and_a_missing_time_is_the_receive_time():
    assert export_time(1764400000123) == "2025-11-29 07:06:40.123000"
    row, _ = row_of({k: v for k, v in SEED_EVENT.items() if k != "time"}, received_at_ms=1764400009000)
    assert row.event_time == row.server_upload_time == "2025-11-29 07:06:49.000000"


def test_export_time_agrees_with_datetime_and_a_time_no_calendar_holds_is_the_receive_time():
    import random
    from datetime import UTC, datetime, timedelta

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rng = random.Random(7)
    for ms in [0, 999, 1000, 1764400000123, 253402300799999, *(rng.randrange(10**11, 10**13) for _ in range(2000))]:
        exact = epoch + timedelta(milliseconds=ms)  # integer arithmetic: exact up to year 9999
        assert export_time(ms) == exact.strftime("%Y-%m-%d %H:%M:%S.%f"), ms
    with pytest.raises(ValueError):
        export_time(253402300800000)
    row, _ = row_of({**SEED_EVENT, "time": 2**62}, received_at_ms=1764400009000)
    assert row.event_time == "2025-11-29 07:06:49.000000"


@pytest.mark.parametrize(("fields", "amount"), [
    ({"price": 10.0, "quantity": 3}, 30.0),
    ({"revenue": 25.5, "productId": "SKU-9", "revenueType": "purchase"}, 25.5),
    ({"revenue": -5.0}, -5.0),
])
def test_top_level_revenue_fields_make_orders(fields, amount):
    event = {"user_id": "user_124", "event_type": "Page View", "time": 1764400000000, **fields}
    row, _ = row_of(event)
    order = orjson.loads(remap_order(row, RULES).body)
    assert order["amount"] == amount
    props = orjson.loads(bytes(row.event_properties))
    assert {f"${k}" for k in fields} <= set(props), "kept where the export keeps them"


def test_an_apps_own_event_properties_win_over_the_top_level_copy():
    event = {"user_id": "user_125", "event_type": "Purchase", "time": 1, "price": 1.0,
             "event_properties": {"$price": 2.0}}
    row, _ = row_of(event)
    assert orjson.loads(bytes(row.event_properties))["$price"] == 2.0


def test_plain_user_properties_and_device_fields_are_what_the_mapping_reads():
    event = {"user_id": "user_126", "event_type": "Sign Up", "time": 1, "carrier": "Orange",
             "user_properties": {"first_name": "Ana", "email": "Ana@Example.com"}, "ip": "203.0.113.7"}
    row, live = row_of(event)
    payload = remap_event(row, RULES).payload
    assert payload["identifiers"] == {"ext_id": "user_126", "email_id": "ana@example.com"}
    assert payload["contact_properties"] == {"FIRSTNAME": "Ana"}
    assert row.device_carrier == "Orange", "a column the mapping names (carrier) for the profile's property sources"
    assert orjson.loads(live.line)["ip_address"] == "203.0.113.7"
    assert live.operations is None


def test_an_unmapped_type_is_skipped_as_in_the_export():
    row, _ = row_of({"user_id": "user_127", "event_type": "Something Else", "time": 1})
    assert remap_event(row, RULES).reason == "unmapped"
