"""The people fragment's memo (`MappingRules.people`, `remap._People`): whatever it holds and whichever
attributes it finds volatile, the fragment is `orjson.dumps(people_dict(…))` without its braces."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from amplitude_brevo.pipeline import remap as remap_module
from amplitude_brevo.pipeline.remap import BrevoEvent, MappingRules, Rejected, people_dict, remap_event
from amplitude_brevo.pipeline.rows import row_decoder

EVENTS = {"Purchase": "order_completed"}
MAPPING = {"email": "email", "first_name": "FIRSTNAME", "plan": "PLAN", "ltv": "LTV",
           "last_active": "LAST_ACTIVE"}
WINDOW = remap_module._VOLATILE_WINDOW


def expected(rules: MappingRules, ext_id: Any, user: Any) -> bytes:
    return orjson.dumps(people_dict(ext_id, user, rules._email_attr, rules._contact))[1:-1]


def ask(rules: MappingRules, ext_id: Any, props: dict[str, Any]) -> bytes:
    """rules.people for these user properties, checked against the whole fragment encoded at once."""
    user = rules.user_properties(orjson.dumps(props))
    fragment = rules.people(ext_id, user)
    assert fragment == expected(rules, ext_id, user), props
    return fragment


def make_volatile(rules: MappingRules, props: dict[str, Any], name: str, users: int = 3) -> None:
    """Ask for `users` users whose property `name` changes with every event, until it is volatile."""
    for n in range(2 * WINDOW // users + 2):
        for u in range(users):
            ask(rules, f"user-{u}", {**props, name: f"2024-01-15T10:{n:04d}"})


def volatile(rules: MappingRules) -> list[str]:
    people = rules._people
    return [people._contact[i][1] for i in people._volatile]


def test_a_property_changing_every_event_becomes_volatile_and_the_others_stay_memoized():
    rules = MappingRules(EVENTS, MAPPING)
    props = {"email": "Ana@Example.org", "first_name": "Ana", "plan": "pro", "ltv": 12.5}
    make_volatile(rules, props, "last_active")
    assert volatile(rules) == ["LAST_ACTIVE"]
    memo = rules._people._memo
    before = len(memo)
    for n in range(20):
        fragment = ask(rules, "user-0", {**props, "last_active": f"later-{n}"})
    assert len(memo) == before, "one entry per user, whatever its last_active"
    assert orjson.loads(b"{" + fragment + b"}")["contact_properties"] == {
        "FIRSTNAME": "Ana", "PLAN": "pro", "LTV": "12.5", "LAST_ACTIVE": "later-19"}


@pytest.mark.parametrize("first", ["last_active", "first_name"])
def test_volatile_values_of_every_kind_and_type(first):
    # The volatile attribute first in the output (no memoized text before it) or in the middle.
    mapping = {first: "FIRST", **{k: v for k, v in MAPPING.items() if k != first}}
    rules = MappingRules(EVENTS, mapping)
    base = {"email": "a@b.co", "first_name": "Ana", "plan": "pro", "ltv": 1, "last_active": "x"}
    make_volatile(rules, base, first)
    assert volatile(rules) == ["FIRST"]
    values = [1, True, 1.0, "1", None, False, 0, 0.0, -0.0, 2.5, ["a", True, 2.5], {"k": [1]}, "", 10**15]
    for value in values + values[::-1]:
        ask(rules, "user-0", {**base, first: value})
        # and with nothing else to send: no contact_properties at all when the volatile value is None
        ask(rules, "user-1", {"email": "a@b.co", first: value})
        ask(rules, "user-2", {first: value})


def test_two_volatile_attributes():
    rules = MappingRules(EVENTS, MAPPING)
    for n in range(2 * WINDOW + 2):
        ask(rules, f"user-{n % 3}", {"email": "a@b.co", "plan": f"plan-{n}", "ltv": n, "last_active": f"at-{n}"})
    assert volatile(rules) == ["PLAN", "LTV", "LAST_ACTIVE"]
    for value in [None, 1, True, 2.5, ["a"], "x"]:
        ask(rules, "user-0", {"email": "a@b.co", "plan": value, "ltv": value, "last_active": value})
        ask(rules, "user-0", {"plan": value, "first_name": value})


def test_equal_values_of_other_types_stay_apart_in_memoized_attributes():
    rules = MappingRules(EVENTS, MAPPING)
    make_volatile(rules, {"plan": "pro"}, "last_active")
    for value in [1, True, 1.0, 1, False, 0.0, 0, True, ["x"], ["x"]]:
        for _ in range(2):  # the second time from the memo
            ask(rules, "user-0", {"plan": value, "ltv": value, "last_active": "now"})


def test_identity_and_memoized_values_still_count_once_something_is_volatile():
    rules = MappingRules(EVENTS, MAPPING)
    make_volatile(rules, {"email": "a@b.co", "plan": "pro"}, "last_active")
    for email, expected_id in (("a@b.co", b'"email_id":"a@b.co"'), ("C@d.co", b'"email_id":"c@d.co"')):
        assert expected_id in ask(rules, "user-0", {"email": email, "plan": "pro", "last_active": email})
    assert b"email_id" not in ask(rules, "user-0", {"email": "none", "plan": "pro", "last_active": "3"})
    assert b'"PLAN":"team"' in ask(rules, "user-0", {"email": "none", "plan": "team", "last_active": "4"})
    assert b'"ext_id":"user-1"' in ask(rules, "user-1", {"email": "none", "plan": "team", "last_active": "5"})


def test_a_value_changing_only_its_type_counts_as_a_change():
    rules = MappingRules(EVENTS, MAPPING)
    for n in range(2 * WINDOW + 2):  # last_active changing: misses to watch; ltv 1, true, 1, true, …
        ask(rules, "user-0", {"ltv": [1, True][n % 2], "last_active": f"at-{n}"})
    assert volatile(rules) == ["LTV", "LAST_ACTIVE"]


def test_a_volatile_attribute_that_settles_is_memoized_again():
    rules = MappingRules(EVENTS, MAPPING)
    make_volatile(rules, {"plan": "pro"}, "last_active")
    assert volatile(rules) == ["LAST_ACTIVE"]
    # last_active settles while plan (now the cause of misses) changes every event
    for n in range(2 * WINDOW + 2):
        ask(rules, "user-0", {"plan": f"plan-{n}", "last_active": "settled"})
    assert volatile(rules) == ["PLAN"]


def test_the_ext_id_attribute_is_never_left_out_of_the_key():
    # With use_device_id, a falsy crm_id leaves the device id as ext_id: the same "user" sees crm_id change
    # (None, "", 0, False) at every event. Left out of the key, two users with non-text ext_ids and the same
    # other properties would share a fragment.
    rules = MappingRules(EVENTS, {"crm_id": "CRM", "plan": "PLAN"}, ext_id_field="crm_id",
                         anonymous="use_device_id")
    for n in range(2 * WINDOW + 2):  # plan changing too: misses to watch
        ask(rules, "device-1", {"crm_id": [None, "", 0, False][n % 4], "plan": f"plan-{n}"})
    assert volatile(rules) == ["PLAN"]
    assert b'"ext_id":"[1]"' in ask(rules, [1], {"crm_id": [1], "plan": "pro"})
    assert b'"ext_id":"[2]"' in ask(rules, [2], {"crm_id": [2], "plan": "pro"})


def test_two_properties_mapped_to_one_attribute_are_never_split():
    # In the dict the last value wins, at the first one's place: pieces cannot say that.
    rules = MappingRules(EVENTS, {"plan": "PLAN", "last_active": "SEEN", "seen_at": "SEEN"})
    for n in range(2 * WINDOW + 2):
        ask(rules, "user-0", {"plan": "pro", "last_active": f"at-{n}", "seen_at": [None, f"also-{n}"][n % 2]})
    assert volatile(rules) == []


def test_the_memos_are_cleared_when_full(monkeypatch):
    monkeypatch.setattr(remap_module, "_PEOPLE_LIMIT", 8)
    rules = MappingRules(EVENTS, MAPPING)
    for n in range(30):
        ask(rules, f"user-{n}", {"plan": "pro", "last_active": "x"})
        assert len(rules._people._memo) <= 8
        assert len(rules._people._recent) <= 8


def test_an_integer_beyond_64_bits_is_rejected_as_before_volatile_or_not():
    rules = MappingRules(EVENTS, MAPPING)
    make_volatile(rules, {"plan": "pro"}, "last_active")
    reasons = []
    for props in ({"plan": "pro", "last_active": 2**70}, {"plan": 2**70, "last_active": "x"}):
        data = {"uuid": "u-1", "event_type": "Purchase", "user_id": "user-0",
                "event_time": "2024-01-15 10:23:45.123000", "user_properties": props}
        result = remap_event(row_decoder.decode(_dumps_big(data)), rules)
        assert isinstance(result, Rejected), result
        reasons.append(result.reason)
    assert reasons == ["user_properties cannot be re-encoded: Integer exceeds 64-bit range"] * 2


def _dumps_big(data: dict[str, Any]) -> bytes:
    """JSON with integers orjson cannot encode (msgspec can)."""
    import msgspec

    return msgspec.json.encode(data)


def test_event_bodies_are_unchanged_by_the_memo():
    rules = MappingRules(EVENTS, MAPPING)
    fresh = MappingRules(EVENTS, MAPPING)
    make_volatile(rules, {"plan": "pro"}, "last_active")
    data = {"uuid": "u-1", "event_type": "Purchase", "user_id": "user-0",
            "event_time": "2024-01-15 10:23:45.123000",
            "user_properties": {"email": "A@b.co", "first_name": "Ana", "plan": "pro", "last_active": "now"}}
    body = remap_event(row_decoder.decode(orjson.dumps(data)), rules)
    assert isinstance(body, BrevoEvent)
    assert body == remap_event(row_decoder.decode(orjson.dumps(data)), fresh)
