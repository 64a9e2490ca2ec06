"""remap: one export row → a Brevo event, a skip or a rejection (SPEC §5), as tables."""

from __future__ import annotations

import copy
import sys
from typing import Any

import orjson
import pytest

from amplitude_brevo.pipeline import remap as remap_module
from amplitude_brevo.pipeline.remap import (
    EVENTS_NAMESPACE,
    EVENTS_SINK,
    MAX_EVENT_PROPERTIES_BYTES,
    BrevoEvent,
    Consumer,
    MappingRules,
    Rejected,
    SinkOutput,
    Skipped,
    brevo_key,
    clean_properties,
    contact_value,
    iso_utc,
    map_row,
    remap_event,
    row_mapper,
)
from amplitude_brevo.pipeline.rows import ExportRow, row_decoder

RULES = MappingRules(
    event_mapping={"Purchase": "order_completed", "Sign Up": "customer_created"},
    property_mapping={"email": "email", "first_name": "FIRSTNAME", "plan": "PLAN", "ltv": "LTV",
                      "orders": "ORDER_COUNT", "vip": "VIP", "interests": "INTERESTS", "ext": "EXT_ID",
                      "meta": "META"},
)


def row(**fields: Any) -> ExportRow:
    """A decoded export row: the usual fields, overridden by `fields` (None removes a field)."""
    data: dict[str, Any] = {
        "uuid": "uuid-1",
        "$insert_id": "insert-1",
        "event_type": "Purchase",
        "user_id": "user-1",
        "device_id": "device-1",
        "event_time": "2024-01-15 10:23:45.123000",
        "server_upload_time": "2024-01-15 10:23:46.000000",
        "event_properties": {"amount": 49.5},
        "user_properties": {"email": "Ana@Example.org"},
        "city": "Paris",  # a field the pipeline never reads
    }
    data.update(fields)
    data = {k: v for k, v in data.items() if v is not None}
    return row_decoder.decode(orjson.dumps(data))


def event(result: object) -> dict[str, Any]:
    assert isinstance(result, BrevoEvent), result
    return result.payload


# -- which rows are forwarded --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("fields", "rules", "expected"),
    [
        ({}, RULES, BrevoEvent),
        ({"event_type": "Sign Up"}, RULES, BrevoEvent),
        ({"event_type": "Page View"}, RULES, Skipped("unmapped")),
        ({"event_type": "purchase"}, RULES, Skipped("unmapped")),  # the mapping is exact, a whitelist
        ({"event_type": None}, RULES, Rejected),
        ({"user_id": None}, RULES, Skipped("anonymous")),
        ({"user_id": ""}, RULES, Skipped("anonymous")),
        ({"user_id": None}, MappingRules(RULES.event_mapping, {}, anonymous="use_device_id"), BrevoEvent),
        ({"user_id": None, "device_id": None}, MappingRules(RULES.event_mapping, {}, anonymous="use_device_id"),
         Rejected),
        ({"$insert_id": None, "uuid": None}, RULES, Rejected),
        ({"event_time": None}, RULES, Rejected),
        ({"event_time": "yesterday"}, RULES, Rejected),
        ({"event_time": "2024-13-45 99:99:99"}, RULES, Rejected),
        ({"event_properties": {"notes": "x" * MAX_EVENT_PROPERTIES_BYTES}}, RULES, Rejected),
    ],
    ids=["mapped", "mapped-2", "unmapped", "case-sensitive", "no-event-type", "anonymous", "empty-user-id",
         "device-id", "no-ids-at-all", "no-dedupe-key", "no-time", "bad-time", "impossible-time", "oversize"],
)
def test_outcome(fields, rules, expected):
    result = remap_event(row(**fields), rules)
    if isinstance(expected, type):
        assert isinstance(result, expected), result
    else:
        assert result == expected


