"""Amplitude's request validation and answer bodies, table by table (reference/amplitude-api.md §2-§5)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from amplitude_brevo.ingest import protocol
from amplitude_brevo.ingest.api_keys import KeyRing, fingerprint
from amplitude_brevo.ingest.protocol import Accepted, Answer

KEY = "amp-key-ingest-0001"
KEYS = KeyRing([KEY, "amp-key-ingest-rotated"])


def event(**fields: Any) -> dict[str, Any]:
    return {"event_type": "Purchase", "user_id": "cust-00042", "time": 1764686400123, **fields}


def request(*events: dict[str, Any], **top: Any) -> bytes:
    return orjson.dumps({"api_key": KEY, "events": list(events), **top})


def parse(body: bytes) -> Accepted | Answer:
    return protocol.parse_events(body, KEYS)


def answer_of(body: bytes) -> Answer:
    result = parse(body)
    assert isinstance(result, Answer), result
    return result


# ---------------------------------------------------------------------- request-level


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (b"", 400, {"code": 400, "error": "Missing request body"}),
        (b"  \n", 400, {"code": 400, "error": "Missing request body"}),
        (b"{not json", 400, {"code": 400, "error": "Invalid JSON request body"}),
        (b"[1, 2]", 400, {"code": 400, "error": "Invalid JSON request body"}),
        (orjson.dumps({"events": [event()]}), 400,
         {"code": 400, "error": "Request missing required field", "missing_field": "api_key"}),
        (orjson.dumps({"api_key": "", "events": [event()]}), 400,
         {"code": 400, "error": "Request missing required field", "missing_field": "api_key"}),
        (orjson.dumps({"api_key": KEY}), 400,
         {"code": 400, "error": "Request missing required field", "missing_field": "events"}),
        (orjson.dumps({"api_key": KEY, "events": []}), 400,
         {"code": 400, "error": "Request missing required field", "missing_field": "events"}),
        (orjson.dumps({"api_key": KEY, "events": {"a": 1}}), 400, {"code": 400, "error": "Invalid event JSON"}),
        (request(*[event()] * 2001), 413, {"code": 413, "error": "Payload too large"}),
        (request(event(), options={"min_id_length": 0}), 400, {"code": 400, "error": "Invalid JSON request body"}),
        (request(event(), options=[1]), 400, {"code": 400, "error": "Invalid JSON request body"}),
    ],
    ids=["empty", "blank", "bad-json", "not-object", "no-key", "empty-key", "no-events", "empty-events",
         "events-not-list", "2001-events", "min-id-length-0", "options-not-object"],
)
def test_request_level_answers(body: bytes, status: int, expected: dict[str, Any]) -> None:
    answer = answer_of(body)
    assert (answer.status, answer.body) == (status, expected)


def test_an_unknown_key_gets_the_answer_the_sdk_matches_and_never_its_value() -> None:
    answer = answer_of(orjson.dumps({"api_key": "someone-elses-key", "events": [event()]}))
    assert answer.status == 400
    assert isinstance(answer.body, dict)
    # amplitude/processor.py: `res.error.startswith("Invalid API key:")` raises InvalidAPIKeyError.
    assert answer.body["error"].startswith("Invalid API key:")
    assert fingerprint("someone-elses-key") in answer.body["error"]
    assert "someone-elses-key" not in orjson.dumps(answer.body).decode()
    assert "missing_field" not in answer.body


def test_every_configured_key_is_accepted_and_no_key_when_none_is_configured() -> None:
    assert isinstance(protocol.parse_events(request(event()), KEYS), Accepted)
    rotated = orjson.dumps({"api_key": "amp-key-ingest-rotated", "events": [event()]})
    assert isinstance(protocol.parse_events(rotated, KEYS), Accepted)
    assert isinstance(protocol.parse_events(request(event()), KeyRing([])), Answer)


def test_2000_events_are_accepted() -> None:
    result = parse(request(*[event(insert_id=f"i{n}") for n in range(2000)]))
    assert isinstance(result, Accepted) and len(result.items) == 2000


# ---------------------------------------------------------------------- event-level

INVALID = "Invalid field values on some events"
MISSING = "Request missing required field"


@pytest.mark.parametrize(
    ("bad_event", "error", "fields"),
    [
        ({"user_id": "cust-00042"}, MISSING, {"events_with_missing_fields": {"event_type": [1]}}),
        (event(event_type=""), MISSING, {"events_with_missing_fields": {"event_type": [1]}}),
        ({"event_type": "Purchase"}, MISSING, {"events_with_missing_fields": {"user_id": [1]}}),
        (event(user_id=None), MISSING, {"events_with_missing_fields": {"user_id": [1]}}),
        (event(time="2026-12-02T10:00:00Z"), INVALID, {"events_with_invalid_fields": {"time": [1]}}),
        (event(time=1764686400123.5), INVALID, {"events_with_invalid_fields": {"time": [1]}}),
        (event(time=True), INVALID, {"events_with_invalid_fields": {"time": [1]}}),
        (event(time=2**63), INVALID, {"events_with_invalid_fields": {"time": [1]}}),
        (event(user_id="abc"), INVALID, {"events_with_invalid_id_lengths": {"user_id": [1]}}),
        (event(user_id="abc", device_id="dev"), INVALID,
         {"events_with_invalid_id_lengths": {"user_id": [1], "device_id": [1]}}),
        (event(user_id="null"), INVALID, {"events_with_invalid_fields": {"user_id": [1]}}),
        (event(user_id="Anonymous"), INVALID, {"events_with_invalid_fields": {"user_id": [1]}}),
        (event(user_id=""), INVALID, {"events_with_invalid_fields": {"user_id": [1]}}),
        (event(device_id="00000000-0000-0000-0000-000000000000"), INVALID,
         {"events_with_invalid_fields": {"device_id": [1]}}),
        (event(user_id="-1", device_id="dev-aaaa1"), INVALID, {"events_with_invalid_fields": {"user_id": [1]}}),
        (event(user_id=12345), INVALID, {"events_with_invalid_fields": {"user_id": [1]}}),
        (event(event_type=7), INVALID, {"events_with_invalid_fields": {"event_type": [1]}}),
        (event(price="9.99"), INVALID, {"events_with_invalid_fields": {"price": [1]}}),
        (event(quantity=1.5), INVALID, {"events_with_invalid_fields": {"quantity": [1]}}),
        (event(session_id="s"), INVALID, {"events_with_invalid_fields": {"session_id": [1]}}),
        (event(event_properties=[1]), INVALID, {"events_with_invalid_fields": {"event_properties": [1]}}),
        (event(event_properties={"a": {"b": {}}}), None, None),
        (event(user_properties={"$set": {"a": 1}, "plan": "pro"}, event_type="$identify"), INVALID,
         {"events_with_invalid_fields": {"user_properties": [1]}}),
        (event(user_properties={"$add": {"logins": "one"}}, event_type="$identify"), INVALID,
         {"events_with_invalid_fields": {"user_properties": [1]}}),
        (event(user_properties={"$set": {"a": 1}, "$unset": {"a": "-"}}, event_type="$identify"), INVALID,
         {"events_with_invalid_fields": {"user_properties": [1]}}),
        ("not an object", "Invalid event JSON", {"events_with_invalid_fields": {"event": [1]}}),
    ],
)
def test_event_level_answers_name_the_bad_event_by_index(
    bad_event: Any, error: str | None, fields: dict[str, Any] | None
) -> None:
    body = request(event(), bad_event, event())
    result = parse(body)
    if error is None:
        assert isinstance(result, Accepted)
        return
    assert isinstance(result, Answer)
    assert result.status == 400
    assert result.body == {"code": 400, "error": error, **(fields or {})}
    # An event-level problem never carries `missing_field`: the SDK would drop the whole batch.
    assert "missing_field" not in result.body


def test_all_problems_of_a_request_are_reported_together() -> None:
    body = request(event(), event(time="yesterday"), {"user_id": "cust-1"}, event(time="x"), event(user_id="ab"))
    answer = answer_of(body)
    assert answer.body == {
        "code": 400,
        "error": INVALID,
        "events_with_invalid_fields": {"time": [1, 3]},
        "events_with_missing_fields": {"event_type": [2]},
        "events_with_invalid_id_lengths": {"user_id": [4]},
    }


def test_properties_nested_past_40_levels_are_invalid() -> None:
    deep: dict[str, Any] = {}
    for _ in range(39):
        deep = {"k": deep}  # 40 objects deep, counting event_properties itself
    assert isinstance(parse(request(event(event_properties=deep))), Accepted)
    answer = answer_of(request(event(event_properties={"k": deep})))
    assert answer.body["events_with_invalid_fields"] == {"event_properties": [0]}


def test_an_event_over_1_mib_is_invalid_and_the_rest_named_valid() -> None:
    big = event(event_properties={f"p{n}": "x" * 1000 for n in range(1100)})
    answer = answer_of(request(event(), big))
    assert answer.body == {"code": 400, "error": INVALID, "events_with_invalid_fields": {"event": [1]}}


# ---------------------------------------------------------------------- normalisation of accepted events


def test_min_id_length_option_lowers_the_minimum() -> None:
    assert isinstance(parse(request(event(user_id="abc"))), Answer)
    result = parse(request(event(user_id="abc"), options={"min_id_length": 3}))
    assert isinstance(result, Accepted)
    assert result.items[0]["user_id"] == "abc"
    assert result.options == {"min_id_length": 3}


def test_a_short_id_is_removed_when_the_other_id_is_usable() -> None:
    result = parse(request(event(user_id="abc", device_id="dev-aaaa1")))
    assert isinstance(result, Accepted)
    assert "user_id" not in result.items[0]
    assert result.items[0]["device_id"] == "dev-aaaa1"


def test_strings_over_1024_characters_are_cut_at_any_depth() -> None:
    long = "y" * 1500
    result = parse(request(event(event_type=long, event_properties={"a": [long, {"b": long}], long: 1})))
    assert isinstance(result, Accepted)
    stored = result.items[0]
    assert stored["event_type"] == "y" * 1024
    assert stored["event_properties"] == {"a": ["y" * 1024, {"b": "y" * 1024}], "y" * 1024: 1}


def test_an_accepted_event_is_kept_as_sent_with_unknown_fields() -> None:
    sent = event(insert_id="ins-1", ip="$remote", price=89.99, quantity=1, productId="SKU-001",
                 event_properties={"sku": "SKU-001"}, custom_thing={"x": [1, 2]}, session_id=-1)
    result = parse(request(sent))
    assert isinstance(result, Accepted)
    assert result.items == [sent]
    assert result.kind == "httpapi" and result.key_fingerprint == fingerprint(KEY)
    assert result.payload_size_bytes == len(request(sent))


def test_reserved_event_types_sent_by_sdks_are_accepted() -> None:
    for name in ("$identify", "$groupidentify", "[Amplitude] Start Session"):
        assert isinstance(parse(request(event(event_type=name))), Accepted), name


# ---------------------------------------------------------------------- answers


def test_success_body() -> None:
    accepted = Accepted("batch", [event(), event()], "1a2b3c4d", 412)
    answer = protocol.success(accepted, 1718791500402)
    assert answer == Answer(
        200, {"code": 200, "events_ingested": 2, "payload_size_bytes": 412, "server_upload_time": 1718791500402}
    )
    assert protocol.success(Accepted("identify", [{}], "1a2b3c4d", 10), 1) == Answer(200, "success")


def test_throttled_body_lists_every_event_and_names_no_user() -> None:
    assert protocol.throttled(3) == Answer(
        429,
        {
            "code": 429,
            "error": "Too many requests for some devices and users",
            "eps_threshold": 30,
            "throttled_devices": {},
            "throttled_users": {},
            "throttled_events": [0, 1, 2],
            "exceeded_daily_quota_users": {},
            "exceeded_daily_quota_devices": {},
        },
    )


# ---------------------------------------------------------------------- Identify and Group Identify


def identify(identification: Any, *, api_key: str | None = KEY, group: bool = False) -> Accepted | Answer:
    fields = {} if api_key is None else {"api_key": api_key}
    if identification is not None:
        fields["identification"] = identification if isinstance(identification, str) else orjson.dumps(
            identification
        ).decode()
    return protocol.parse_identify(fields, KEYS, payload_size_bytes=100, group=group)


IDENTIFY_OK = {"user_id": "cust-00042", "user_properties": {"$set": {"plan": "pro"}, "$add": {"logins": 1}}}


@pytest.mark.parametrize(
    ("identification", "accepted"),
    [
        (IDENTIFY_OK, 1),
        ([IDENTIFY_OK, {"device_id": "dev-aaaa1", "user_properties": {"plan": "pro"}}], 2),
        ({"user_id": "cust-00042", "user_properties": {"$clearAll": "-"}}, 1),
        ({"user_id": "cust-00042", "paying": "true", "platform": "Web"}, 1),
    ],
)
def test_identify_accepted(identification: Any, accepted: int) -> None:
    result = identify(identification)
    assert isinstance(result, Accepted)
    assert result.kind == "identify" and len(result.items) == accepted


@pytest.mark.parametrize(
    ("identification", "api_key", "expected"),
    [
        (IDENTIFY_OK, None, {"code": 400, "error": MISSING, "missing_field": "api_key"}),
        (None, KEY, {"code": 400, "error": "missing_event"}),
        ("{oops", KEY, {"code": 400, "error": "missing_event"}),
        ("[]", KEY, {"code": 400, "error": "missing_event"}),
        ("42", KEY, {"code": 400, "error": "missing_event"}),
        ({"user_properties": {"plan": "pro"}}, KEY,
         {"code": 400, "error": MISSING, "events_with_missing_fields": {"user_id": [0]}}),
        ({"user_id": "abc"}, KEY, {"code": 400, "error": INVALID, "events_with_invalid_id_lengths": {"user_id": [0]}}),
        ({"user_id": "undefined"}, KEY, {"code": 400, "error": INVALID, "events_with_invalid_fields": {"user_id": [0]}}),
        ({"user_id": "cust-00042", "user_properties": {"$append": {"a": 1}, "plan": "pro"}}, KEY,
         {"code": 400, "error": INVALID, "events_with_invalid_fields": {"user_properties": [0]}}),
        ({"user_id": "cust-00042", "user_properties": {"$increment": {"a": 1}}}, KEY,
         {"code": 400, "error": INVALID, "events_with_invalid_fields": {"user_properties": [0]}}),
        ({"user_id": "cust-00042", "user_properties": "plan=pro"}, KEY,
         {"code": 400, "error": INVALID, "events_with_invalid_fields": {"user_properties": [0]}}),
    ],
    ids=["no-key", "no-identification", "bad-json", "empty-array", "not-object", "no-id", "short-id",
         "placeholder", "mixed-ops", "unknown-op", "properties-not-object"],
)
def test_identify_refused(identification: Any, api_key: str | None, expected: dict[str, Any]) -> None:
    result = identify(identification, api_key=api_key)
    assert isinstance(result, Answer)
    assert (result.status, result.body) == (400, expected)


def test_identify_with_an_unknown_key() -> None:
    result = identify(IDENTIFY_OK, api_key="nope-nope-nope")
    assert isinstance(result, Answer) and isinstance(result.body, dict)
    assert result.body["error"].startswith("Invalid API key:")


GROUP_OK = {"group_type": "company", "group_value": "acme", "group_properties": {"$set": {"plan": "enterprise"}}}


@pytest.mark.parametrize(
    ("identification", "expected"),
    [
        (GROUP_OK, None),
        ([GROUP_OK, {"group_type": "org", "group_value": "7", "group_properties": {"seats": 3}}], None),
        ({"group_value": "acme"}, {"code": 400, "error": MISSING, "events_with_missing_fields": {"group_type": [0]}}),
        ({"group_type": "company", "group_value": 12}, {"code": 400, "error": INVALID,
                                                          "events_with_invalid_fields": {"group_value": [0]}}),
        ({**GROUP_OK, "group_properties": {"$remove": {"a": 1}}},
         {"code": 400, "error": INVALID, "events_with_invalid_fields": {"group_properties": [0]}}),
        ([GROUP_OK] * 1025, {"code": 413, "error": "Payload too large"}),
    ],
    ids=["one", "array", "no-type", "value-not-string", "unsupported-op", "1025"],
)
def test_group_identify(identification: Any, expected: dict[str, Any] | None) -> None:
    result = identify(identification, group=True)
    if expected is None:
        assert isinstance(result, Accepted) and result.kind == "groupidentify"
    else:
        assert isinstance(result, Answer) and result.body == expected


def test_group_identify_over_1_mib_is_too_large() -> None:
    fields = {"api_key": KEY, "identification": orjson.dumps(GROUP_OK).decode()}
    result = protocol.parse_identify(fields, KEYS, payload_size_bytes=protocol.MiB + 1, group=True)
    assert result == protocol.too_large()
