"""The profile folder against the Brevo simulator (its attribute model) and a real state file: snapshots of
one batch coalesced per user, values converted or dropped with a count, missing attributes reported and left
out (or created), revenue counted once, the batch settled after the fold."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from amplitude_brevo.config import parse_config
from amplitude_brevo.contacts.folder import ProfileFolder
from amplitude_brevo.pipeline.items import Item
from amplitude_brevo.pipeline.queue import BatchQueue
from amplitude_brevo.state import StateStore

from ..conftest import SECRETS, base_config
from ..sinks.support import brevo_env, tracker


def cfg_for(tmp_path, **overrides: Any):
    doc = base_config(tmp_path, sync={"user_properties": True, "revenue": True},
                      property_mapping={"email": "email", "first_name": "FIRSTNAME", "signup_date": "SIGNUP_DATE",
                                        "plan_type": "PLAN", "tier": "AMP_TIER", "last_active": "LAST_ACTIVE"},
                      revenue={"ltv_attribute": "LTV", "count_attribute": "ORDER_COUNT"}, **overrides)
    return parse_config(doc, env=SECRETS)


def snapshot(user: str, t: str, **props: Any) -> dict[str, Any]:
    return {"u": user, "t": t, "s": "", "f": t, "l": t, "e": f"{user}@example.org", "p": props}


def items(bodies: list[dict[str, Any]]) -> list[Item]:
    source = tracker()
    token = source.token("20261101T00")
    source.add("20261101T00", len(bodies))
    source.seal("20261101T00")
    return [Item(None, orjson.dumps(b), token) for b in bodies]


def budgets() -> dict[str, Any]:
    from ..sinks.support import Limit

    return {"brevo_contacts": Limit(1000, 1)}


async def fold(env, cfg, bodies: list[dict[str, Any]]) -> ProfileFolder:
    folder = ProfileFolder(cfg=cfg, queue=BatchQueue("profiles", max_items=100, max_wait=0, capacity=100),
                           state=env.state, acks=env.acks, client=env.client)
    await folder._load_model()
    await folder._fold(items(bodies))
    return folder


async def test_a_batch_is_coalesced_per_user_converted_and_settled(tmp_path, caplog):
    async with brevo_env(tmp_path, budgets=budgets()) as env:
        cfg = cfg_for(tmp_path)
        folder = await fold(env, cfg, [
            snapshot("u1", "2024-01-15T10:00:00.000Z", first_name="Old", signup_date="2025-03-01 10:00:00.000000"),
            snapshot("u1", "2024-01-15T12:00:00.000Z", first_name="New", signup_date="31/02/2024", plan_type="pro"),
            {"r": 1, "k": "k1", "u": "u1", "a": 20.5, "t": "2024-01-15T12:00:00.000Z"},
            {"r": 1, "k": "k1", "u": "u1", "a": 20.5, "t": "2024-01-15T12:00:00.000Z"},  # the same event twice
        ])
        [row] = await env.state.pending_contacts(0)
        assert row.attributes == {"FIRSTNAME": "New", "PLAN": "pro", "LAST_ACTIVE": "2024-01-15", "LTV": 20.5,
                                  "ORDER_COUNT": 1}, "newest values, typed; the bad date left out; revenue once"
        assert folder.dropped_total == {"SIGNUP_DATE": 1}
        assert folder.missing == {"AMP_TIER"}, "a target Brevo lacks is reported and left out"
        assert (folder.totals.new, folder.totals.revenue_counted, folder.totals.revenue_repeated) == (1, 1, 1)
        [(sink, settled, refused)] = env.acks.settled
        assert sink == "profiles" and len(settled) == 4 and refused == {}


async def test_an_identical_fold_changes_nothing(tmp_path):
    async with brevo_env(tmp_path, budgets=budgets()) as env:
        cfg = cfg_for(tmp_path)
        body = snapshot("u1", "2024-01-15T10:00:00.000Z", first_name="Ana")
        await fold(env, cfg, [body])
        again = await fold(env, cfg, [body])
        assert (again.totals.new, again.totals.changed, again.totals.unchanged) == (0, 0, 1)
        assert [p.seq for p in await env.state.pending_contacts(0)] == [1]


@pytest.mark.parametrize("create", [True, False])
async def test_create_attributes_creates_a_missing_target_typed_by_its_first_value(tmp_path, create):
    async with brevo_env(tmp_path, budgets=budgets()) as env:
        cfg = cfg_for(tmp_path, connectors={"brevo": {"create_attributes": create}})
        folder = await fold(env, cfg, [snapshot("u1", "2024-01-15T10:00:00.000Z", tier=3.5)])
        [row] = await env.state.pending_contacts(0)
        if create:
            assert env.brevo.attributes["AMP_TIER"]["type"] == "float" and row.attributes["AMP_TIER"] == 3.5
            assert folder.missing == set()
        else:
            assert "AMP_TIER" not in env.brevo.attributes and "AMP_TIER" not in row.attributes


async def test_a_target_without_a_value_yet_is_created_when_one_arrives_typed_by_it(tmp_path):
    """Created from nothing it would be text, and an identify's later `$add` would be stored as text."""
    async with brevo_env(tmp_path, budgets=budgets()) as env:
        cfg = cfg_for(tmp_path, connectors={"brevo": {"create_attributes": True}})
        folder = await fold(env, cfg, [snapshot("u1", "2024-01-15T10:00:00.000Z", plan_type="pro")])
        assert "AMP_TIER" not in env.brevo.attributes and folder.missing == {"AMP_TIER"}, "no value: not yet"
        await folder._fold(items([{"u": "u1", "k": "7-0", "t": "2024-01-15T11:00:00.000Z", "s": "",
                                   "o": {"$add": {"tier": 2}}}]))
        assert env.brevo.attributes["AMP_TIER"]["type"] == "float" and folder.missing == set()
        [*_, row] = await env.state.pending_contacts(0)
        assert row.attributes["AMP_TIER"] == 2