def test_unmapped_rows_are_skipped_before_their_properties_are_read():
    broken = row_decoder.decode(b'{"uuid": "u", "event_type": "Page View", "event_properties": [1, 2]}')
    assert remap_event(broken, RULES) == Skipped("unmapped")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event_type": None}, "no event_type"),
        ({"$insert_id": None, "uuid": None}, "neither $insert_id nor uuid"),
        ({"event_time": "2024-02-30 10:00:00"}, "unparseable event_time '2024-02-30 10:00:00'"),
        ({"event_properties": {"notes": "x" * 60_000}}, "over Brevo's 50 KB limit"),
    ],
)
def test_rejections_say_why_and_carry_the_row_ids(fields, reason):
    result = remap_event(row(**fields), RULES)
    assert isinstance(result, Rejected)
    assert reason in result.reason
    assert result.item["uuid"] == fields.get("uuid", "uuid-1")
    assert "event_properties" not in result.item  # the summary, not the (maybe huge) row


def test_oversize_limit_counts_the_final_properties():
    # Just under the limit once the two amplitude_* keys are added: forwarded; one more byte: rejected.
    base = {"amplitude_event_type": "Purchase", "amplitude_insert_id": "insert-1", "notes": ""}
    room = MAX_EVENT_PROPERTIES_BYTES - len(orjson.dumps(base))
    assert isinstance(remap_event(row(event_properties={"notes": "x" * room}), RULES), BrevoEvent)
    rejected = remap_event(row(event_properties={"notes": "x" * (room + 1)}), RULES)
    assert isinstance(rejected, Rejected)
    assert rejected.item["event_properties_bytes"] == MAX_EVENT_PROPERTIES_BYTES + 1


# -- dedupe key ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("insert_id", "uuid", "key"),
    [("insert-1", "uuid-1", "insert-1"), (None, "uuid-1", "uuid-1"), ("", "uuid-1", "uuid-1")],
)
def test_dedupe_key_is_insert_id_else_uuid(insert_id, uuid, key):
    result = remap_event(row(**{"$insert_id": insert_id, "uuid": uuid}), RULES)
    assert isinstance(result, BrevoEvent)
    assert result.dedupe_key == key
    assert result.payload["event_properties"]["amplitude_insert_id"] == key


# -- event_date ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2024-01-15 10:23:45.123000", "2024-01-15T10:23:45.123Z"),  # the export format: UTC, no zone
        ("2024-01-15 10:23:45.123999", "2024-01-15T10:23:45.123Z"),  # truncated to ms, never rounded up
        ("2024-01-15 10:23:45", "2024-01-15T10:23:45.000Z"),
        ("2024-01-15 10:23:45.5", "2024-01-15T10:23:45.500Z"),
        ("2024-01-15T10:23:45.123Z", "2024-01-15T10:23:45.123Z"),
        ("2024-01-15T10:23:45Z", "2024-01-15T10:23:45.000Z"),
        ("2024-01-15T10:23:45.123+02:00", "2024-01-15T08:23:45.123Z"),
        ("2024-01-15T01:23:45-05:30", "2024-01-15T06:53:45.000Z"),
        ("2024-12-31T23:30:00-01:00", "2025-01-01T00:30:00.000Z"),  # an offset can change the day
        ("  2024-01-15 10:23:45.123000 ", "2024-01-15T10:23:45.123Z"),
        ("", None),
        (None, None),
        ("not a date", None),
        ("2024-13-01 10:00:00", None),
        ("2024-01-15 25:00:00", None),
        ("2024-01-15 10:23:4x", None),
        ("2024-01-15 10:23:45.12a000", None),
    ],
)
def test_iso_utc(text, iso):
    assert iso_utc(text) == iso


def test_event_payload_has_name_date_identifiers_and_properties():
    payload = event(remap_event(row(), RULES))
    assert payload["event_name"] == "order_completed"
    assert payload["event_date"] == "2024-01-15T10:23:45.123Z"
    assert payload["identifiers"] == {"ext_id": "user-1", "email_id": "ana@example.org"}
    assert payload["event_properties"] == {
        "amount": 49.5, "amplitude_event_type": "Purchase", "amplitude_insert_id": "insert-1",
    }


