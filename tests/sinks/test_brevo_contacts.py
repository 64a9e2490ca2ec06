"""BrevoContactsSink against the Brevo simulator: creates (one by one, or an import and its process), batch
updates by id or email, updates by ext_id, contacts deleted in Brevo, email changes, conflicts, invalid emails,
budgets, stop during an import, dry runs.

Where the simulator does not yet answer as the reference's field reports say (§1.5: a 404 naming the unknown
positions of a batch, `metadata.duplicate_identifiers`, an import report's CSV on a reachable URL, a process
still running), `field_reports` puts a small loopback proxy in front of it that does. Those tests move to the
simulator itself once it answers so (they are marked `field_reports` in their names).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from amplitude_brevo.pipeline.acks import OffsetTracker
from amplitude_brevo.pipeline.items import Item
from amplitude_brevo.sandbox.brevo_sim import EMAIL_RE, BucketLimit, ContactPatch
from amplitude_brevo.secrets import Secret
from amplitude_brevo.sinks.brevo_client import Stopping
from amplitude_brevo.sinks.brevo_contacts import BrevoContactsSink, Identity
from tests.sinks.support import HOUR, KEY, Env, Limit, RecordingAcks, brevo_env, tracker

FAST = {"contacts": BucketLimit(1000, 1.0), "other": BucketLimit(1000, 3600.0)}
BUDGETS = {"brevo_contacts": Limit(1000, 1), "brevo_other": Limit(1000, 3600)}


@asynccontextmanager
async def contacts_env(tmp_path: Any, budgets: dict[str, Limit] | None = None, **kwargs: Any) -> AsyncIterator[Env]:
    async with brevo_env(tmp_path, limits=FAST, budgets={**BUDGETS, **(budgets or {})}, **kwargs) as env:
        yield env


class Recorder:
    """The `identified` callback: what the sink said Brevo holds, call by call."""

    def __init__(self) -> None:
        self.calls: list[list[Identity]] = []

    async def __call__(self, written: list[Identity]) -> None:
        self.calls.append(list(written))

    @property
    def all(self) -> dict[str, tuple[str | None, int | None]]:
        return {ext_id: (email, cid) for call in self.calls for ext_id, email, cid in call}


def sink_for(env: Env, identified: Recorder, **kwargs: Any) -> BrevoContactsSink:
    kwargs.setdefault("batch_size", 10)
    sink = BrevoContactsSink(queue=None, client=env.client, acks=env.acks, identified=identified, **kwargs)
    sink.poll_first = sink.poll_max = 0.01
    return sink


def contact(ext_id: str, email: str | None = None, *, known: Any = None, **attributes: Any) -> dict[str, Any]:
    """A contact item's body; `known` = the Brevo contact the daemon knows it as (its id and email)."""
    body: dict[str, Any] = {"ext_id": ext_id, "email": email, "attributes": attributes or {"PLAN": "pro"},
                            "in_brevo": False, "brevo_email": None, "brevo_id": None, "seq": 1}
    if known is not None:
        body.update(in_brevo=True, brevo_email=known.email, brevo_id=known.id)
    return body


def items(*bodies: dict[str, Any], source: OffsetTracker | None = None) -> list[Item]:
    source = source or tracker()
    token = source.token(HOUR)
    source.add(HOUR, len(bodies))
    source.seal(HOUR)
    return [Item(None, orjson.dumps(body), token) for body in bodies]


def existing(env: Env, ext_id: str, email: str | None = None, **attributes: Any) -> Any:
    """A contact already in Brevo."""
    return env.brevo.create_contact(ContactPatch(email=email, ext_id=ext_id, attributes=attributes))


def in_brevo(env: Env) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """ext_id → (email, attributes) of every contact the simulator holds (one per ext_id, asserted)."""
    ext_ids = Counter(c.ext_id for c in env.brevo.contacts.values())
    assert max(ext_ids.values(), default=1) == 1, ext_ids
    return {c.ext_id: (c.email, c.attributes) for c in env.brevo.contacts.values()}


def requests(env: Env) -> list[str]:
    return [path for _, path, _ in env.log]


def assert_settled_once(env: Env, batch: list[Item]) -> None:
    settled = [id(item) for _, got, _ in env.acks.settled for item in got]
    assert sorted(settled) == sorted(id(item) for item in batch), "every item settled, each once"


def assert_budgets_spent_as_routed(env: Env, paths: list[str]) -> None:
    """Every /contacts call spent brevo_contacts, every /processes poll brevo_other, nothing else was sent."""
    budgets = env.client.budgets
    contacts_calls = sum(1 for p in paths if p.startswith("/v3/contacts"))
    polls = sum(1 for p in paths if p.startswith("/v3/processes"))
    assert contacts_calls + polls == len(paths)
    assert (budgets["brevo_contacts"].acquired_total, budgets["brevo_other"].acquired_total) == (contacts_calls, polls)


