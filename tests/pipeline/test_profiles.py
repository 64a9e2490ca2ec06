"""The profile collector: the newest row per user of a chunk, decoded once, with its property sources."""

from __future__ import annotations

from typing import Any

import orjson

from amplitude_brevo.pipeline.remap import PROFILES_SINK, MappingRules, SinkOutput, row_mapper

RULES = MappingRules(
    event_mapping={}, sinks=(PROFILES_SINK,),
    property_mapping={"email": "email", "first_name": "FIRSTNAME", "device_type": "DEVICE",
                      "last_active": "LAST_ACTIVE", "carrier": "CARRIER"},
)


def line(**fields: Any) -> bytes:
    data: dict[str, Any] = {
        "uuid": "u-1", "$insert_id": "i-1", "event_type": "Page View", "user_id": "user-1",
        "event_time": "2024-01-15 10:00:00.000000", "server_upload_time": "2024-01-15 10:00:01.000000",
        "user_properties": {"email": "Ana@Example.org", "first_name": "Ana"},
    }
    data.update(fields)
    return orjson.dumps({k: v for k, v in data.items() if v is not None})


def collect(lines: list[bytes], rules: MappingRules = RULES) -> tuple[list[dict[str, Any]], dict[str, int]]:
    outputs = {PROFILES_SINK: SinkOutput()}
    skipped: dict[str, int] = {}
    mapper = row_mapper(rules, outputs, skipped)
    for raw in lines:
        assert mapper(rules.row_decoder.decode(raw)) is None
    mapper.finish()
    out = outputs[PROFILES_SINK]
    assert out.keys == [None] * len(out.bodies), "profile writes are idempotent: no dedupe keys"
    return [orjson.loads(b) for b in out.bodies], skipped


def test_the_newest_row_per_user_wins_whatever_the_order_rows_come_in():
    snapshots, _ = collect([
        line(event_time="2024-01-15 10:30:00.000000", user_properties={"first_name": "Newest"}),
        line(event_time="2024-01-15 09:00:00.000000", user_properties={"first_name": "Oldest"}),
        line(event_time="2024-01-15 10:00:00.000000", user_properties={"first_name": "Middle"}),
        line(user_id="user-2", user_properties={"first_name": "Bo", "email": "bo@example.org"}),
    ])
    by_user = {s["u"]: s for s in snapshots}
    assert set(by_user) == {"user-1", "user-2"}
    ana = by_user["user-1"]
    assert ana["p"]["first_name"] == "Newest"
    assert ana["t"] == "2024-01-15T10:30:00.000Z"
    assert ana["f"] == "2024-01-15T09:00:00.000Z" and ana["l"] == "2024-01-15T10:30:00.000Z"
    assert ana["e"] is None, "the newest row carries no email here"
    assert by_user["user-2"]["e"] == "bo@example.org"


def test_equal_event_times_go_to_the_later_upload():
    snapshots, _ = collect([
        line(server_upload_time="2024-01-15 11:00:00.000000", user_properties={"first_name": "Later"}),
        line(server_upload_time="2024-01-15 10:30:00.000000", user_properties={"first_name": "Earlier"}),
    ])
    assert [s["p"]["first_name"] for s in snapshots] == ["Later"]


def test_a_top_level_column_fills_a_key_no_user_property_has():
    snapshots, _ = collect([line(device_type="Apple iPhone 15", device_carrier="Orange")])
    assert snapshots[0]["p"]["device_type"] == "Apple iPhone 15"
    assert snapshots[0]["p"]["carrier"] == "Orange", "carrier is the export's device_carrier"
    # a user property of that name wins over the column
    snapshots, _ = collect([line(device_type="column", user_properties={"device_type": "property"})])
    assert snapshots[0]["p"]["device_type"] == "property"


def test_rows_of_nobody_are_counted_and_make_no_profile():
    snapshots, skipped = collect([line(user_id=None), line(user_id=None, uuid="u-2")])
    assert snapshots == [] and skipped == {"no_identity": 2}
    rules = MappingRules(event_mapping={}, property_mapping=RULES.property_mapping, sinks=(PROFILES_SINK,),
                         anonymous="use_device_id")
    snapshots, skipped = collect([line(user_id=None, device_id="dev-9")], rules)
    assert [s["u"] for s in snapshots] == ["dev-9"] and skipped == {}


def test_every_row_feeds_profiles_whatever_its_event_type_and_the_events_consumer_still_maps():
    rules = MappingRules(event_mapping={"Purchase": "order_completed"}, property_mapping=RULES.property_mapping,
                         sinks=("brevo_events", PROFILES_SINK))
    outputs = {"brevo_events": SinkOutput(), PROFILES_SINK: SinkOutput()}
    mapper = row_mapper(rules, outputs, {})
    for raw in (line(event_type="Purchase"), line(event_type="Unmapped", uuid="u-2", user_id="user-2")):
        mapper(rules.row_decoder.decode(raw))
    mapper.finish()
    assert len(outputs["brevo_events"].bodies) == 1
    assert sorted(orjson.loads(b)["u"] for b in outputs[PROFILES_SINK].bodies) == ["user-1", "user-2"]


def test_an_email_property_that_is_no_email_is_flagged_for_a_warning_and_left_out():
    snapshots, _ = collect([line(user_properties={"email": "fatima.silva@@acme.io", "first_name": "F"})])
    assert snapshots[0]["e"] is None and snapshots[0]["x"] == "fatima.silva@@acme.io"
    snapshots, _ = collect([line()])
    assert "x" not in snapshots[0]


def test_revenue_rows_become_facts_decoded_once_for_orders_and_profiles(monkeypatch):
    from amplitude_brevo.pipeline import revenue as revenue_module

    decoded = []
    real = revenue_module._decode_dict
    monkeypatch.setattr(revenue_module, "_decode_dict", lambda raw: decoded.append(raw) or real(raw))
    rules = MappingRules(event_mapping={}, property_mapping=RULES.property_mapping,
                         sinks=("brevo_orders", PROFILES_SINK), count_revenue=True)
    outputs = {"brevo_orders": SinkOutput(), PROFILES_SINK: SinkOutput()}
    mapper = row_mapper(rules, outputs, {})
    for raw in (line(event_properties={"$revenue": 49.0, "$productId": "sku-1"}),
                line(uuid="u-2", **{"$insert_id": "i-2"}, event_properties={"$price": -5, "$quantity": 2}),
                line(uuid="u-3", **{"$insert_id": "i-3"}, event_properties={"price": 9, "quantity": 1})):
        mapper(rules.row_decoder.decode(raw))
    mapper.finish()
    facts = [orjson.loads(b) for b in outputs[PROFILES_SINK].bodies if b"\"r\"" in b]
    assert [(f["k"], f["a"]) for f in facts] == [("i-1", 49.0), ("i-2", -10.0)], "a cart's price is no revenue"
    assert len(outputs["brevo_orders"].bodies) == 2
    assert len(decoded) == 3, "each row's properties decoded once, for both consumers"
