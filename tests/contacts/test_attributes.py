"""Attribute model and value conversion (table-driven), and load/ensure against the Brevo simulator on loopback."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from amplitude_brevo.config import RateLimit
from amplitude_brevo.contacts.attributes import (
    Attribute,
    AttributeModel,
    AttributesError,
    Converted,
    Dropped,
    convert,
    ensure_attributes,
    identity_target,
    infer_type,
    load_attributes,
)
from amplitude_brevo.retry import Backoff
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE, make_brevo_app
from amplitude_brevo.secrets import Secret
from amplitude_brevo.sinks.brevo_client import BrevoClient
from amplitude_brevo.sinks.budgets import Budgets

BODY = {"attributes": [
    {"name": "FIRSTNAME", "category": "normal", "type": "text"},
    {"name": "signup_date", "category": "normal", "type": "date"},
    {"name": "LTV", "category": "normal", "type": "float"},
    {"name": "VIP", "category": "normal", "type": "boolean"},
    {"name": "PLAN", "category": "category", "type": "category",
     "enumeration": [{"value": 1, "label": "free"}, {"value": 2, "label": "Pro"}, {"value": 7, "label": "3"}]},
    {"name": "INTERESTS", "category": "normal", "type": "multiple-choice", "multiCategoryOptions": ["a", "Blue", "c"]},
    {"name": "SMS", "category": "normal", "type": "text"},
    {"name": "WHATSAPP", "category": "normal", "type": "text"},
    {"name": "LANDLINE_NUMBER", "category": "normal", "type": "text"},
    {"name": "ORDER_ID", "category": "transactional", "type": "id"},
    {"name": "OWNER", "category": "normal", "type": "user"},
    {"name": "SHAPE", "category": "normal", "type": "hologram"},
    {"name": "SCORE", "category": "calculated", "calculatedValue": "COUNT[X]"},
    {"category": "normal", "type": "text"},  # no name: skipped
    "not an object",
]}
MODEL = AttributeModel.from_response(BODY)


def test_model_from_response() -> None:
    assert MODEL.names() == ["FIRSTNAME", "SIGNUP_DATE", "LTV", "VIP", "PLAN", "INTERESTS", "SMS", "WHATSAPP",
                             "LANDLINE_NUMBER", "ORDER_ID", "OWNER", "SHAPE", "SCORE"]
    assert MODEL.get("Signup_Date") == Attribute("SIGNUP_DATE", "date", "normal")
    assert "firstname" in MODEL and "LASTNAME" not in MODEL and len(MODEL) == 13
    assert MODEL.get("plan").enumeration == ((1, "free"), (2, "Pro"), (7, "3"))
    assert MODEL.get("INTERESTS").options == ("a", "Blue", "c")
    assert MODEL.get("SHAPE").type == "hologram"  # an open string, not an error
    assert (MODEL.get("SCORE").type, MODEL.get("SCORE").category) == ("", "calculated")
    assert len(AttributeModel.from_response({"attributes": None})) == 0
    assert len(AttributeModel.from_response("<html>")) == 0
    grown = MODEL.with_attribute(Attribute("NEW", "text"))
    assert "NEW" in grown and "NEW" not in MODEL


MS = int(datetime(2025, 3, 1, 23, 59, tzinfo=UTC).timestamp() * 1000)

CASES: list[tuple[str, Any, Converted | Dropped | None]] = [
    # absent
    ("FIRSTNAME", None, None),
    ("SIGNUP_DATE", None, None),
    ("SIGNUP_DATE", "  ", None),
    ("VIP", "", None),
    # unknown and computed attributes
    ("LASTNAME", "Ana", Dropped("LASTNAME does not exist in Brevo")),
    ("lastname", "Ana", Dropped("LASTNAME does not exist in Brevo")),
    ("SCORE", 3, Dropped("SCORE is a calculated attribute, computed by Brevo")),
    # date
    ("SIGNUP_DATE", "2025-03-01", Converted("2025-03-01")),
    ("signup_date", " 2025-03-01 ", Converted("2025-03-01")),
    ("SIGNUP_DATE", "2025-03-01T10:23:45Z", Converted("2025-03-01")),
    ("SIGNUP_DATE", "2025-03-01T10:23:45.123Z", Converted("2025-03-01")),
    ("SIGNUP_DATE", "2025-03-01T23:30:00-02:00", Converted("2025-03-02")),  # UTC date
    ("SIGNUP_DATE", "2025-03-02T01:30:00+02:00", Converted("2025-03-01")),
    ("SIGNUP_DATE", "2025-03-01T10:23:45", Converted("2025-03-01")),  # naive: UTC
    ("SIGNUP_DATE", "2025-03-01 23:59:59.999999", Converted("2025-03-01")),  # Amplitude's form, UTC
    ("SIGNUP_DATE", "2025-03-01 10:23:45.1234567", Converted("2025-03-01")),
    ("SIGNUP_DATE", MS, Converted("2025-03-01")),  # epoch ms
    ("SIGNUP_DATE", float(MS), Converted("2025-03-01")),
    ("SIGNUP_DATE", str(MS), Converted("2025-03-01")),
    ("SIGNUP_DATE", "978307200000", Converted("2001-01-01")),  # 12 digits
    ("SIGNUP_DATE", MS // 1000, Converted("2025-03-01")),  # epoch seconds
    ("SIGNUP_DATE", str(MS // 1000), Converted("2025-03-01")),
    ("SIGNUP_DATE", datetime(2025, 3, 1, 23, 0, tzinfo=UTC), Converted("2025-03-01")),
    ("SIGNUP_DATE", date(2025, 3, 1), Converted("2025-03-01")),
    ("SIGNUP_DATE", "31/02/2024", Dropped("'31/02/2024' is not a date")),
    ("SIGNUP_DATE", "2024-02-31", Dropped("'2024-02-31' is not a date")),
    ("SIGNUP_DATE", "2024-03-01T25:00:00Z", Dropped("'2024-03-01T25:00:00Z' is not a date")),
    ("SIGNUP_DATE", "2025-03-01T23:59:36.585Z", Converted("2025-03-01")),  # an export time, as iso_utc writes it
    ("SIGNUP_DATE", "2025-03-01 23:59:36.585z", Converted("2025-03-01")),
    ("SIGNUP_DATE", "2025-02-29T10:00:00.000Z", Dropped("'2025-02-29T10:00:00.000Z' is not a date")),
    ("SIGNUP_DATE", "2025-03-01T24:00:00.000Z", Dropped("'2025-03-01T24:00:00.000Z' is not a date")),
    ("SIGNUP_DATE", "2025-03-01T10:00:00.0a0Z", Dropped("'2025-03-01T10:00:00.0a0Z' is not a date")),
    ("SIGNUP_DATE", "not a date", Dropped("'not a date' is not a date")),
    ("SIGNUP_DATE", "20250301", Dropped("'20250301' is not a date")),
    ("SIGNUP_DATE", "12345678901", Dropped("'12345678901' is not a date")),  # 11 digits: neither s nor ms
    ("SIGNUP_DATE", 12345, Dropped("12345 is not a date")),
    ("SIGNUP_DATE", True, Dropped("true is not a date")),
    ("SIGNUP_DATE", ["2025-03-01"], Dropped("'2025-03-01' is not a date")),
    # float
    ("LTV", 12, Converted(12)),
    ("LTV", 12.5, Converted(12.5)),
    ("LTV", 12.0, Converted(12)),
    ("LTV", "12.5", Converted(12.5)),
    ("LTV", " 3 ", Converted(3)),
    ("LTV", "-1e3", Converted(-1000)),
    ("LTV", True, Dropped("true is not a number")),
    ("LTV", "NaN", Dropped("'NaN' is not a number")),
    ("LTV", float("inf"), Dropped("inf is not a number")),
    ("LTV", "1_000", Dropped("'1_000' is not a number")),
    ("LTV", "12 EUR", Dropped("'12 EUR' is not a number")),
    # boolean
    ("VIP", True, Converted(True)),
    ("VIP", False, Converted(False)),
    ("VIP", "TRUE", Converted(True)),
    ("VIP", "false", Converted(False)),
    ("VIP", "Yes", Converted(True)),
    ("VIP", "no", Converted(False)),
    ("VIP", "1", Converted(True)),
    ("VIP", "0", Converted(False)),
    ("VIP", " on ", Converted(True)),
    ("VIP", "off", Converted(False)),
    ("VIP", 1, Converted(True)),
    ("VIP", 0, Converted(False)),
    ("VIP", "maybe", Dropped("'maybe' is not a boolean")),
    ("VIP", 2, Dropped("2 is not a boolean")),
    ("VIP", 1.5, Dropped("1.5 is not a boolean")),
    # text (and id / user)
    ("FIRSTNAME", "Ana", Converted("Ana")),
    ("FIRSTNAME", "", Converted("")),
    ("FIRSTNAME", 3.0, Converted("3")),
    ("FIRSTNAME", 3.25, Converted("3.25")),
    ("FIRSTNAME", 42, Converted("42")),
    ("FIRSTNAME", True, Converted("true")),
    ("FIRSTNAME", ["a", 2, 1.0, False], Converted("a,2,1,false")),
    ("FIRSTNAME", {"k": [1, "x"], "z": None}, Converted('{"k":[1,"x"],"z":null}')),
    ("ORDER_ID", 17, Converted("17")),
    ("OWNER", "ana@example.org", Converted("ana@example.org")),
    # category: the enumeration's int value
    ("PLAN", "free", Converted(1)),
    ("PLAN", " PRO ", Converted(2)),
    ("PLAN", 2, Converted(2)),
    ("PLAN", "2", Converted(2)),
    ("PLAN", "3", Converted(7)),  # a label wins over a value
    ("PLAN", "gold", Dropped("'gold' is not an option of PLAN (options: free, Pro, 3)")),
    ("PLAN", 5, Dropped("5 is not an option of PLAN (options: free, Pro, 3)")),
    ("PLAN", True, Dropped("true is not an option of PLAN (options: free, Pro, 3)")),
    # multiple-choice
    ("INTERESTS", ["a", "c"], Converted(["a", "c"])),
    ("INTERESTS", "a, blue,,a", Converted(["a", "Blue"])),
    ("INTERESTS", [], Converted([])),
    ("INTERESTS", ["a", "x"], Dropped("'x' is not an option of INTERESTS (options: a, Blue, c)")),
    ("INTERESTS", "x,y", Dropped("'x', 'y' are not options of INTERESTS (options: a, Blue, c)")),
    # phone numbers: E.164
    ("SMS", "+33612345678", Converted("+33612345678")),
    ("SMS", "+33 6 12 34 56 78", Converted("+33612345678")),
    ("SMS", "0033612345678", Converted("+33612345678")),
    ("SMS", "+44 (0)7771234567", Converted("+447771234567")),
    ("SMS", "+1 (206) 123-4567", Converted("+12061234567")),
    ("WHATSAPP", "+49.30.1234567", Converted("+49301234567")),
    ("LANDLINE_NUMBER", "+33 1 23 45 67 89", Converted("+33123456789")),
    ("SMS", "0612345678", Dropped("'0612345678' has no country code (SMS needs +<country code><number>)")),
    ("SMS", "06 12 34 56 78", Dropped("'06 12 34 56 78' has no country code (SMS needs +<country code><number>)")),
    ("WHATSAPP", "(555) 123-4567",
     Dropped("'(555) 123-4567' has no country code (WHATSAPP needs +<country code><number>)")),
    ("SMS", 612345678, Dropped("612345678 has no country code (SMS needs +<country code><number>)")),
    ("SMS", "+33 6 12", Dropped("'+33 6 12' is not a phone number (8 to 15 digits after the country prefix)")),
    ("SMS", "+1234567890123456",
     Dropped("'+1234567890123456' is not a phone number (8 to 15 digits after the country prefix)")),
    ("SMS", "+33 6x12345678", Dropped("'+33 6x12345678' is not a phone number (8 to 15 digits after the country prefix)")),
    ("SMS", "call me", Dropped("'call me' is not a phone number")),
    ("SMS", True, Dropped("true is not a phone number")),
    # a type this version does not know: passed on for Brevo to judge
    ("SHAPE", "round", Converted("round")),
    ("SHAPE", 3, Converted(3)),
]


@pytest.mark.parametrize(("attribute", "value", "expected"), CASES,
                         ids=[f"{a}={v!r}" for a, v, _ in CASES])
def test_convert(attribute: str, value: Any, expected: Converted | Dropped | None) -> None:
    assert convert(MODEL, attribute, value) == expected


def test_phone_rule_applies_by_name_whatever_the_type() -> None:
    model = AttributeModel([Attribute("SMS", "float")])
    assert convert(model, "SMS", "0612345678") == Dropped(
        "'0612345678' has no country code (SMS needs +<country code><number>)"
    )
    assert convert(model, "SMS", "+33612345678") == Converted("+33612345678")


@pytest.mark.parametrize(("value", "kind"), [
    (True, "boolean"), (False, "boolean"), (3, "float"), (2.5, "float"),
    ("2025-03-01", "date"), ("2025-03-01T10:00:00Z", "date"), ("2025-03-01 10:00:00.000000", "date"),
    ("2025-02-31", "text"), ("Ana", "text"), ("12.5", "text"), ("0612345678", "text"), ("1764400000000", "text"),
    (["a"], "text"), ({"a": 1}, "text"), (datetime(2025, 1, 1, tzinfo=UTC), "date"),
])
def test_infer_type(value: Any, kind: str) -> None:
    assert infer_type(value) == kind


def test_identity_target() -> None:
    assert identity_target("email") and identity_target("EMAIL") and identity_target(" Ext_Id ")
    assert not identity_target("FIRSTNAME") and not identity_target("SMS")


# ---------------------------------------------------------------------------------------------------------
# against the Brevo simulator

KEY = "xkeysib-attributes-test"


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))


@pytest.fixture
async def brevo():
    app = make_brevo_app(api_key=KEY)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = BrevoClient(session, base_url=str(server.make_url("/v3")), api_key=Secret(KEY),
                             budgets=Budgets({"brevo_contacts": RateLimit(requests=1000, per=1)}),
                             backoff=Backoff(base=0.01, cap=0.05, max_attempts=3))
        yield app, client


async def test_load_attributes_reads_the_account(brevo) -> None:
    app, client = brevo
    model = await load_attributes(client)
    assert model.get("SIGNUP_DATE") == Attribute("SIGNUP_DATE", "date", "normal")
    assert set(model.names()) == set(app[BREVO_STATE].attributes)


async def test_load_attributes_refused(brevo) -> None:
    app, client = brevo
    client.reconfigure(base_url=str(client.base_url), api_key=Secret("xkeysib-wrong"))
    with pytest.raises(RuntimeError, match="401"):  # retried (a key fix is a reload away), then given up
        await load_attributes(client)
    assert issubclass(AttributesError, RuntimeError)


WANTED = {"FIRSTNAME": "Ana", "email": "ana@example.org", "amp_tier": "gold", "AMP_SCORE": 3.5, "AMP_VIP": True,
          "AMP_BIRTHDAY": "1990-05-01T00:00:00Z", "AMP_NOTE": None}


async def test_ensure_without_create_reports_and_sends_nothing(brevo) -> None:
    app, client = brevo
    model = await load_attributes(client)
    before = dict(app[BREVO_STATE].attributes)
    log = RecordingLog()
    after, missing = await ensure_attributes(client, model, WANTED, create=False, log=log)
    assert missing == ["AMP_TIER", "AMP_SCORE", "AMP_VIP", "AMP_BIRTHDAY", "AMP_NOTE"]
    assert after is model and log.lines == [] and app[BREVO_STATE].attributes == before


async def test_ensure_creates_missing_attributes_with_inferred_types(brevo) -> None:
    app, client = brevo
    model = await load_attributes(client)
    log = RecordingLog()
    model, missing = await ensure_attributes(client, model, WANTED, create=True, log=log)
    assert missing == []
    expected = {"AMP_TIER": "text", "AMP_SCORE": "float", "AMP_VIP": "boolean", "AMP_BIRTHDAY": "date",
                "AMP_NOTE": "text"}
    assert log.lines == [("info", "brevo.attribute.created", {"name": n, "type": t}) for n, t in expected.items()]
    assert {n: model.get(n).type for n in expected} == expected
    reread = await load_attributes(client)  # Brevo has them, as created
    assert {n: (reread.get(n).type, reread.get(n).category) for n in expected} == {
        n: (t, "normal") for n, t in expected.items()
    }
    assert "EMAIL" in reread and "email" not in expected  # identity is never created
    # Run again: nothing left to create, nothing sent.
    log2 = RecordingLog()
    _, missing = await ensure_attributes(client, reread, WANTED, create=True, log=log2)
    assert missing == [] and log2.lines == []


async def test_ensure_logs_refusals_and_keeps_them_missing(brevo) -> None:
    app, client = brevo
    model = await load_attributes(client)
    too_long = "A" * 101  # Brevo refuses names over 100 characters
    log = RecordingLog()
    model, missing = await ensure_attributes(
        client, model, {too_long: 1, "NOT VALID": "x", "AMP_OK": 1}, create=True, log=log
    )
    assert missing == [too_long, "NOT VALID"]
    assert [(level, event, kw["name"]) for level, event, kw in log.lines] == [
        ("warning", "brevo.attribute.create_failed", too_long),
        ("warning", "brevo.attribute.create_failed", "NOT VALID"),
        ("info", "brevo.attribute.created", "AMP_OK"),
    ]
    assert "Invalid attribute name" in log.lines[0][2]["error"]  # Brevo's message
    assert "not a valid Brevo attribute name" in log.lines[1][2]["error"]  # never sent
    assert too_long not in app[BREVO_STATE].attributes and "AMP_OK" in app[BREVO_STATE].attributes


async def test_ensure_with_a_stale_model_takes_an_existing_attribute_from_brevo(brevo) -> None:
    app, client = brevo
    log = RecordingLog()
    model, missing = await ensure_attributes(client, AttributeModel(), {"SIGNUP_DATE": "Ana"}, create=True, log=log)
    assert missing == [] and log.lines == []
    assert model.get("SIGNUP_DATE").type == "date"  # Brevo's type, not the one inferred from "Ana"