async def test_few_new_contacts_are_created_one_by_one_and_their_ids_recorded(tmp_path):
    async with contacts_env(tmp_path) as env:
        seen = Recorder()
        sink = sink_for(env, seen, import_min=6)
        batch = items(*(contact(f"u{i}", f"u{i}@example.org", FIRSTNAME=f"N{i}") for i in range(4)),
                      contact("u9", None, PLAN="free"))
        await sink.deliver(batch)
        assert requests(env) == ["/v3/contacts"] * 5
        assert in_brevo(env) == {**{f"u{i}": (f"u{i}@example.org", {"FIRSTNAME": f"N{i}"}) for i in range(4)},
                                 "u9": (None, {"PLAN": "free"})}
        ids = {c.ext_id: c.id for c in env.brevo.contacts.values()}
        assert seen.all == {**{f"u{i}": (f"u{i}@example.org", ids[f"u{i}"]) for i in range(4)}, "u9": (None, ids["u9"])}
        assert (sink.stats.created, sink.stats.updated, sink.stats.imported, sink.stats.dead_lettered) == (5, 0, 0, 0)
        assert_settled_once(env, batch)
        assert await env.state.get_checkpoint("export.next_hour") == "20261101T01"
        assert_budgets_spent_as_routed(env, requests(env))


async def test_an_existing_contact_created_again_is_updated_and_identified_without_an_id(tmp_path):
    async with contacts_env(tmp_path) as env:
        existing(env, "u1", "old@example.org", PLAN="free")
        seen = Recorder()
        sink = sink_for(env, seen)
        await sink.deliver(items(contact("u1", "ana@example.org")))
        assert in_brevo(env) == {"u1": ("ana@example.org", {"PLAN": "pro"})}, "found by ext_id: one contact"
        assert seen.all == {"u1": ("ana@example.org", None)}, "204: Brevo said no id"
        assert (sink.stats.created, sink.stats.updated) == (0, 1)


async def test_many_new_contacts_go_through_one_import_into_a_list_it_creates(tmp_path):
    async with contacts_env(tmp_path) as env:
        seen = Recorder()
        sink = sink_for(env, seen, import_min=50)
        batch = items(*(contact(f"u{i}", f"u{i}@example.org", LTV=float(i)) for i in range(59)), contact("u59"))
        with capture_logs() as logs:
            await sink.deliver(batch)
        paths = requests(env)
        assert Counter(paths) == {"/v3/contacts/lists": 2, "/v3/contacts/folders": 1, "/v3/contacts/import": 1,
                                  "/v3/processes/1": 1}
        (created,) = [lst for lst in env.brevo.lists.values() if lst.name == "Amplitude users"]
        assert created.folder_id == 1, "in the account's first folder"
        assert [e["list_id"] for e in logs if e["event"] == "brevo.contacts.import_list"] == [created.id]
        held = in_brevo(env)
        assert held["u3"] == ("u3@example.org", {"LTV": 3.0}) and held["u59"] == (None, {"PLAN": "pro"})
        assert len(held) == 60 and len(env.brevo.members(created.id)) == 60
        assert seen.all == {**{f"u{i}": (f"u{i}@example.org", None) for i in range(59)}, "u59": (None, None)}
        assert sink.stats.imported == 60 and sink.stats.created == 0
        assert_settled_once(env, batch)
        assert_budgets_spent_as_routed(env, paths)
        # The list is looked for once per sink lifetime.
        await sink.deliver(items(*(contact(f"v{i}", f"v{i}@example.org") for i in range(50))))
        assert Counter(requests(env))["/v3/contacts/lists"] == 2 and len(env.brevo.members(created.id)) == 110


async def test_new_and_known_contacts_of_one_batch_are_written_at_once(tmp_path):
    # The updates do not wait for the import, nor the import for the updates: Brevo holds each
    # /contacts/batch request here until the import has arrived (sent one after the other, this would hang).
    import_sent = asyncio.Event()

    async def hold(request: web.Request) -> None:
        if request.path == "/v3/contacts/import":
            import_sent.set()
        elif request.path == "/v3/contacts/batch":
            await asyncio.wait_for(import_sent.wait(), 5)

    async with contacts_env(tmp_path, hold=hold) as env:
        known = [existing(env, f"k{i}", f"k{i}@example.org", PLAN="free") for i in range(3)]
        sink = sink_for(env, Recorder(), import_min=50)
        batch = items(*(contact(f"k{i}", f"k{i}@example.org", known=k) for i, k in enumerate(known)),
                      *(contact(f"n{i}", f"n{i}@example.org") for i in range(50)))
        await asyncio.wait_for(sink.deliver(batch), 10)
        assert len(in_brevo(env)) == 53 and sink.stats.imported == 50 and sink.stats.updated == 3
        assert_settled_once(env, batch)


