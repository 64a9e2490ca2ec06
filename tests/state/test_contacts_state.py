"""state/contacts: folding snapshots (newest wins), change detection, the revenue ledger, pending writes."""

from __future__ import annotations

from typing import Any

from amplitude_brevo.state import StateStore
from amplitude_brevo.state.contacts import Totals


def snap(user: str = "u1", t: str = "2024-01-15T10:00:00.000Z", s: str = "2024-01-15 10:00:01.000000",
         email: str | None = "ana@example.org", **props: Any) -> dict[str, Any]:
    return {"u": user, "t": t, "s": s, "f": t, "l": t, "e": email, "p": props}


def fact(key: str, user: str = "u1", amount: float = 10.0) -> dict[str, Any]:
    return {"r": 1, "k": key, "u": user, "a": amount, "t": "2024-01-15T10:00:00.000Z"}


def attrs(sources, derived, totals: Totals | None):
    out = {k.upper(): v for k, v in sources.items()}
    out["LAST"] = derived["last_active"]
    if totals is not None:
        out["LTV"], out["ORDERS"] = round(totals.ltv, 2), totals.orders
    return out, []


async def test_a_fold_makes_new_users_pending_and_an_identical_one_changes_nothing(state: StateStore):
    first = await state.fold_contacts([snap(first_name="Ana"), snap("u2", first_name="Bo")], [], attrs)
    assert (first.new, first.changed, first.unchanged) == (2, 0, 0)
    pending = await state.pending_contacts(0)
    assert [(p.user_id, p.seq) for p in pending] == [("u1", 1), ("u2", 2)]
    assert pending[0].attributes == {"FIRST_NAME": "Ana", "LAST": "2024-01-15T10:00:00.000Z"}
    assert pending[0].email == "ana@example.org" and not pending[0].in_brevo

    again = await state.fold_contacts([snap(first_name="Ana")], [], attrs)
    assert (again.new, again.changed, again.unchanged) == (0, 0, 1)
    assert [p.seq for p in await state.pending_contacts(0)] == [1, 2], "an unchanged fold takes no new seq"


async def test_the_newest_row_wins_across_folds_and_older_rows_only_widen_first_seen(state: StateStore):
    await state.fold_contacts([snap(t="2024-01-15T10:00:00.000Z", first_name="New")], [], attrs)
    older = snap(t="2024-01-10T08:00:00.000Z", first_name="Old", email="old@example.org")
    result = await state.fold_contacts([older], [], attrs)
    assert (result.changed, result.unchanged) == (0, 1)
    row = await state.contact_row("u1")
    assert row["sources"] == {"first_name": "New"} and row["email"] == "ana@example.org"
    assert row["first_seen"] == "2024-01-10T08:00:00.000Z" and row["last_active"] == "2024-01-15T10:00:00.000Z"

    newer = snap(t="2024-01-16T08:00:00.000Z", first_name="Newer", email="ana2@example.org")
    assert (await state.fold_contacts([newer], [], attrs)).changed == 1
    [pending] = await state.pending_contacts(1)
    assert pending.email == "ana2@example.org" and pending.attributes["FIRST_NAME"] == "Newer"


async def test_an_email_change_alone_makes_a_write_pending(state: StateStore):
    await state.fold_contacts([snap(first_name="Ana")], [], attrs)
    result = await state.fold_contacts([snap(s="2024-01-15 10:00:02.000000", email="new@example.org",
                                             first_name="Ana")], [], attrs)
    assert result.changed == 1


async def test_revenue_counts_once_per_key_whatever_is_read_again(state: StateStore, tmp_path):
    result = await state.fold_contacts([snap()], [fact("k1", amount=10), fact("k2", amount=-2.5)], attrs)
    assert (result.revenue_counted, result.revenue_repeated) == (2, 0)
    assert await state.revenue_totals("u1") == Totals(7.5, 1, 1)
    again = await state.fold_contacts([snap()], [fact("k1", amount=10), fact("k3", amount=5)], attrs)
    assert (again.revenue_counted, again.revenue_repeated) == (1, 1)
    assert await state.revenue_totals("u1") == Totals(12.5, 2, 1)
    [*_, last] = await state.pending_contacts(0)
    assert last.attributes["LTV"] == 12.5 and last.attributes["ORDERS"] == 2

    await state.close()  # a restart: the ledger is in the file
    reopened = await StateStore.open(tmp_path / "state.db")
    try:
        repeat = await reopened.fold_contacts([], [fact("k1", amount=10), fact("k3", amount=5)], attrs)
        assert repeat.revenue_counted == 0 and await reopened.revenue_totals("u1") == Totals(12.5, 2, 1)
        assert (await reopened.fold_contacts([snap("u9")], [], attrs)).new == 1
        assert (await reopened.pending_contacts(0))[-1].seq == last.seq + 1, "seqs continue after a restart"
    finally:
        await reopened.close()


