"""What each Amplitude answer means for the events sent (ingest/upstream_answers.py), table by table."""

from __future__ import annotations

import pytest

from amplitude_brevo.ingest.upstream_answers import judge

BATCH = ["e0", "e1", "e2", "e3"]
IDS = [("u0", "d0"), ("u1", "d1"), ("u2", "d2"), ("u1", "d3")]


def test_200_delivers_everything():
    v = judge(BATCH, IDS, 200, {"code": 200, "events_ingested": 4})
    assert v.delivered == BATCH and not (v.dead or v.resend or v.throttled or v.backoff)


def test_the_body_code_wins_over_the_status_as_the_sdks_read_it():
    assert judge(BATCH, IDS, 200, {"code": 429, "throttled_events": [], "throttled_users": {}}).backoff
    assert judge(BATCH, IDS, 500, "not json").backoff


def test_a_400_naming_events_dead_letters_them_and_resends_the_rest():
    body = {"code": 400, "error": "Invalid field values on some events",
            "events_with_invalid_fields": {"time": [1, 9]}, "events_with_missing_fields": {"event_type": [3]},
            "silenced_events": [True, 2]}
    v = judge(BATCH, IDS, 400, body)
    assert [e for e, _ in v.dead] == ["e1", "e2", "e3"] and v.resend == ["e0"]
    reasons = dict(v.dead)
    assert "invalid_fields: time" in reasons["e1"] and "missing_fields: event_type" in reasons["e3"]
    assert "silenced" in reasons["e2"], "an index out of range or a boolean is ignored"


@pytest.mark.parametrize("body", [
    {"code": 400, "error": "Request missing required field", "missing_field": "api_key"},
    {"code": 400, "error": "Invalid JSON request body"},
])
def test_a_400_about_the_request_dead_letters_every_event(body):
    v = judge(BATCH, IDS, 400, body)
    assert [e for e, _ in v.dead] == BATCH and not v.resend


def test_an_invalid_api_key_is_fatal_and_drops_nothing():
    v = judge(BATCH, IDS, 400, {"code": 400, "error": "Invalid API key: abc"})
    assert v.fatal and "connectors.amplitude.api_key" in v.fatal and not v.dead and not v.delivered


def test_a_413_splits_and_one_event_alone_is_dead_lettered():
    assert judge(BATCH, IDS, 413, {"code": 413}).split == [["e0", "e1"], ["e2", "e3"]]
    v = judge(["e0"], IDS[:1], 413, {"code": 413})
    assert [e for e, _ in v.dead] == ["e0"] and not v.split


def test_a_429_holds_the_throttled_dead_letters_the_over_quota_and_resends_the_rest():
    body = {"code": 429, "throttled_users": {"u1": 31}, "throttled_devices": {}, "throttled_events": [1, 2],
            "exceeded_daily_quota_users": {"u2": 500_001}, "exceeded_daily_quota_devices": {}}
    v = judge(BATCH, IDS, 429, body)
    assert v.throttled == ["e1", "e3"], "e3's user is named though its index is not listed"
    assert [e for e, _ in v.dead] == ["e2"] and "daily quota" in v.dead[0][1]
    assert v.resend == ["e0"] and v.paused_users == ["u1"]


def test_a_429_naming_nobody_is_a_project_throttle():
    body = {"code": 429, "throttled_users": {}, "throttled_devices": {}, "throttled_events": []}
    assert judge(BATCH, IDS, 429, body).backoff


@pytest.mark.parametrize("status", [0, 408, 500, 502, 503, 504, 418])
def test_errors_and_unknown_answers_back_off(status):
    v = judge(BATCH, IDS, status, None)
    assert v.backoff and not v.dead and not v.delivered


def test_a_403_is_dead_lettered_as_the_sdks_drop_it():
    v = judge(BATCH, IDS, 403, {"code": 403, "error": "Forbidden"})
    assert [e for e, _ in v.dead] == BATCH and "403 Forbidden" in v.dead[0][1]