@pytest.mark.parametrize("setup", ["named list", "no folder", "configured"])
async def test_the_import_list_is_found_by_name_or_created_or_configured(tmp_path, setup):
    async with contacts_env(tmp_path) as env:
        kwargs: dict[str, Any] = {}
        if setup == "named list":
            target = env.brevo.create_list("Amplitude users", 1).id
        elif setup == "no folder":
            env.brevo.folders.clear()
            env.brevo.lists.clear()
        else:
            kwargs["import_list_id"] = target = 12
        sink = sink_for(env, Recorder(), import_min=3, **kwargs)
        await sink.deliver(items(*(contact(f"u{i}", f"u{i}@example.org") for i in range(3))))
        calls = [p for p in requests(env) if p.startswith(("/v3/contacts/lists", "/v3/contacts/folders"))]
        if setup == "named list":
            assert calls == ["/v3/contacts/lists"]
        elif setup == "no folder":
            assert calls == ["/v3/contacts/lists", "/v3/contacts/folders", "/v3/contacts/folders", "/v3/contacts/lists"]
            (folder,) = env.brevo.folders.items()
            assert folder[1] == "Amplitude"
            (made,) = env.brevo.lists.values()
            assert (made.name, made.folder_id) == ("Amplitude users", folder[0])
            target = made.id
        else:
            assert calls == []
        assert {c.label() for c in env.brevo.members(target)} == {"u0", "u1", "u2"}


async def test_import_requests_stay_under_the_body_limit(tmp_path):
    bodies: list[int] = []

    async def measure(request: web.Request) -> None:
        if request.path == "/v3/contacts/import":
            bodies.append(len(await request.read()))

    async with contacts_env(tmp_path, hold=measure) as env:
        sink = sink_for(env, Recorder(), import_min=10, import_list_id=12)
        sink.import_max_bytes = 1500
        batch = items(*(contact(f"user-{i}", f"user-{i}@example.org", FIRSTNAME="x" * 20) for i in range(40)))
        await sink.deliver(batch)
        assert len(bodies) > 2 and max(bodies) <= 1500 and min(bodies) > 750, bodies
        assert Counter(requests(env))["/v3/processes/1"] == 1 and len(env.brevo.processes) == len(bodies)
        assert len(in_brevo(env)) == 40 and sink.stats.imported == 40
        assert_settled_once(env, batch)


async def test_false_booleans_are_written_after_the_import_that_creates_their_contacts(tmp_path):
    # A boolean false in an import's jsonBody was reported not to apply (reference §1.5; the simulator
    # leaves it out too): the import creates the contacts, then one /contacts/batch request (by email) and
    # a PUT by ext_id (no email) write the falses. Nothing goes one by one that has an email.
    sent: list[dict[str, Any]] = []

    async def capture(request: web.Request) -> None:
        if request.path in ("/v3/contacts/batch", "/v3/contacts/import"):
            sent.append(orjson.loads(await request.read()))

    async with contacts_env(tmp_path, hold=capture) as env:
        env.brevo.attributes["OPTED_IN"] = {"name": "OPTED_IN", "category": "normal", "type": "boolean"}
        sink = sink_for(env, Recorder(), import_min=3, import_list_id=12)
        batch = items(*(contact(f"u{i}", f"u{i}@example.org", OPTED_IN=i != 1) for i in range(4)),
                      contact("u4", OPTED_IN=False), contact("u5", "u5@example.org", OPTED_IN=False))
        await sink.deliver(batch)
        assert Counter(requests(env)) == {"/v3/contacts/import": 1, "/v3/processes/1": 1, "/v3/contacts/batch": 1,
                                          "/v3/contacts/u4": 1}
        held = in_brevo(env)
        assert {u: attrs["OPTED_IN"] for u, (_, attrs) in held.items()} == {
            "u0": True, "u1": False, "u2": True, "u3": True, "u4": False, "u5": False}
        assert sent[0]["jsonBody"][1]["attributes"] == {"EXT_ID": "u1"}, "no false in the import"
        assert sent[1] == {"contacts": [{"email": "u1@example.org", "attributes": {"OPTED_IN": False}},
                                        {"email": "u5@example.org", "attributes": {"OPTED_IN": False}}]}
        assert (sink.stats.imported, sink.stats.created) == (6, 0)
        assert_settled_once(env, batch)
        assert await env.state.list_dead_letters() == []


async def test_falses_brevo_refuses_after_an_import_dead_letter_only_their_contact(tmp_path):
    async def refuse(request: web.Request) -> None:
        if request.path == "/v3/contacts/batch" or request.path == "/v3/contacts/u1":
            raise web.HTTPBadRequest(text='{"code": "invalid_parameter", "message": "attribute refused"}',
                                     content_type="application/json")

    async with contacts_env(tmp_path, hold=refuse) as env:
        env.brevo.attributes["OPTED_IN"] = {"name": "OPTED_IN", "category": "normal", "type": "boolean"}
        sink = sink_for(env, Recorder(), import_min=3, import_list_id=12)
        batch = items(*(contact(f"u{i}", f"u{i}@example.org", OPTED_IN=i not in (1, 2)) for i in range(4)))
        await sink.deliver(batch)
        letters = await env.state.list_dead_letters()
        assert [(orjson.loads(d.item)["ext_id"], d.reason) for d in letters] == [
            ("u1", "imported, but OPTED_IN = false not written: Brevo refused the contact: "
                   "HTTP 400 invalid_parameter: attribute refused")]
        assert in_brevo(env)["u2"][1]["OPTED_IN"] is False, "the refused batch's other contact went on its own"
        assert_settled_once(env, batch)


