"""The contact outbox: pending rows → items in seq order, one write per user at a time, the checkpoint after
Brevo's answers, and a restart that sends again exactly what was not answered."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from amplitude_brevo.contacts.outbox import ContactOutbox
from amplitude_brevo.pipeline.acks import Acknowledger
from amplitude_brevo.pipeline.dedupe import DedupeRecord
from amplitude_brevo.pipeline.queue import BatchQueue
from amplitude_brevo.state import StateStore
from amplitude_brevo.state.contacts import CONTACTS_CHECKPOINT


def snap(user: str, t: str = "2024-01-15T10:00:00.000Z", **props: Any) -> dict[str, Any]:
    return {"u": user, "t": t, "s": "", "f": t, "l": t, "e": f"{user}@example.org", "p": props}


def attrs(sources, derived, totals):
    return {k.upper(): v for k, v in sources.items()}, []


def queue() -> BatchQueue[Any]:
    return BatchQueue("brevo_contacts", max_items=1000, max_wait=0.0, capacity=10_000)


async def drain(q: BatchQueue[Any]) -> list[Any]:
    items = []
    while len(q):
        items.extend(await q.next_batch() or [])
    return items


async def turn(outbox: ContactOutbox, q: BatchQueue[Any]) -> list[Any]:
    """Let the outbox run until it waits, and return what it queued."""
    for _ in range(3):
        for _ in range(20):
            await asyncio.sleep(0)
        # Round trips through the state's threads: the outbox reads on the lookup one, what it was told
        # (answers, identities) is written on the writer one.
        await outbox.state.contacts_count()
        await outbox.state.pending_contacts(0, 1)
    for _ in range(20):
        await asyncio.sleep(0)
    return await drain(q)


@contextlib.asynccontextmanager
async def running(state: StateStore, acks: Acknowledger, q: BatchQueue[Any], **kwargs: Any):
    """An outbox started and running over `state`, stopped (and its task awaited) at the end."""
    outbox = ContactOutbox(queue=q, state=state, acks=acks, poll_seconds=0.01, **kwargs)
    await outbox.start()
    task = asyncio.create_task(outbox.run())
    try:
        yield outbox
    finally:
        outbox.stop()
        await task


async def test_pending_rows_go_out_in_seq_order_and_the_checkpoint_follows_the_answers(state: StateStore):
    acks = Acknowledger(state, DedupeRecord(state, 86400))
    await state.fold_contacts([snap("u1", a=1), snap("u2", a=2), snap("u3", a=3)], [], attrs)
    q = queue()
    async with running(state, acks, q) as outbox:
        items = await turn(outbox, q)
        assert [orjson.loads(i.body)["ext_id"] for i in items] == ["u1", "u2", "u3"]
        assert orjson.loads(items[0].body)["attributes"] == {"A": 1}
        await acks.settle("brevo_contacts", [items[1]])  # u2 answered first: the checkpoint waits for u1
        assert await state.get_checkpoint(CONTACTS_CHECKPOINT) is None
        await acks.settle("brevo_contacts", [items[0]])
        assert await state.get_checkpoint(CONTACTS_CHECKPOINT) == f"{2:020d}"

    # a restart: only u3 (never answered) goes again
    async with running(state, acks, q) as again:
        assert [orjson.loads(i.body)["ext_id"] for i in await turn(again, q)] == ["u3"]


async def test_a_user_with_a_write_on_its_way_waits_and_only_the_newest_row_follows(state: StateStore):
    acks = Acknowledger(state, DedupeRecord(state, 86400))
    await state.fold_contacts([snap("u1", v="first")], [], attrs)
    q = queue()
    async with running(state, acks, q) as outbox:
        [first] = await turn(outbox, q)
        await state.fold_contacts([snap("u1", t="2024-01-15T11:00:00.000Z", v="second")], [], attrs)
        outbox.wake()
        assert await turn(outbox, q) == [], "u1 has a write on its way"
        await state.fold_contacts([snap("u1", t="2024-01-15T12:00:00.000Z", v="third")], [], attrs)
        outbox.wake()
        assert await turn(outbox, q) == []
        await acks.settle("brevo_contacts", [first])
        [follow] = await turn(outbox, q)
        assert orjson.loads(follow.body)["attributes"] == {"V": "third"}, "the superseded row is never sent"
        await acks.settle("brevo_contacts", [follow])
        assert await state.get_checkpoint(CONTACTS_CHECKPOINT) == f"{3:020d}"


async def test_in_burst_mode_it_finishes_once_upstream_is_done_and_nothing_is_pending(state: StateStore):
    acks = Acknowledger(state, DedupeRecord(state, 86400))
    await state.fold_contacts([snap("u1")], [], attrs)
    q = queue()
    upstream = asyncio.Event()
    outbox = ContactOutbox(queue=q, state=state, acks=acks, upstream=upstream, poll_seconds=0.01)
    await outbox.start()
    task = asyncio.create_task(outbox.run())
    [item] = await turn(outbox, q)
    upstream.set()
    outbox.wake()
    await turn(outbox, q)
    assert not task.done(), "a write is still on its way"
    await acks.settle("brevo_contacts", [item])
    await asyncio.wait_for(task, 5)


async def test_a_waiting_row_is_read_again_when_it_goes_and_carries_what_brevo_now_holds(state: StateStore):
    acks = Acknowledger(state, DedupeRecord(state, 86400))
    await state.fold_contacts([snap("u1", v="first")], [], attrs)
    q = queue()
    async with running(state, acks, q) as outbox:
        [first] = await turn(outbox, q)
        assert orjson.loads(first.body)["in_brevo"] is False
        await state.fold_contacts([snap("u1", t="2024-01-15T11:00:00.000Z", v="second")], [], attrs)
        outbox.wake()
        assert await turn(outbox, q) == []
        await state.contacts_identified([("u1", "u1@example.org", 77)])  # what the sink records for `first`
        await acks.settle("brevo_contacts", [first])
        [follow] = await turn(outbox, q)
        body = orjson.loads(follow.body)
        assert (body["in_brevo"], body["brevo_id"], body["attributes"]) == (True, 77, {"V": "second"})


async def test_folds_within_a_batch_window_become_one_write_with_the_newest_values(state: StateStore):
    acks = Acknowledger(state, DedupeRecord(state, 86400))
    await state.fold_contacts([snap("u1", v="first"), snap("u2", v="first")], [], attrs)
    q = queue()
    upstream = asyncio.Event()
    async with running(state, acks, q, window=30.0, upstream=upstream) as outbox:
        first = await turn(outbox, q)
        assert sorted(orjson.loads(i.body)["ext_id"] for i in first) == ["u1", "u2"]
        await acks.settle("brevo_contacts", first)
        # Caught up: the outbox holds its next read for the window; u1 is folded twice meanwhile.
        for n, value in enumerate(("second", "third"), start=11):
            await state.fold_contacts([snap("u1", t=f"2024-01-15T{n}:00:00.000Z", v=value)], [], attrs)
            outbox.wake()
            assert await turn(outbox, q) == [], "within the window nothing is read"
        upstream.set()  # the export has folded everything: no reason to wait any longer
        outbox.stop()
    async with running(state, acks, q, window=30.0) as again:
        [item] = await turn(again, q)
    body = orjson.loads(item.body)
    assert (body["ext_id"], body["attributes"]) == ("u1", {"V": "third"}), "one write, the newest values"