# -- identifiers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("fields", "rules", "identifiers"),
    [
        ({}, RULES, {"ext_id": "user-1", "email_id": "ana@example.org"}),
        ({"user_properties": {"email": "  BOB@EXAMPLE.COM "}}, RULES, {"ext_id": "user-1", "email_id": "bob@example.com"}),
        ({"user_properties": {"email": "not-an-email"}}, RULES, {"ext_id": "user-1"}),
        ({"user_properties": {"email": "a@b"}}, RULES, {"ext_id": "user-1"}),
        ({"user_properties": {"email": 42}}, RULES, {"ext_id": "user-1"}),
        ({"user_properties": {}}, RULES, {"ext_id": "user-1"}),
        ({"user_properties": None}, RULES, {"ext_id": "user-1"}),
        ({"user_properties": {"mail": "c@example.com"}},
         MappingRules(RULES.event_mapping, {}, email_property="mail"), {"ext_id": "user-1", "email_id": "c@example.com"}),
        ({"user_id": None}, MappingRules(RULES.event_mapping, {}, anonymous="use_device_id"),
         {"ext_id": "device-1", "email_id": "ana@example.org"}),
        ({"user_properties": {"crm_id": 77}}, MappingRules(RULES.event_mapping, {}, ext_id_field="crm_id"),
         {"ext_id": "77"}),
    ],
    ids=["user-id-and-email", "email-lowercased", "invalid-email", "email-without-dot", "email-not-text",
         "no-email", "null-user-properties", "other-email-property", "device-id", "ext-id-from-property"],
)
def test_identifiers(fields, rules, identifiers):
    assert event(remap_event(row(**fields), rules))["identifiers"] == identifiers


# -- event_properties keys ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("props", "cleaned"),
    [
        ({"plain_key-1": 1}, {"plain_key-1": 1}),
        ({"utm.source": "x", "page title": "y", "%": 1}, {"utm_source": "x", "page_title": "y", "_": 1}),
        ({"": 1}, {"_": 1}),
        ({"caf\u00e9": 1}, {"caf_": 1}),
        ({"k" * 300: 1}, {"k" * 255: 1}),
        ({"cart": {"item id": 1, "nested": {"a.b": 2}}}, {"cart": {"item_id": 1, "nested": {"a_b": 2}}}),
        ({"items": [{"sku id": "A1"}, "plain", 3]}, {"items": [{"sku_id": "A1"}, "plain", 3]}),
        # Collisions: a valid key keeps its name and value; the rewritten one gets a suffix.
        ({"utm.source": "dotted", "utm_source": "plain"}, {"utm_source_2": "dotted", "utm_source": "plain"}),
        ({"utm_source": "plain", "utm.source": "dotted"}, {"utm_source": "plain", "utm_source_2": "dotted"}),
        ({"a b": 1, "a.b": 2, "a_b": 3}, {"a_b_2": 1, "a_b_3": 2, "a_b": 3}),
        ({"a b": 1, "a_b_2": 2, "a_b": 3}, {"a_b_3": 1, "a_b_2": 2, "a_b": 3}),
        ({"x y": 1, "x.y": 2}, {"x_y": 1, "x_y_2": 2}),
    ],
    ids=["valid", "rewritten", "empty", "non-ascii", "too-long", "nested", "list-of-objects",
         "collision-valid-second", "collision-valid-first", "collision-three", "collision-suffix-taken",
         "collision-both-rewritten"],
)
def test_clean_properties(props, cleaned):
    before = copy.deepcopy(props)
    out = clean_properties(props)
    assert out == cleaned
    assert len(out) == len(props), "no value is lost"
    assert props == before, "the input is left as it was"
    assert clean_properties(props) == cleaned, "the same again from the memo"