async def test_known_contacts_are_updated_in_batches_keyed_by_id_or_unchanged_email(tmp_path):
    sent: list[dict[str, Any]] = []

    async def capture(request: web.Request) -> None:
        if request.path == "/v3/contacts/batch":
            sent.extend(orjson.loads(await request.read())["contacts"])

    async with contacts_env(tmp_path, hold=capture) as env:
        a = existing(env, "u1", "ana@example.org", PLAN="free")
        b = existing(env, "u2", "bo@example.org", PLAN="free")
        c = existing(env, "u3", "cy@example.org", PLAN="free")
        seen = Recorder()
        sink = sink_for(env, seen)
        batch = items(
            contact("u1", "ana@example.org", known=a, PLAN="pro"),  # id known, email unchanged
            contact("u2", "bob@example.org", known=b, PLAN="pro"),  # id known, email changed
            contact("u3", "cy@example.org", known=SimpleNamespace(id=None, email=c.email), PLAN="pro"),  # email
        )
        await sink.deliver(batch)
        assert requests(env) == ["/v3/contacts/batch"]
        assert sent == [{"id": a.id, "attributes": {"PLAN": "pro"}, "ext_id": "u1"},
                        {"id": b.id, "attributes": {"PLAN": "pro", "EMAIL": "bob@example.org"}, "ext_id": "u2"},
                        {"email": "cy@example.org", "attributes": {"PLAN": "pro"}}]
        assert in_brevo(env) == {"u1": ("ana@example.org", {"PLAN": "pro"}), "u2": ("bob@example.org", {"PLAN": "pro"}),
                                 "u3": ("cy@example.org", {"PLAN": "pro"})}
        assert seen.all == {"u1": ("ana@example.org", a.id), "u2": ("bob@example.org", b.id),
                            "u3": ("cy@example.org", None)}
        assert (sink.stats.updated, sink.stats.batch_requests, sink.stats.delivered) == (3, 1, 3)
        assert_settled_once(env, batch)
        assert_budgets_spent_as_routed(env, requests(env))


@pytest.mark.parametrize("id_known", [True, False], ids=["id known", "no id"])
async def test_an_email_change_keeps_one_contact(tmp_path, id_known):
    async with contacts_env(tmp_path) as env:
        old = existing(env, "u1", "old@example.org", PLAN="free")
        seen = Recorder()
        known = old if id_known else SimpleNamespace(id=None, email=old.email)
        await sink_for(env, seen).deliver(items(contact("u1", "new@example.org", known=known, PLAN="pro")))
        expected = "/v3/contacts/batch" if id_known else "/v3/contacts/u1"
        assert requests(env) == [expected]
        assert in_brevo(env) == {"u1": ("new@example.org", {"PLAN": "pro"})}, "the same contact, never a second"
        assert list(env.brevo.contacts) == [old.id]
        assert seen.all == {"u1": ("new@example.org", old.id if id_known else None)}


async def test_an_update_by_ext_id_that_brevo_does_not_find_creates_the_contact(tmp_path):
    async with contacts_env(tmp_path) as env:
        seen = Recorder()
        sink = sink_for(env, seen)
        odd = "a/b c+d"  # an ext_id that needs URL-encoding
        unknown = SimpleNamespace(id=None, email=None)
        await sink.deliver(items(contact(odd, "ana@example.org", known=unknown)))
        assert requests(env) == [f"/v3/contacts/{odd}", "/v3/contacts"] and env.log[0][2] == 404
        assert in_brevo(env) == {odd: ("ana@example.org", {"PLAN": "pro"})}
        assert seen.all == {odd: ("ana@example.org", next(iter(env.brevo.contacts)))}
        assert sink.stats.created == 1
        # Found by that ext_id next time: its path was encoded so that the simulator reads it back whole.
        await sink.deliver(items(contact(odd, "bo@example.org", known=unknown, PLAN="free")))
        assert env.log[2][1:] == (f"/v3/contacts/{odd}", 204)
        assert in_brevo(env) == {odd: ("bo@example.org", {"PLAN": "free"})}


async def test_an_invalid_email_dead_letters_that_contact_only(tmp_path):
    async with contacts_env(tmp_path) as env:
        known = [existing(env, f"u{i}", f"u{i}@example.org", PLAN="free") for i in range(4)]
        seen = Recorder()
        sink = sink_for(env, seen)
        batch = items(*(contact(f"u{i}", "not-an-email" if i == 2 else f"u{i}@example.org", known=known[i])
                        for i in range(4)),
                      contact("n1", "bad@@example"), contact("n2", "n2@example.org"))
        await sink.deliver(batch)
        letters = await env.state.list_dead_letters()
        assert sorted((orjson.loads(d.item)["ext_id"], d.reason, d.sink) for d in letters) == [
            ("n1", "Brevo refused the contact: HTTP 400 invalid_parameter: Invalid email address",
             "brevo_contacts"),
            ("u2", "Brevo refused the contact: HTTP 400 invalid_parameter: Invalid email address",
             "brevo_contacts"),
        ]
        held = in_brevo(env)
        assert {k: v[1]["PLAN"] for k, v in held.items()} == {"u0": "pro", "u1": "pro", "u2": "free", "u3": "pro",
                                                             "n2": "pro"}
        assert set(seen.all) == {"u0", "u1", "u3", "n2"}, "a refused write is not identified"
        assert (sink.stats.updated, sink.stats.created, sink.stats.dead_lettered) == (3, 1, 2)
        assert requests(env).count("/v3/contacts/u2") == 1, "the batch was split down to u2's own request"
        assert_settled_once(env, batch)
        assert await env.state.get_checkpoint("export.next_hour") == "20261101T01"