async def test_an_invalid_email_is_counted_and_the_contact_folded_without_it(tmp_path):
    async with brevo_env(tmp_path, budgets=budgets()) as env:
        body = {**snapshot("u1", "2024-01-15T10:00:00.000Z", first_name="F"), "e": None, "x": "f@@acme.io"}
        folder = await fold(env, cfg_for(tmp_path), [body])
        [row] = await env.state.pending_contacts(0)
        assert row.email is None and row.attributes["FIRSTNAME"] == "F"
        assert folder.dropped_total == {"EMAIL": 1}


async def test_recurring_values_are_converted_once_and_date_times_are_not_remembered(tmp_path, monkeypatch):
    from amplitude_brevo.contacts import folder as folder_module

    async with brevo_env(tmp_path, budgets=budgets()) as env:
        folder = await fold(env, cfg_for(tmp_path), [])
        converted: list[tuple[str, Any]] = []
        convert = folder_module.convert

        def counted(model, target, value):
            converted.append((target, value))
            return convert(model, target, value)

        monkeypatch.setattr(folder_module, "convert", counted)
        for hour in (10, 11):
            at = f"2024-01-15T{hour}:00:00.000Z"
            attributes, _ = folder.attributes_of(
                {"plan_type": "pro", "signup_date": "2024-01-02", "last_active": at}, {}, None)
            assert attributes == {"PLAN": "pro", "SIGNUP_DATE": "2024-01-02", "LAST_ACTIVE": "2024-01-15"}
        assert sorted(converted) == [("LAST_ACTIVE", "2024-01-15T10:00:00.000Z"),
                                     ("LAST_ACTIVE", "2024-01-15T11:00:00.000Z"),
                                     ("PLAN", "pro"), ("SIGNUP_DATE", "2024-01-02")]
        assert ("SIGNUP_DATE", str, "2024-01-02") in folder._converted
        assert not any(key[0] == "LAST_ACTIVE" for key in folder._converted), "date-times are not remembered"


async def test_operations_apply_once_in_order_on_the_stored_profile(tmp_path):
    """Live operations (ingest/brevo_feed.py) change only what they name, and one re-read is not applied again."""
    async with await StateStore.open(tmp_path / "state.db") as state:
        def attrs(sources, derived, totals):
            return dict(sources), []

        await state.fold_contacts([{"u": "u1", "t": "2024-01-15T10:00:00.000Z", "s": "", "f": None, "l": None,
                                    "e": "u1@example.com", "p": {"plan": "free", "visits": 1, "city": "Lyon"}}],
                                  [], attrs)
        ops = [{"u": "u1", "k": "5-0", "t": "2024-01-15T11:00:00.000Z", "s": "",
                "o": {"$add": {"visits": 2}, "$setOnce": {"plan": "pro"}}},
               {"u": "u1", "k": "5-1", "t": "2024-01-15T11:00:01.000Z", "s": "", "o": {"$unset": {"city": "-"}}}]
        result = await state.fold_contacts([], [], attrs, operations=ops)
        assert result.operations_applied == 2 and result.changed == 1
        again = await state.fold_contacts([], [], attrs, operations=ops[:1])
        assert again.operations_repeated == 1 and again.unchanged == 0 and again.changed == 0
        row = await state.contact_row("u1")
        assert row["sources"] == {"plan": "free", "visits": 3}, "unnamed values kept, $add once, $setOnce kept"
        assert row["email"] == "u1@example.com"