@pytest.mark.parametrize(("key", "clean"), [("ok_KEY-9", "ok_KEY-9"), ("a/b c", "a_b_c"), ("", "_")])
def test_brevo_key(key, clean):
    assert brevo_key(key) == clean


def test_amplitude_keys_are_added_to_the_cleaned_properties():
    props = event(remap_event(row(event_properties={"order id": "A-1", "$revenue": 9.5}), RULES))["event_properties"]
    assert props == {"order_id": "A-1", "_revenue": 9.5, "amplitude_event_type": "Purchase",
                     "amplitude_insert_id": "insert-1"}


def test_non_object_event_properties_become_empty():
    props = event(remap_event(row(event_properties=["not", "an", "object"]), RULES))["event_properties"]
    assert props == {"amplitude_event_type": "Purchase", "amplitude_insert_id": "insert-1"}


# -- contact_properties -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("user_properties", "contact"),
    [
        ({"email": "ana@example.org", "first_name": "Ana", "plan": "pro"}, {"FIRSTNAME": "Ana", "PLAN": "pro"}),
        ({"ltv": 1103.4}, {"LTV": "1103.4"}),
        ({"ltv": 12.0}, {"LTV": 12}),
        ({"ltv": 0.0}, {"LTV": 0}),
        ({"ltv": 1e20}, {"LTV": "1e+20"}),
        ({"orders": 15}, {"ORDER_COUNT": 15}),
        ({"vip": True}, {"VIP": "true"}),
        ({"vip": False}, {"VIP": "false"}),
        ({"interests": ["chess", "music"]}, {"INTERESTS": "chess,music"}),
        ({"interests": ["a", True, 2.5, 3.0, None]}, {"INTERESTS": "a,true,2.5,3"}),
        ({"interests": []}, {"INTERESTS": ""}),
        ({"meta": {"b": 1}}, {"META": '{"b":1}'}),
        ({"first_name": None}, None),
        ({"unmapped": "x"}, None),
        ({"ext": "crm-1"}, None),  # EXT_ID is identity, carried in `identifiers`
        ({}, None),
    ],
    ids=["text", "float", "integral-float", "zero-float", "huge-float", "int", "true", "false", "list",
         "mixed-list", "empty-list", "object", "null", "unmapped", "identity-attribute", "none"],
)
def test_contact_properties(user_properties, contact):
    payload = event(remap_event(row(user_properties=user_properties), RULES))
    assert payload.get("contact_properties") == contact
    for value in (contact or {}).values():
        assert isinstance(value, str | int) and not isinstance(value, bool)


@pytest.mark.parametrize(
    ("value", "converted"),
    [(None, None), ("x", "x"), (3, 3), (2.5, "2.5"), (2.0, 2), (True, "true"), (False, "false"),
     (["a", 1], "a,1"), ({"k": [1]}, '{"k":[1]}')],
)
def test_contact_value(value, converted):
    assert contact_value(value) == converted


# -- the encoded body -----------------------------------------------------------------------------------------

def test_event_body_is_the_payload_as_compact_json_of_exact_size():
    result = remap_event(row(event_properties={"order id": "A-1", "cart": {"item id": 1}},
                             user_properties={"email": "a@b.co", "plan": "pro"}), RULES)
    assert isinstance(result, BrevoEvent)
    assert type(result.body) is bytes
    assert result.body == orjson.dumps(result.payload), "compact JSON, keys in payload order"
    assert list(result.payload) == ["event_name", "event_date", "identifiers", "contact_properties",
                                    "event_properties"]
    assert sys.getsizeof(result.body) < len(result.body) + 64, "not orjson's over-allocated buffer"


def test_brevo_event_from_a_dict_equals_the_same_bytes():
    payload = {"event_name": "x", "identifiers": {"ext_id": "u"}}
    from_dict = BrevoEvent("k", payload)
    assert from_dict.body == orjson.dumps(payload)
    assert from_dict == BrevoEvent("k", orjson.dumps(payload))
    assert from_dict != BrevoEvent("other", payload)
    assert from_dict.payload == payload
    assert sys.getsizeof(from_dict.body) < len(from_dict.body) + 64