async def test_a_contact_deleted_in_brevo_is_found_by_splitting_and_created_with_the_simulator_as_it_is(tmp_path):
    # The simulator answers an unknown batch contact with a 400 naming nothing: split, PUT, 404, create.
    async with contacts_env(tmp_path) as env:
        known = [existing(env, f"u{i}", f"u{i}@example.org") for i in range(4)]
        env.brevo.delete_contact(known[2])
        sink = sink_for(env, Recorder())
        await sink.deliver(items(*(contact(f"u{i}", f"u{i}@example.org", known=known[i], PLAN="pro")
                                   for i in range(4))))
        assert in_brevo(env) == {f"u{i}": (f"u{i}@example.org", {"PLAN": "pro"}) for i in range(4)}
        assert (sink.stats.updated, sink.stats.created, sink.stats.dead_lettered) == (3, 1, 0)


@pytest.mark.parametrize("waiting", ["polling", "between polls"])
async def test_a_stop_during_an_import_releases_what_brevo_did_not_answer_for(tmp_path, waiting):
    released: list[Item] = []

    class Acks(RecordingAcks):
        def release(self, got: Any) -> None:
            released.extend(got)
            super().release(got)

    async with contacts_env(tmp_path) as env, field_reports(env, pending_polls=10_000) as proxy:
        env.acks = Acks(env.state)
        known = [existing(env, f"k{i}", f"k{i}@example.org") for i in range(3)]
        sink = sink_for(env, Recorder(), import_min=5, import_list_id=12)
        updates = items(*(contact(f"k{i}", f"k{i}@example.org", known=known[i]) for i in range(3)))
        creates = items(*(contact(f"u{i}", f"u{i}@example.org") for i in range(6)), source=updates[0].token.tracker)
        if waiting == "between polls":
            sink.poll_first = 30.0  # stopping does not wait for the next look at the process
        delivering = asyncio.create_task(sink.deliver(updates + creates))
        async with asyncio.timeout(10):
            while proxy.polled < (3 if waiting == "polling" else 0) or len(proxy.log) < 2:
                await asyncio.sleep(0.01)
        sink.stop()
        stopped = time.monotonic()
        with pytest.raises(Stopping):
            await delivering
        assert time.monotonic() - stopped < 1
        assert [got for _, got, _ in env.acks.settled] == [updates], "the batch update was answered and settled"
        assert released == creates, "the import's contacts were not: released, to be read again"
        assert creates[0].token.tracker.outstanding == 6
        assert await env.state.get_checkpoint("export.next_hour") is None


async def test_a_spent_contacts_budget_is_waited_out_not_worked_around_with_single_requests(tmp_path):
    # The single requests spend the same budget: sending them instead of the batch would only cost more.
    tried: list[str] = []

    class Watched(BrevoContactsSink):
        async def _call_single(self, batch: Any, method: str, path: str, body: Any) -> Any:
            tried.append(path)
            return await super()._call_single(batch, method, path, body)

    async with contacts_env(tmp_path, budgets={"brevo_contacts": Limit(1, 3600)}) as env:
        known = [existing(env, f"u{i}", f"u{i}@example.org") for i in range(3)]
        await env.client.budgets["brevo_contacts"].acquire()  # someone spent this hour's request
        sink = Watched(queue=None, client=env.client, acks=env.acks, identified=Recorder(), batch_size=10)
        with capture_logs() as logs:
            delivering = asyncio.create_task(sink.deliver(items(*(contact(f"u{i}", known=known[i]) for i in range(3)))))
            for _ in range(20):
                await asyncio.sleep(0)
            sink.stop()
            with pytest.raises(Stopping):
                await delivering
        assert tried == [] and env.log == []
        assert "brevo.batch.paused" not in [e["event"] for e in logs]


async def test_dry_run_logs_each_contacts_route_and_sends_nothing(tmp_path):
    async with contacts_env(tmp_path) as env:
        a = SimpleNamespace(id=7, email="ana@example.org")
        sink = sink_for(env, Recorder(), dry_run=True)
        batch = items(contact("u1", "ana@example.org", known=a), contact("u2", "bo@example.org"),
                      contact("u3", "cy@example.org", known=SimpleNamespace(id=None, email="old@example.org")))
        with capture_logs() as logs:
            await sink.deliver(batch)
        assert env.log == [] and env.acks.dry == [("brevo_contacts", batch)]
        assert [(e["path"], e["would_send"]) for e in logs if e["event"] == "brevo.dry_run.contact"] == [
            ("/contacts/batch", {"id": 7, "attributes": {"PLAN": "pro"}, "ext_id": "u1"}),
            ("/contacts", {"email": "bo@example.org", "ext_id": "u2", "attributes": {"PLAN": "pro"},
                           "updateEnabled": True}),
            ("/contacts/u3?identifierType=ext_id", {"attributes": {"PLAN": "pro", "EMAIL": "cy@example.org"}}),
        ]
        assert sink.stats.would_send == 3