async def test_a_key_repeated_within_a_batch_counts_once_and_totals_add_up_fact_by_fact(state: StateStore):
    await state.fold_contacts([], [fact("k0", amount=0.1)], attrs)
    amounts = [0.2, 0.7, -0.3, 1e-9, 123.456]
    facts = [fact(f"k{i + 1}", amount=a) for i, a in enumerate(amounts)]
    facts += [fact("k1", amount=99.0), fact("k0", amount=99.0), fact("b1", user="u2", amount=-4.0),
              fact("b1", user="u2", amount=-4.0)]
    result = await state.fold_contacts([snap(), snap("u2")], facts, attrs)
    assert (result.revenue_counted, result.revenue_repeated) == (6, 3), "the first of a key counts, only once"
    expected = 0.1
    for amount in amounts:  # as SQLite adds one fact at a time
        expected += amount
    assert await state.revenue_totals("u1") == Totals(expected, 5, 1)
    assert await state.revenue_totals("u2") == Totals(-4.0, 0, 1)


async def test_revenue_alone_updates_a_known_user_and_waits_for_an_unknown_one(state: StateStore):
    await state.fold_contacts([snap()], [], attrs)
    result = await state.fold_contacts([], [fact("k1"), fact("k2", user="stranger")], attrs)
    assert (result.changed, result.new) == (1, 0)
    assert await state.contact_row("stranger") is None
    assert (await state.fold_contacts([snap("stranger")], [], attrs)).new == 1
    assert (await state.contact_row("stranger"))["attributes"]["LTV"] == 10.0


async def test_identified_contacts_keep_their_brevo_identity(state: StateStore):
    await state.fold_contacts([snap(first_name="Ana")], [], attrs)
    await state.contacts_identified([("u1", "ana@example.org", 4711)])
    await state.contacts_identified([("u1", "ana@example.org", None)])
    [pending] = await state.pending_contacts(0)
    assert (pending.in_brevo, pending.brevo_email, pending.brevo_id) == (True, "ana@example.org", 4711)
    await state.fold_contacts([snap(s="2024-01-15 10:00:09.000000", first_name="Changed")], [], attrs)
    [pending] = await state.pending_contacts(1)
    assert pending.brevo_id == 4711, "a fold never forgets what Brevo told us"


async def _updated_at(state: StateStore, user: str) -> float:
    return await state._run(
        lambda conn: conn.execute("SELECT updated_at FROM contacts WHERE user_id = ?", (user,)).fetchone()[0])


async def test_a_reread_row_is_not_written_again_but_a_widened_one_is(state: StateStore):
    await state.fold_contacts([snap(first_name="Ana")], [], attrs, now=100.0)
    again = await state.fold_contacts([snap(first_name="Ana")], [], attrs, now=200.0)
    assert again.unchanged == 1
    assert await _updated_at(state, "u1") == 100.0, "the stored row is the re-read one: not written"

    older = snap(t="2024-01-10T08:00:00.000Z", first_name="Old")
    widened = await state.fold_contacts([older], [], attrs, now=300.0)
    assert widened.unchanged == 1, "nothing Brevo would see changed"
    assert await _updated_at(state, "u1") == 300.0, "first_seen moved: the row is written"
    row = await state.contact_row("u1")
    assert row["first_seen"] == "2024-01-10T08:00:00.000Z" and row["sources"] == {"first_name": "Ana"}
    assert [p.seq for p in await state.pending_contacts(0)] == [1]


async def test_key_lists_read_the_same_rows_with_and_without_json_each(state: StateStore, monkeypatch):
    from amplitude_brevo.state import contacts

    users = [f"u{n}" for n in range(700)]
    await state.fold_contacts([snap(user) for user in users], [fact(f"k{n}", f"u{n}") for n in range(700)], attrs)
    wanted = [*users[::3], "nobody"]
    with_json = await state._run(contacts._rows, wanted)
    monkeypatch.setattr(contacts, "_JSON_EACH", False)
    padded = await state._run(contacts._rows, wanted)
    assert padded == with_json and len(padded) == len(wanted) - 1
    assert await state._run(contacts._totals, ["u1", "nobody"]) == {"u1": Totals(10.0, 1, 0)}


async def test_a_pending_body_carries_the_stored_attributes_as_they_are(state: StateStore):
    import orjson

    await state.fold_contacts([snap(first_name="Ana", plan="pro", zeta=1.5, alpha=True)], [], attrs)
    [pending] = await state.pending_contacts(0)
    stored = await state._run(
        lambda conn: conn.execute("SELECT attributes FROM contacts WHERE user_id = 'u1'").fetchone()[0])
    assert pending.attributes_json == stored and pending.attributes == orjson.loads(stored)
    assert pending.body() == orjson.dumps({
        "ext_id": "u1", "email": "ana@example.org", "attributes": orjson.loads(stored), "in_brevo": False,
        "brevo_email": None, "brevo_id": None, "seq": 1,
    }), "the same bytes as encoding the decoded attributes"