def test_repeated_people_with_equal_but_differently_typed_values_stay_apart():
    # 1, 1.0 and true are equal in Python but convert differently: the memo must not mix them up.
    rules = MappingRules(RULES.event_mapping, {"vip": "VIP", "ltv": "LTV"})
    for value, contact in [(1, 1), (True, "true"), (1.0, 1), (1, 1), (False, "false"), (0.0, 0), (True, "true")]:
        payload = event(remap_event(row(user_properties={"vip": value, "ltv": value}), rules))
        assert payload["contact_properties"] == {"VIP": contact, "LTV": contact}, value


def test_ext_id_from_an_unhashable_user_property():
    rules = MappingRules(RULES.event_mapping, {}, ext_id_field="crm_id")
    for _ in range(2):  # the second time from the memo
        assert event(remap_event(row(user_properties={"crm_id": [1, 2]}), rules))["identifiers"] == {"ext_id": "[1, 2]"}
        assert event(remap_event(row(user_properties={"crm_id": 1}), rules))["identifiers"] == {"ext_id": "1"}
        assert event(remap_event(row(user_properties={"crm_id": True}), rules))["identifiers"] == {"ext_id": "True"}


def test_memoized_key_cleaning_matches_clean_properties():
    from amplitude_brevo.pipeline.remap import _cleaned

    cases = [
        ({"a b": 1, "a.b": 2, "a_b": 3}, {"a_b_2": 1, "a_b_3": 2, "a_b": 3}),
        # a dict directly in a list is cleaned; one in a list in a list is left as it is
        ({"x": {"y z": [{"p q": 1}, [{"r s": 2}]]}, "x y": 1}, {"x": {"y_z": [{"p_q": 1}, [{"r s": 2}]]}, "x_y": 1}),
        ({"ok": 1, "items": [{"sku id": "A"}, 3]}, {"ok": 1, "items": [{"sku_id": "A"}, 3]}),
        ({}, {}),
    ]
    for props, expected in cases * 2:  # the second round from the memo
        assert _cleaned(orjson.loads(orjson.dumps(props)), True) == expected
        assert clean_properties(props) == expected


@pytest.mark.parametrize(
    "text",
    ["2024-01-15 10:23:45.123456", "2024-01-15 10:23:45.123+01", "2024-01-15 10:23:45.12345Z",
     "2024-01-15 10:23:45.12345 ", " 2024-01-15 10:23:45.12345", "2024-W03-1 10:23:45.123456",
     "2024-01-15 10:23:45.1234567", "2024-02-29 23:59:59.999999", "2023-02-29 23:59:59.999999",
     "2024-01-15 24:00:00.000000", "2024-01-15 10:23:45.12３456", "0001-01-01 00:00:00.000000"],
)
def test_iso_utc_fast_path_agrees_with_the_general_one(text):
    from amplitude_brevo.pipeline.remap import _iso_utc

    assert iso_utc(text) == _iso_utc(text)


# -- values the decoder skipped, which only re-encoding meets -----------------------------------------------

@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"uuid":"u","event_type":"Purchase","user_id":"x","event_time":"2024-01-15 10:23:45.123000",'
         b'"event_properties":{"note":"caf\xe9"}}', "event_properties cannot be re-encoded"),
        (b'{"uuid":"u","event_type":"Purchase","user_id":"x","event_time":"2024-01-15 10:23:45.123000",'
         b'"event_properties":{"n":123456789012345678901234567890}}', "event_properties cannot be re-encoded"),
        (b'{"uuid":"u","event_type":"Purchase","user_id":"x","event_time":"2024-01-15 10:23:45.123000",'
         b'"user_properties":{"email":"\xff@example.org"}}', "user_properties cannot be decoded"),
        (b'{"uuid":"u","event_type":"Purchase","user_id":"x","event_time":"2024-01-15 10:23:45.123000",'
         b'"user_properties":{"ltv":123456789012345678901234567890}}', "user_properties cannot be re-encoded"),
    ],
    ids=["props-not-utf8", "props-huge-int", "user-not-utf8", "user-huge-int"],
)
def test_values_that_cannot_be_re_encoded_are_rejected_not_raised(line, reason):
    result = remap_event(row_decoder.decode(line), RULES)  # the row itself decodes: these are inner values
    assert isinstance(result, Rejected), result
    assert reason in result.reason
    assert result.item["uuid"] == "u"