async def test_reload_reconfigures_the_client_batch_size_and_import_settings(tmp_path):
    async with contacts_env(tmp_path) as env:
        sink = sink_for(env, Recorder(), import_list_id=12)
        brevo = SimpleNamespace(api_url="http://127.0.0.1:9/v3", api_key=Secret("xkeysib-new"),
                                contacts_batch_size=40, contacts_import_min=7, import_list_id=None)
        sink.reload(SimpleNamespace(connectors=SimpleNamespace(brevo=brevo)))
        assert env.client.base_url == "http://127.0.0.1:9/v3"
        assert (sink.sizer.start, sink.import_min, sink.import_list_id) == (40, 7, None)
        assert sink.sizer.maximum == 40, "the configured size is the size"


async def test_contacts_batch_requests_keep_to_the_configured_size_however_many_brevo_accepts(tmp_path):
    sizes: list[int] = []

    async def capture(request: web.Request) -> None:
        if request.path == "/v3/contacts/batch":
            sizes.append(len(orjson.loads(await request.read())["contacts"]))

    async with contacts_env(tmp_path, hold=capture) as env:
        known = [existing(env, f"u{i}", f"u{i}@example.org", PLAN="free") for i in range(35)]
        sink = sink_for(env, Recorder(), batch_size=10)
        delivered: list[Item] = []
        for plan in ("pro", "team"):
            batch = items(*(contact(f"u{i}", f"u{i}@example.org", known=k, PLAN=plan) for i, k in enumerate(known)))
            await sink.deliver(batch)
            delivered += batch
        assert_settled_once(env, delivered)
    assert sorted(sizes) == [5, 5] + [10] * 6, "accepted requests never grow past contacts_batch_size"


async def test_a_malformed_item_is_dead_lettered_not_sent(tmp_path):
    async with contacts_env(tmp_path) as env:
        batch = items(contact("u1"), {"email": "x@example.org"})
        await sink_for(env, Recorder()).deliver(batch)
        assert requests(env) == ["/v3/contacts"]
        (letter,) = await env.state.list_dead_letters()
        assert (letter.item, letter.reason) == (batch[1].body, "not a contact item: nothing sent")
        assert_settled_once(env, batch)


# -- answers the simulator does not give yet (reference §1.5 field reports): a proxy in front of it --------------


class FieldReports:
    """Brevo as the field reports describe it, in front of the simulator: /contacts/batch answers 404 "No contact
    found for indexes …" for contacts it does not hold; an email owned by another contact is a 400 with
    `metadata.duplicate_identifiers` (under `conflict_code`); an import's `invalid_emails` report is a CSV at a
    loopback URL (answering `report_status`); a process stays `in_process` for `pending_polls` polls, then
    reports `process_status` (or the simulator's)."""

    def __init__(self, env: Env, *, pending_polls: int = 0, process_status: str | None = None,
                 report_status: int = 200, conflict_code: str = "invalid_parameter") -> None:
        self.env = env
        self.pending_polls = pending_polls
        self.process_status = process_status
        self.report_status = report_status
        self.conflict_code = conflict_code
        self.polls: Counter[int] = Counter()
        self.invalid: dict[int, list[str]] = {}
        self.log: list[tuple[str, str, int]] = []  # every request the client sent, and its answer's status
        self.server: TestServer | None = None

    @property
    def polled(self) -> int:
        return sum(self.polls.values())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=12 * 1024 * 1024)
        app.router.add_get("/files/{pid}/invalid_emails.csv", self.report)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    def _known(self, entry: dict[str, Any]) -> bool:
        state = self.env.brevo
        if "id" in entry:
            return entry["id"] in state.contacts
        return "email" not in entry or str(entry["email"]).lower() in state.by_email

    async def forward(self, request: web.Request) -> web.Response:
        response = await self._answer(request)
        self.log.append((request.method, request.path, response.status))
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        body, path = await request.read(), request.path
        if path == "/v3/contacts/batch":
            missing = [n for n, entry in enumerate(orjson.loads(body)["contacts"]) if not self._known(entry)]
            if missing:
                message = "No contact found for indexes " + ",".join(map(str, missing))
                return web.json_response({"code": "document_not_found", "message": message}, status=404)
        pid = int(path.rsplit("/", 1)[1]) if path.startswith("/v3/processes/") else None
        if pid is not None:
            self.polls[pid] += 1
            if self.polls[pid] <= self.pending_polls:
                return web.json_response({"id": pid, "name": "IMPORTUSER", "status": "in_process"})
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("api-key", "content-type", "accept")}
        url = str(self.env.server.make_url(request.path_qs))
        async with self.env.client.session.request(request.method, url, data=body or None, headers=headers) as resp:
            status, raw = resp.status, await resp.read()
            passed = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-sib-")}
        answer = orjson.loads(raw) if raw else None
        if status == 400 and answer.get("code") == "duplicate_parameter":
            answer = {"code": self.conflict_code, "message": "email is already associated with another Contact",
                      "metadata": {"duplicate_identifiers": ["email"]}}
        if path == "/v3/contacts/import" and status == 202:
            rows = orjson.loads(body)["jsonBody"]
            self.invalid[answer["processId"]] = [r["email"] for r in rows if "email" in r and not EMAIL_RE.match(r["email"])]
        if pid is not None and status == 200:
            if self.process_status:
                answer["status"] = self.process_status
            report = answer.get("info", {}).get("import")
            if report is not None and self.server is not None:
                report["invalid_emails"] = (str(self.server.make_url(f"/files/{pid}/invalid_emails.csv"))
                                            if self.invalid.get(pid) else None)
        if answer is None:
            return web.Response(status=status, headers=passed)
        return web.Response(status=status, body=orjson.dumps(answer), content_type="application/json", headers=passed)

    async def report(self, request: web.Request) -> web.Response:
        if self.report_status != 200:
            return web.Response(status=self.report_status, text="gone")
        rows = self.invalid.get(int(request.match_info["pid"]), [])
        return web.Response(text="EMAIL;REASON\n" + "".join(f'"{email}";invalid email\n' for email in rows))


