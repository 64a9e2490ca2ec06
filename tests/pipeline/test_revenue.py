"""Revenue detection in every spelling, the Brevo order body, and the `brevo_orders` fan-out consumer."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from amplitude_brevo.pipeline import remap as remap_module
from amplitude_brevo.pipeline.remap import Consumer, MappingRules, Rejected, SinkOutput, Skipped, row_mapper
from amplitude_brevo.pipeline.revenue import (
    ORDERS_NAMESPACE,
    ORDERS_SINK,
    Order,
    Revenue,
    order_body,
    remap_order,
    revenue_of,
    revenue_of_event,
)
from amplitude_brevo.pipeline.rows import ExportRow, row_decoder

RULES = MappingRules(event_mapping={"Purchase": "order_completed"}, property_mapping={"email": "email"})


def row(**fields: Any) -> ExportRow:
    data: dict[str, Any] = {
        "uuid": "uuid-1",
        "$insert_id": "order-88231-completed",
        "event_type": "Order Completed",
        "user_id": "cust-00042",
        "device_id": "device-1",
        "event_time": "2024-06-19 10:04:58.120000",
        "event_properties": {"order_id": "88231", "$price": 24.5, "$quantity": 2, "$revenue": 49.0,
                             "$productId": "sku-17", "$revenueType": "purchase"},
        "user_properties": {"email": "Ana@Example.com", "plan": "pro"},
    }
    data.update(fields)
    data = {k: v for k, v in data.items() if v is not None}
    return row_decoder.decode(orjson.dumps(data))


# -- detection --------------------------------------------------------------------------------------------------

def test_a_product_event_with_a_plain_price_is_not_revenue():
    # "Add to Cart" carries price, quantity and product_id: without `revenue` (or Amplitude's `$` keys) no order.
    assert revenue_of({"product_id": "sku-1", "price": 19.9, "quantity": 2, "currency": "EUR"}) is None
    assert revenue_of({"price": 19.9, "revenue": 39.8}) == Revenue(39.8, 19.9, 1)


@pytest.mark.parametrize(("props", "expected"), [
    # export rows: the reserved `$` keys
    ({"$price": 24.5, "$quantity": 2, "$revenue": 49.0, "$productId": "sku-17", "$revenueType": "purchase"},
     Revenue(49.0, 24.5, 2, "sku-17", "purchase")),
    # hand-made events: plain keys, product_id or productId
    ({"revenue": 89.99, "product_id": "SKU-001", "product_name": "Widget Pro"}, Revenue(89.99, None, 1, "SKU-001")),
    ({"revenue": 10, "productId": "p-2", "revenueType": "tip"}, Revenue(10.0, None, 1, "p-2", "tip")),
    # no revenue: price × quantity, quantity 1 by default, fractional quantities kept
    ({"$price": 24.5, "$quantity": 3}, Revenue(73.5, 24.5, 3)),
    ({"$price": 0.1, "$quantity": 3}, Revenue(0.3, 0.1, 3)),
    ({"$price": 19.9}, Revenue(19.9, 19.9, 1)),
    ({"$price": 4.0, "$quantity": 2.5}, Revenue(10.0, 4.0, 2.5)),
    # revenue wins over price × quantity when both are given
    ({"revenue": 45.0, "price": 24.5, "quantity": 2}, Revenue(45.0, 24.5, 2)),
    # numeric strings, integral float quantities
    ({"revenue": " 12.50 ", "quantity": "2.0", "productId": 17}, Revenue(12.5, None, 2, "17")),
    # refunds
    ({"$revenue": -49.0, "$productId": "sku-17"}, Revenue(-49.0, None, 1, "sku-17")),
    ({"$price": -5, "$quantity": 2}, Revenue(-10.0, -5.0, 2)),
    # a zero amount is still an order
    ({"revenue": 0}, Revenue(0.0)),
])
def test_revenue_in_every_spelling(props, expected):
    assert revenue_of(props) == expected


@pytest.mark.parametrize("props", [
    {},
    {"order_id": "1", "item_count": 2},
    {"quantity": 3, "productId": "x"},  # a quantity alone is no amount
    {"revenue": None, "price": None},
    {"revenue": ""},
    {"revenue": "free"},  # not a number: no revenue rather than a guessed amount
    {"revenue": 10, "quantity": "two"},
    {"price": [1, 2]},
    {"revenue": True},
    {"revenue": "NaN"},
    {"revenue": "1e400"},
])
def test_no_revenue(props):
    assert revenue_of(props) is None


def test_refund_is_a_negative_amount():
    assert Revenue(-1.0).refund and not Revenue(0.0).refund and not Revenue(3.0).refund


def test_http_v2_events_top_level_fields_first_then_event_properties():
    event = {"event_type": "Purchase", "price": 12.0, "quantity": 3, "productId": "sku-1", "revenueType": "sale",
             "event_properties": {"revenue": 99.0, "product_id": "other"}}
    assert revenue_of_event(event) == Revenue(99.0, 12.0, 3, "sku-1", "sale"), "per field: top level, else props"
    assert revenue_of_event({"revenue": 5, "event_properties": {"$revenue": 7}}) == Revenue(5.0)
    # The seed's HTTP V2 example: the revenue in event_properties.
    seed = {"user_id": "user_123", "event_type": "Purchase",
            "event_properties": {"revenue": 89.99, "product_id": "SKU-001", "product_name": "Widget Pro"}}
    assert revenue_of_event(seed) == Revenue(89.99, None, 1, "SKU-001")
    assert revenue_of_event({"event_type": "Page View", "event_properties": None}) is None
    assert revenue_of_event({"price": "x", "event_properties": {"revenue": 3}}) is None


# -- the order body ---------------------------------------------------------------------------------------------

def test_order_body_shape():
    body = order_body("k-1", "u1", "ana@example.org", "2026-11-01T10:23:45.123Z",
                      Revenue(49.0, 24.5, 2, "sku-17", "purchase"), "Purchase")
    assert type(body) is bytes and b" " not in body, "compact JSON"
    assert orjson.loads(body) == {
        "id": "k-1", "createdAt": "2026-11-01T10:23:45.123Z", "updatedAt": "2026-11-01T10:23:45.123Z",
        "status": "completed", "amount": 49.0,
        "products": [{"productId": "sku-17", "price": 24.5, "quantity": 2}],
        "identifiers": {"ext_id": "u1", "email_id": "ana@example.org"},
    }
    assert list(orjson.loads(body)) == ["id", "createdAt", "updatedAt", "status", "amount", "products",
                                       "identifiers"]


def test_order_body_without_product_price_or_email():
    order = orjson.loads(order_body("k", 77, None, "2026-11-01T10:23:45.123Z", Revenue(30.0, None, 4), "Purchase"))
    assert order["products"] == [{"productId": "Purchase", "price": 7.5, "quantity": 4}], \
        "the event type names the product; the unit price is amount ÷ quantity"
    assert order["identifiers"] == {"ext_id": "77"}
    assert orjson.loads(order_body("k", "u", None, "t", Revenue(10.0, None, 3), "P"))["products"][0]["price"] == 3.333333


def test_order_body_fractional_quantity_and_refund():
    order = orjson.loads(order_body("k", "u", None, "2026-11-01T10:23:45.123Z", Revenue(-10.0, 4.0, 2.5), "Refund"))
    assert order["status"] == "refunded" and order["amount"] == -10.0
    assert order["products"] == [{"productId": "Refund", "price": 4.0, "quantityFloat": 2.5}]
    zero = orjson.loads(order_body("k", "u", None, "t", Revenue(5.0, None, 0), "P"))
    assert zero["products"] == [{"productId": "P", "price": 5.0, "quantity": 0}]


# -- the consumer -----------------------------------------------------------------------------------------------

def test_export_row_becomes_an_order():
    result = remap_order(row(), RULES)
    assert isinstance(result, Order) and result.dedupe_key == "order-88231-completed"
    assert result.payload == {
        "id": "order-88231-completed", "createdAt": "2024-06-19T10:04:58.120Z",
        "updatedAt": "2024-06-19T10:04:58.120Z", "status": "completed", "amount": 49.0,
        "products": [{"productId": "sku-17", "price": 24.5, "quantity": 2}],
        "identifiers": {"ext_id": "cust-00042", "email_id": "ana@example.com"},
    }
    assert result == Order(result.dedupe_key, result.body) and "sku-17" in repr(result)


def test_hand_made_revenue_and_the_uuid_as_key():
    result = remap_order(row(**{"$insert_id": None, "event_type": "Purchase", "user_properties": {},
                                "event_properties": {"revenue": 89.99, "product_id": "SKU-001"}}), RULES)
    assert isinstance(result, Order) and result.dedupe_key == "uuid-1"
    assert result.payload["amount"] == 89.99 and result.payload["identifiers"] == {"ext_id": "cust-00042"}
    assert result.payload["products"] == [{"productId": "SKU-001", "price": 89.99, "quantity": 1}]


def test_rows_without_the_words_are_not_decoded():
    # Not even JSON: decoding it would raise (see the next test); the byte test passes it over first.
    undecodable = ExportRow(event_type="Page View", uuid="u", user_id="user-1",
                            event_time="2024-06-19 10:04:58.120000", event_properties=msgspec.Raw(b'{"amount": 4'))
    assert remap_order(undecodable, RULES) is None
    assert remap_order(row(event_properties={"amount": 49.0, "item": "x"}), RULES) is None


def test_undecodable_properties_naming_revenue_are_rejected():
    broken = ExportRow(event_type="Purchase", uuid="u", user_id="user-1", event_time="2024-06-19 10:04:58.120000",
                       event_properties=msgspec.Raw(b'{"revenue": 4'))
    result = remap_order(broken, RULES)
    assert isinstance(result, Rejected) and result.reason.startswith("event_properties cannot be decoded")


@pytest.mark.parametrize("props", [
    {"price_tier": "gold"},  # the word, but no amount
    {"revenue": "n/a"},
])
def test_rows_with_the_words_but_no_revenue_give_nothing(props):
    assert remap_order(row(event_properties=props), RULES) is None


def test_properties_that_are_not_an_object_give_nothing():
    assert remap_order(row(event_properties=["revenue", 3]), RULES) is None


def test_identity_time_and_key_problems():
    assert remap_order(row(user_id=None), RULES) == Skipped("anonymous")
    anonymous = MappingRules(RULES.event_mapping, {}, anonymous="use_device_id")
    assert remap_order(row(user_id=None), anonymous).payload["identifiers"] == {
        "ext_id": "device-1", "email_id": "ana@example.com"}
    assert isinstance(remap_order(row(user_id=None, device_id=None), anonymous), Rejected)
    no_key = remap_order(row(uuid=None, **{"$insert_id": None}), RULES)
    assert isinstance(no_key, Rejected) and "neither $insert_id nor uuid" in no_key.reason
    bad_time = remap_order(row(event_time="2024-13-45 99:00:00.000000"), RULES)
    assert isinstance(bad_time, Rejected) and "event_time" in bad_time.reason
    assert bad_time.item["uuid"] == "uuid-1", "the rejection carries the row summary"


def test_as_a_fan_out_consumer(monkeypatch):
    monkeypatch.setitem(remap_module.CONSUMERS, ORDERS_SINK, Consumer(ORDERS_SINK, ORDERS_NAMESPACE, remap_order))
    rules = MappingRules(RULES.event_mapping, {}, sinks=(ORDERS_SINK,))
    outputs = {ORDERS_SINK: SinkOutput()}
    skipped: dict[str, int] = {}
    bound = row_mapper(rules, outputs, skipped)
    rows = [row(), row(event_properties={"a": 1}), row(user_id=None, uuid="u2", **{"$insert_id": None})]
    assert [bound(r) for r in rows] == [None, None, None]
    assert outputs[ORDERS_SINK].keys == ["orders:order-88231-completed"]
    assert orjson.loads(outputs[ORDERS_SINK].bodies[0])["amount"] == 49.0
    assert skipped == {"anonymous": 1}