# -- fan-out: every enabled consumer, on the row decoded once --------------------------------------------------

PROFILES = "test_profiles"  # a stand-in for the next consumer (contacts): every row with a user id, mapped or not


def profiles(row: ExportRow, rules: MappingRules) -> Any:
    if not row.user_id:
        return None  # not for this consumer: nothing counted
    if row.user_id == "bad":
        return Rejected("profiles: bad user", {"user_id": row.user_id})
    if row.user_id == "skip":
        return Skipped("profiles.skipped")
    return BrevoEvent(None, b'{"ext_id":' + orjson.dumps(row.user_id) + b"}")  # type: ignore[arg-type]


@pytest.fixture
def two_consumers(monkeypatch):
    seen: list[tuple[str, int]] = []

    def watch(name, remap):
        def consumer(row, rules):
            seen.append((name, id(row)))
            return remap(row, rules)
        return consumer

    monkeypatch.setitem(remap_module.CONSUMERS, EVENTS_SINK,
                        Consumer(EVENTS_SINK, EVENTS_NAMESPACE, watch("events", remap_event)))
    monkeypatch.setitem(remap_module.CONSUMERS, PROFILES, Consumer(PROFILES, None, watch("profiles", profiles)))
    rules = MappingRules(RULES.event_mapping, RULES.property_mapping, sinks=(EVENTS_SINK, PROFILES))
    return rules, seen


def fan_out(rows: list[ExportRow], rules: MappingRules, general: bool = False):
    outputs = {name: SinkOutput() for name in rules.sinks}
    skipped: dict[str, int] = {}
    if general:
        ordered = [outputs[name] for name in rules.sinks]
        rejections = [map_row(r, rules, ordered, skipped) for r in rows]
    else:
        bound = row_mapper(rules, outputs, skipped)
        rejections = [bound(r) for r in rows]
    return outputs, skipped, rejections


def test_one_row_feeds_every_consumer_from_one_decode(two_consumers):
    rules, seen = two_consumers
    rows = [row(), row(event_type="Page View"), row(user_id=None, **{"$insert_id": "anon"}), row(user_id="skip")]
    outputs, skipped, rejections = fan_out(rows, rules)
    assert [name for name, _ in seen] == ["events", "profiles"] * 4
    assert [i for _, i in seen[::2]] == [i for _, i in seen[1::2]], "both consumers get the same decoded row"
    events, people = outputs[EVENTS_SINK], outputs[PROFILES]
    assert events.keys == ["events:insert-1", "events:insert-1"] and len(events.bodies) == 2
    assert events.bodies[0] == remap_event(rows[0], RULES).body  # type: ignore[union-attr]
    # The unmapped "Page View" still reaches the profile consumer; its outputs carry no dedupe key.
    assert people.keys == [None, None] and people.bodies == [b'{"ext_id":"user-1"}'] * 2
    assert skipped == {"unmapped": 1, "anonymous": 1, "profiles.skipped": 1}, \
        "events' skips are counted as they always were, each consumer's under its own reason"
    assert rejections == [None] * 4