@asynccontextmanager
async def field_reports(env: Env, **knobs: Any) -> AsyncIterator[FieldReports]:
    proxy = FieldReports(env, **knobs)
    async with TestServer(proxy.app()) as server:
        proxy.server = server
        env.client.reconfigure(base_url=str(server.make_url("/v3")), api_key=Secret(KEY))
        yield proxy


async def test_field_reports_a_contact_deleted_in_brevo_is_created_and_the_rest_of_its_batch_updated(tmp_path):
    async with contacts_env(tmp_path) as env, field_reports(env) as proxy:
        known = [existing(env, f"u{i}", f"u{i}@example.org", PLAN="free") for i in range(6)]
        for gone in (known[1], known[3]):
            env.brevo.delete_contact(gone)
        seen = Recorder()
        sink = sink_for(env, seen)
        batch = items(*(contact(f"u{i}", f"u{i}@example.org", known=known[i]) for i in range(6)))
        await sink.deliver(batch)
        assert [(p, s) for _, p, s in proxy.log] == [("/v3/contacts/batch", 404), ("/v3/contacts/batch", 204),
                                                     ("/v3/contacts", 201), ("/v3/contacts", 201)]
        assert in_brevo(env) == {f"u{i}": (f"u{i}@example.org", {"PLAN": "pro"}) for i in range(6)}
        new_ids = {c.ext_id: c.id for c in env.brevo.contacts.values()}
        assert seen.all == {f"u{i}": (f"u{i}@example.org", new_ids[f"u{i}"]) for i in range(6)}
        assert (sink.stats.updated, sink.stats.created, sink.stats.dead_lettered) == (4, 2, 0)
        assert await env.state.list_dead_letters() == []
        assert_settled_once(env, batch)


async def test_field_reports_deleted_contacts_of_a_large_batch_are_imported(tmp_path):
    async with contacts_env(tmp_path) as env, field_reports(env) as proxy:
        known = [existing(env, f"u{i}", f"u{i}@example.org") for i in range(8)]
        for gone in known[:5]:
            env.brevo.delete_contact(gone)
        sink = sink_for(env, Recorder(), import_min=5, import_list_id=12)
        await sink.deliver(items(*(contact(f"u{i}", f"u{i}@example.org", known=known[i]) for i in range(8))))
        assert [p for _, p, _ in proxy.log] == ["/v3/contacts/batch"] * 2 + ["/v3/contacts/import", "/v3/processes/1"]
        assert len(in_brevo(env)) == 8 and (sink.stats.updated, sink.stats.imported) == (3, 5)


