"""Amplitude's user-property operations on a stored profile (pipeline/user_ops.py, reference §4)."""

from __future__ import annotations

import pytest

from amplitude_brevo.pipeline.user_ops import (
    LIST_LIMIT_CHARS,
    InvalidOperations,
    apply_operations,
    is_operations,
)

PROFILE = {"plan": "free", "logins": 3, "tags": ["a", "b"], "city": "Lyon"}


@pytest.mark.parametrize(("ops", "expected"), [
    # plain keys: an implicit $set
    ({"plan": "pro"}, {**PROFILE, "plan": "pro"}),
    ({"$set": {"plan": "pro", "new": 1}}, {**PROFILE, "plan": "pro", "new": 1}),
    # $setOnce: only what the profile does not hold
    ({"$setOnce": {"plan": "pro", "first_seen": "2026-11-01"}}, {**PROFILE, "first_seen": "2026-11-01"}),
    # $add: numbers, negative too; unset counts as 0; a numeric text is a number
    ({"$add": {"logins": 2}}, {**PROFILE, "logins": 5}),
    ({"$add": {"logins": -4}}, {**PROFILE, "logins": -1}),
    ({"$add": {"visits": 1.5}}, {**PROFILE, "visits": 1.5}),
    ({"$add": {"city": 2}}, {**PROFILE, "city": 2}),  # not a number: starts from 0
    ({"$add": {"logins": "2"}}, {**PROFILE, "logins": 5}),
    # list operations; a scalar is a one-element list; unset starts as []
    ({"$append": {"tags": "c"}}, {**PROFILE, "tags": ["a", "b", "c"]}),
    ({"$append": {"tags": ["a", "d"]}}, {**PROFILE, "tags": ["a", "b", "a", "d"]}),  # duplicates allowed
    ({"$append": {"city": "Paris"}}, {**PROFILE, "city": ["Lyon", "Paris"]}),
    ({"$append": {"new": 1}}, {**PROFILE, "new": [1]}),
    ({"$prepend": {"tags": ["x", "y"]}}, {**PROFILE, "tags": ["x", "y", "a", "b"]}),
    ({"$preInsert": {"tags": ["b", "z", "z"]}}, {**PROFILE, "tags": ["z", "a", "b"]}),
    ({"$postInsert": {"tags": ["a", "z", "y"]}}, {**PROFILE, "tags": ["a", "b", "z", "y"]}),
    ({"$remove": {"tags": "a"}}, {**PROFILE, "tags": ["b"]}),
    ({"$remove": {"tags": ["a", "b"]}}, {**PROFILE, "tags": []}),
    ({"$remove": {"missing": "a"}}, {**PROFILE, "missing": []}),
    # $unset and $clearAll
    ({"$unset": {"city": "-", "missing": "-"}}, {k: v for k, v in PROFILE.items() if k != "city"}),
    ({"$clearAll": "-"}, {}),
    # several operations in one identify: the reference's order, $clearAll first
    ({"$set": {"plan": "pro"}, "$clearAll": "-"}, {"plan": "pro"}),
    ({"$unset": {"plan": "-"}, "$setOnce": {"plan": "trial"}}, {**PROFILE, "plan": "trial"}),
])
def test_each_operation_does_what_the_reference_says(ops, expected):
    before = {k: (list(v) if isinstance(v, list) else v) for k, v in PROFILE.items()}
    applied = apply_operations(PROFILE, ops)
    assert applied.properties == expected
    assert applied.skipped == []
    assert PROFILE == before, "the stored profile is not modified in place"


def test_one_and_true_and_one_point_zero_are_different_values_in_lists():
    applied = apply_operations({"v": [1]}, {"$postInsert": {"v": [True, 1.0, 1]}})
    assert applied.properties["v"] == [1, True, 1.0]
    assert [type(x) for x in applied.properties["v"]] == [int, bool, float]
    removed = apply_operations({"v": [1, True, 1.0]}, {"$remove": {"v": True}})
    assert [type(x) for x in removed.properties["v"]] == [int, float]


@pytest.mark.parametrize("increment", ["ten", None, True, [1], "nan", float("inf")])
def test_an_add_of_something_else_than_a_number_is_skipped_and_said(increment):
    applied = apply_operations(PROFILE, {"$add": {"logins": increment}})
    assert applied.properties == PROFILE and not applied.changed
    [(op, name, why)] = applied.skipped
    assert (op, name) == ("$add", "logins") and "number" in why


def test_a_list_that_would_pass_the_limit_keeps_its_value():
    long = ["x" * 1000] * 9  # ~9 KB of JSON
    applied = apply_operations({"tags": long}, {"$append": {"tags": ["y" * 1000], "other": "z"}})
    assert applied.properties["tags"] == long
    assert applied.properties["other"] == ["z"], "the other properties still apply"
    [(op, name, why)] = applied.skipped
    assert (op, name) == ("$append", "tags") and f"{LIST_LIMIT_CHARS:,}" in why


def test_an_operation_that_is_not_an_object_is_skipped():
    applied = apply_operations(PROFILE, {"$set": ["plan", "pro"]})
    assert applied.properties == PROFILE and applied.skipped[0][0] == "$set"


def test_mixing_plain_keys_and_operations_is_refused():
    assert is_operations({"$set": {}}) and not is_operations({"plan": "pro", "$custom": 1})
    with pytest.raises(InvalidOperations, match="mixes"):
        apply_operations(PROFILE, {"$append": {"tags": "c"}, "plan": "pro"})
    # a `$` key that is not an operation is a plain property when no operation is there
    assert apply_operations({}, {"$custom": 1}).properties == {"$custom": 1}


@pytest.mark.parametrize(("ops", "changed"), [
    ({"plan": "free"}, False),
    ({"$setOnce": {"plan": "pro"}}, False),
    ({"$add": {"logins": 0}}, False),
    ({"$remove": {"tags": "zzz"}}, False),
    ({"$unset": {"missing": "-"}}, False),
    ({"plan": "pro"}, True),
    ({"logins": 3.0}, True),  # 3 and 3.0 convert differently for Brevo
    ({"logins": True}, True),
    ({"$clearAll": "-"}, True),
])
def test_changed_says_whether_anything_differs(ops, changed):
    assert apply_operations(PROFILE, ops).changed is changed


def test_an_empty_object_changes_nothing():
    applied = apply_operations(PROFILE, {})
    assert applied.properties == PROFILE and not applied.changed and not applied.skipped