def test_a_row_rejected_by_several_consumers_is_one_rejection_the_first_ones(two_consumers):
    rules, _ = two_consumers
    rows = [row(user_id="bad", event_time="yesterday"), row(user_id="bad"), row(event_time="yesterday"),
            row(user_id="skip", event_type="Page View")]
    outputs, skipped, rejections = fan_out(rows, rules)
    assert [r.reason if r else None for r in rejections] == [
        "unparseable event_time 'yesterday'", "profiles: bad user", "unparseable event_time 'yesterday'", None]
    assert outputs[EVENTS_SINK].keys == ["events:insert-1"], "rejected by profiles only: still an event"
    assert outputs[PROFILES].bodies == [b'{"ext_id":"user-1"}'], "rejected by events only: still a profile"
    assert skipped == {"unmapped": 1, "profiles.skipped": 1}


@pytest.mark.parametrize("sinks", [(EVENTS_SINK,), ()])
def test_the_bound_row_mapper_does_what_map_row_does(sinks):
    rules = MappingRules(RULES.event_mapping, RULES.property_mapping, sinks=sinks)
    rows = [row(), row(event_type="Page View"), row(user_id=None), row(event_type=None),
            row(**{"$insert_id": "other"}), row(event_properties={"notes": "x" * 60_000})]
    fast, general = fan_out(rows, rules), fan_out(rows, rules, general=True)
    assert fast == general
    if sinks:
        outputs, skipped, rejections = fast
        assert outputs[EVENTS_SINK].keys == ["events:insert-1", "events:other"]
        assert skipped == {"unmapped": 1, "anonymous": 1} and sum(r is not None for r in rejections) == 2
    else:
        assert fast == ({}, {}, [None] * len(rows)), "no consumer enabled: rows are only counted"


def test_sinks_name_known_consumers_once():
    with pytest.raises(ValueError, match="sinks"):
        MappingRules(RULES.event_mapping, {}, sinks=("brevo_nowhere",))
    with pytest.raises(ValueError, match="sinks"):
        MappingRules(RULES.event_mapping, {}, sinks=(EVENTS_SINK, EVENTS_SINK))


@pytest.mark.parametrize(("sync_events", "mapping", "sinks"), [
    (True, {"Purchase": "order_completed"}, (EVENTS_SINK,)),
    (False, {"Purchase": "order_completed"}, ()),
    (True, {}, ()),
])
def test_from_config_enables_the_events_consumer_when_events_are_synced_and_mapped(sync_events, mapping, sinks):
    from amplitude_brevo.config import parse_config

    cfg = parse_config({
        "connectors": {"amplitude": {"api_key": "k", "secret_key": "s"}, "brevo": {"api_key": "xkeysib-k"}},
        "sync": {"events": sync_events, "revenue": False}, "event_mapping": mapping,
    })
    assert MappingRules.from_config(cfg).sinks == sinks


@pytest.mark.parametrize(("sync", "revenue", "properties", "sinks", "counts"), [
    ({}, {}, {}, (EVENTS_SINK, "brevo_orders"), False),
    ({}, {}, {"first_name": "FIRSTNAME"}, (EVENTS_SINK, "brevo_orders", "profiles"), False),
    ({"user_properties": False}, {}, {"first_name": "FIRSTNAME"}, (EVENTS_SINK, "brevo_orders"), False),
    ({}, {"orders": False, "ltv_attribute": "AMP_LTV"}, {}, (EVENTS_SINK, "profiles"), True),
    ({"revenue": False}, {"ltv_attribute": "AMP_LTV"}, {}, (EVENTS_SINK,), False),
])
def test_from_config_enables_orders_and_profiles(sync, revenue, properties, sinks, counts):
    from amplitude_brevo.config import parse_config

    cfg = parse_config({
        "connectors": {"amplitude": {"api_key": "k", "secret_key": "s"}, "brevo": {"api_key": "xkeysib-k"}},
        "sync": sync, "revenue": revenue, "property_mapping": properties,
        "event_mapping": {"Purchase": "order_completed"},
    })
    rules = MappingRules.from_config(cfg)
    assert rules.sinks == sinks
    assert rules.count_revenue is counts