async def test_field_reports_an_email_owned_by_another_contact_is_a_conflict_and_the_rest_is_written(tmp_path):
    async with contacts_env(tmp_path) as env, field_reports(env) as proxy:
        other = existing(env, "someone", "ana@example.org", PLAN="free")
        known = [existing(env, f"u{i}", f"u{i}@example.org", PLAN="free") for i in range(4)]
        u9 = existing(env, "u9", "u9-old@example.org", PLAN="free")
        existing(env, "n1", "n1-old@example.org", PLAN="free")  # in Brevo, though the daemon does not know
        seen = Recorder()
        sink = sink_for(env, seen, import_min=50)
        batch = items(
            *(contact(f"u{i}", "ana@example.org" if i == 1 else f"u{i}@example.org", known=known[i])
              for i in range(4)),  # u1 by id, in a batch
            contact("u9", "ana@example.org", known=SimpleNamespace(id=None, email=u9.email)),  # by ext_id
            contact("n1", "ana@example.org", PLAN="new"),  # a create
        )
        await sink.deliver(batch)
        letters = await env.state.list_dead_letters()
        assert {orjson.loads(d.item)["ext_id"]: d.reason for d in letters} == {
            ext_id: f"email ana@example.org is already used by another Brevo contact; contact ext_id={ext_id} kept "
                    "without it" for ext_id in ("u1", "u9", "n1")
        }
        held = in_brevo(env)
        assert held["someone"] == ("ana@example.org", {"PLAN": "free"}), "the owner is untouched"
        assert held["u1"] == ("u1@example.org", {"PLAN": "pro"}), "kept its email, got the other attributes"
        assert held["u9"] == ("u9-old@example.org", {"PLAN": "pro"}) and held["n1"] == ("n1-old@example.org",
                                                                                         {"PLAN": "new"})
        assert {k: v[1]["PLAN"] for k, v in held.items() if k[0] == "u"} == {k: "pro" for k in ("u0", "u1", "u2",
                                                                                                 "u3", "u9")}
        assert seen.all == {"u0": ("u0@example.org", known[0].id), "u1": ("u1@example.org", known[1].id),
                            "u2": ("u2@example.org", known[2].id), "u3": ("u3@example.org", known[3].id),
                            "u9": ("u9-old@example.org", None), "n1": (None, None)}
        assert other.id in env.brevo.contacts and len(env.brevo.contacts) == 7, "no contact made or lost"
        singles = Counter((m, p, s) for m, p, s in proxy.log if p != "/v3/contacts/batch")
        assert singles == {("PUT", "/v3/contacts/u1", 400): 1, ("PUT", "/v3/contacts/u1", 204): 1,
                           ("PUT", "/v3/contacts/u9", 400): 1, ("PUT", "/v3/contacts/u9", 204): 1,
                           ("POST", "/v3/contacts", 400): 1, ("POST", "/v3/contacts", 204): 1}
        assert sink.stats.dead_lettered == 3 and sink.stats.delivered == 3
        assert_settled_once(env, batch)


async def test_field_reports_an_import_polls_sparingly_and_dead_letters_the_emails_its_report_refuses(tmp_path):
    async with contacts_env(tmp_path) as env, field_reports(env, pending_polls=3) as proxy:
        seen = Recorder()
        sink = sink_for(env, seen, import_min=5, import_list_id=12)
        sink.poll_first, sink.poll_max = 0.01, 0.04
        batch = items(*(contact(f"u{i}", "bad@@example" if i in (2, 4) else f"u{i}@example.org") for i in range(6)))
        await sink.deliver(batch)
        assert [p for _, p, _ in proxy.log] == ["/v3/contacts/import"] + ["/v3/processes/1"] * 4
        letters = await env.state.list_dead_letters()
        assert [(orjson.loads(d.item)["ext_id"], d.reason) for d in letters] == [
            (f"u{i}", "Brevo's import refused the email bad@@example (process 1)") for i in (2, 4)
        ]
        assert set(seen.all) == {"u0", "u1", "u3", "u5"} and set(in_brevo(env)) == {"u0", "u1", "u3", "u5"}
        assert (sink.stats.imported, sink.stats.dead_lettered, sink.stats.import_polls) == (4, 2, 4)
        assert_budgets_spent_as_routed(env, [p for _, p, _ in proxy.log])
        assert_settled_once(env, batch)


async def test_field_reports_an_unreadable_import_report_counts_its_rows_delivered(tmp_path):
    async with contacts_env(tmp_path) as env, field_reports(env, report_status=500):
        sink = sink_for(env, Recorder(), import_min=3, import_list_id=12)
        with capture_logs() as logs:
            await sink.deliver(items(*(contact(f"u{i}", "bad@@example" if i == 0 else None) for i in range(3))))
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["brevo.contacts.import_report_unread"]
        assert await env.state.list_dead_letters() == [] and sink.stats.imported == 3


async def test_field_reports_a_failed_import_sends_its_contacts_one_by_one(tmp_path):
    async with contacts_env(tmp_path) as env, field_reports(env, process_status="failed") as proxy:
        seen = Recorder()
        sink = sink_for(env, seen, import_min=3, import_list_id=12)
        await sink.deliver(items(*(contact(f"u{i}", f"u{i}@example.org") for i in range(3))))
        assert [p for _, p, _ in proxy.log] == ["/v3/contacts/import", "/v3/processes/1"] + ["/v3/contacts"] * 3
        ids = {c.ext_id: c.id for c in env.brevo.contacts.values()}
        assert seen.all == {f"u{i}": (f"u{i}@example.org", None) for i in range(3)}, "upserted: 204 after the import"
        assert len(ids) == 3 and (sink.stats.imported, sink.stats.updated) == (0, 3)


def test_a_batch_body_is_its_entries_in_one_encoding():
    from amplitude_brevo.sinks.brevo_contacts import Contact
    from amplitude_brevo.state.contacts import PendingContact

    bodies = [PendingContact("u1", 1, "a@example.org", b'{"AMP_LTV":12.5,"FIRSTNAME":"Ana"}', True, "a@example.org",
                             None).body(),
              PendingContact("u2", 2, "new@example.org", b'{"PLAN":"pro"}', True, "old@example.org", 42).body()]
    sink = BrevoContactsSink.__new__(BrevoContactsSink)  # batch_body reads nothing of the sink
    entries = [orjson.dumps(Contact.parse(body).batch_entry()) for body in bodies]
    assert sink.batch_body(bodies) == b'{"contacts":[' + b",".join(entries) + b"]}"
