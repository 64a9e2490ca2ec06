"""Brevo events delivery benchmark: events/s the real sink gets through a simulated Brevo, per rate layout.

What it does (`python bench/brevo_events.py [--seconds S] [--layout events|other]`):

Brevo's table puts `POST /events` at 10 requests/s (General plan) and does not say where `/events/batch` is
counted. Each layout runs the real machinery — `BrevoEventsSink` (workers, batch sizes growing from the
config default of 100, splitting, budgets learning from `x-sib-ratelimit-*`), the real `BrevoClient`, the
plan's budgets (`brevo_events` 10/s, `brevo_events_batch` 100/h), the real `Acknowledger` with its
`DedupeRecord` over a temporary SQLite state file and an `OffsetTracker` — against the sandbox's Brevo
simulator on 127.0.0.1 in this process, for `--seconds`. A `BatchQueue` (1,000 items a batch, capacity
50,000) is filled before the sink starts and kept full by a producer, so Brevo's limits are the bottleneck.
Then the sink is stopped as at SIGTERM; it returns once its requests in flight are answered and recorded.

Layouts:

* `events`: `/events/batch` counted in the events bucket with `/events`: 10 requests/s in all.
  Best over the run: 10 requests/s × the run's seconds × the batch size the sink reached
  (the server's 1-second windows, each allowing 10 requests of that size).
* `other`: `/events/batch` in the "all other endpoints" bucket, 100 requests an hour, and `/events` at 10/s.
  Best over the run: the hour's 100 batches × the batch size reached + 10 single events/s × the run's
  seconds (the run is far shorter than the hour, so the batch allowance is spent once).

Printed per layout: events delivered (settled, which the simulator's count must equal) and per second,
the best and the ratio (target ≥ 90 %), the batch sizes the requests carried, requests per endpoint, 429s as
a share of all requests (target ≤ 1 %), and the rates the budgets learned. The simulator drops the events it
has counted once a second, to keep memory flat over hundreds of thousands of events.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))  # runnable without an installed package too

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from amplitude_brevo.config import PLAN_BUDGETS  # noqa: E402
from amplitude_brevo.logs import configure_logging  # noqa: E402
from amplitude_brevo.pipeline.acks import Acknowledger, OffsetTracker  # noqa: E402
from amplitude_brevo.pipeline.dedupe import DedupeRecord  # noqa: E402
from amplitude_brevo.pipeline.items import Item  # noqa: E402
from amplitude_brevo.pipeline.queue import BatchQueue  # noqa: E402
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE, make_brevo_app  # noqa: E402
from amplitude_brevo.secrets import Secret  # noqa: E402
from amplitude_brevo.sinks.brevo_client import BrevoClient  # noqa: E402
from amplitude_brevo.sinks.brevo_events import BrevoEventsSink  # noqa: E402
from amplitude_brevo.sinks.budgets import Budgets  # noqa: E402
from amplitude_brevo.state import StateStore  # noqa: E402

KEY = "xkeysib-bench-key"
POSITION_ITEMS = 10_000  # items per tracker position (an "hour"): checkpoints move as positions complete
QUEUE_CAPACITY = 50_000
BATCH_ITEMS = 1_000
START_BATCH_SIZE = 100  # connectors.brevo.events_batch_size's default
BATCH_ALLOWANCE = 100  # /events/batch requests an hour in the "other" layout
RATE = 10  # requests a second: /events, and /events/batch in the "events" layout


def event(n: int) -> bytes:
    return orjson.dumps({
        "event_name": "page_viewed",
        "event_date": "2026-11-01T00:10:00Z",
        "identifiers": {"ext_id": f"user-{n % 5000}", "email_id": f"user{n % 5000}@example.org"},
        "contact_properties": {"PLAN": "pro", "ORDER_COUNT": n % 17},
        "event_properties": {"path": f"/page/{n % 300}", "amplitude_event_type": "Page View",
                             "amplitude_insert_id": f"bench-{n}"},
    })


async def produce(queue: BatchQueue[Item], tracker: OffsetTracker, dedupe: DedupeRecord, first: int,
                  stop: asyncio.Event) -> None:
    """Positions of POSITION_ITEMS events each, from position `first` on, until stopped (blocks while full)."""
    position = first
    while not stop.is_set():
        token = tracker.token(position)
        start = position * POSITION_ITEMS
        chunk = [Item(f"events:bench-{n}", event(n), token) for n in range(start, start + POSITION_ITEMS)]
        tracker.add(position, len(chunk))
        tracker.seal(position)
        dedupe.inflight.update(item.key for item in chunk)
        await queue.put_many(chunk)
        position += 1


async def run_layout(layout: str, seconds: float) -> dict[str, Any]:
    app = make_brevo_app(api_key=KEY, events_batch_bucket=layout)  # the General plan's limits
    sizes: Counter[int] = Counter()
    first_sizes: list[int] = []

    @web.middleware
    async def count_sizes(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v3/events/batch":
            size = (await request.read()).count(b'"event_name"')
            sizes[size] += 1
            if len(first_sizes) < 8:
                first_sizes.append(size)
        return await handler(request)

    app.middlewares.insert(0, count_sizes)
    brevo = app[BREVO_STATE]
    received = 0

    async def drop_received() -> None:
        nonlocal received
        while True:
            await asyncio.sleep(1)
            received += len(brevo.events)
            brevo.drop_events()

    with tempfile.TemporaryDirectory(prefix="bench-brevo-events-") as tmp:
        state = await StateStore.open(Path(tmp) / "state.db")
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
            budgets = Budgets(PLAN_BUDGETS["general"])
            client = BrevoClient(session, base_url=str(server.make_url("/v3")), api_key=Secret(KEY),
                                 budgets=budgets, stop=asyncio.Event())
            dedupe = DedupeRecord(state, 7 * 86400)
            acks = Acknowledger(state, dedupe)
            # Checkpoint values compare as text: zero-padded, like every numeric position (state/checkpoints).
            tracker = OffsetTracker("bench.position", "export", lambda position: f"{position + 1:020d}")
            queue: BatchQueue[Item] = BatchQueue("brevo_events", max_items=BATCH_ITEMS, max_wait=2.0,
                                                 capacity=QUEUE_CAPACITY)
            stop_producing = asyncio.Event()
            filled = QUEUE_CAPACITY // POSITION_ITEMS
            for position in range(filled):  # the backlog before the sink starts
                token = tracker.token(position)
                start = position * POSITION_ITEMS
                chunk = [Item(f"events:bench-{n}", event(n), token) for n in range(start, start + POSITION_ITEMS)]
                tracker.add(position, len(chunk))
                tracker.seal(position)
                await queue.put_many(chunk)
            producer = asyncio.create_task(produce(queue, tracker, dedupe, filled, stop_producing))
            dropper = asyncio.create_task(drop_received())
            sink = BrevoEventsSink(queue=queue, client=client, acks=acks, batch_size=START_BATCH_SIZE)
            started = time.monotonic()
            running = asyncio.create_task(sink.run())
            await asyncio.sleep(seconds)
            sink.stop()
            stop_producing.set()
            stopping = time.monotonic()
            await running
            stopped = time.monotonic()
            producer.cancel()
            dropper.cancel()
            await asyncio.gather(producer, dropper, return_exceptions=True)
            received += len(brevo.events)
            checkpoint = await state.get_checkpoint("bench.position")
        await state.close()
    elapsed = stopping - started
    stats = sink.stats
    reached = max(sizes) if sizes else 0
    if layout == "events":
        best = RATE * elapsed * reached
        best_text = f"{RATE} req/s × {elapsed:.1f} s × {reached}"
    else:
        best = BATCH_ALLOWANCE * reached + RATE * elapsed
        best_text = f"{BATCH_ALLOWANCE} × {reached} + {RATE}/s × {elapsed:.1f} s"
    requests = sum(brevo.requests.values())
    return {
        "layout": layout, "seconds": elapsed, "stop_seconds": stopped - stopping,
        "delivered": stats.delivered, "received": received, "dead_lettered": stats.dead_lettered,
        "rate": stats.delivered / elapsed, "best": best, "best_rate": best / elapsed, "best_text": best_text,
        "ratio": stats.delivered / best if best else 0.0,
        "first_sizes": first_sizes, "sizes": dict(sorted(sizes.items())), "final_size": sink.sizer.current,
        "batch_requests": stats.batch_requests, "single_requests": stats.single_requests,
        "requests": requests, "rate_limited": brevo.rate_limited,
        "rate_limited_share": brevo.rate_limited / requests if requests else 0.0,
        "learned": {b.name: str(b.rate) for b in budgets if b.name in ("brevo_events", "brevo_events_batch")},
        "checkpoint": int(checkpoint) if checkpoint else None,
    }


def report(result: dict[str, Any]) -> None:
    r = result
    title = {"events": "(a) /events/batch in the events bucket, 10 req/s shared with /events",
             "other": "(b) /events/batch in the other bucket, 100 per hour; /events at 10 req/s"}[r["layout"]]
    print(title)
    print(f"  run                {r['seconds']:.1f} s; stop() returned in {r['stop_seconds']:.2f} s "
          f"(checkpoint at position {r['checkpoint']})")
    print(f"  delivered          {r['delivered']:,} events ({r['received']:,} counted by Brevo), "
          f"{r['dead_lettered']} dead-lettered")
    print(f"  events/s           {r['rate']:,.0f}")
    print(f"  best               {r['best_rate']:,.0f} events/s  ({r['best_text']} = {r['best']:,.0f} events)")
    print(f"  ratio              {r['ratio']:.1%}  (target ≥ 90 %)")
    print(f"  batch sizes        first requests {r['first_sizes']}, reached {max(r['sizes'] or [0])}, "
          f"sink's size at the end {r['final_size']}")
    print(f"  requests           {r['batch_requests']:,} /events/batch, {r['single_requests']:,} /events, "
          f"{r['requests']:,} seen by Brevo")
    print(f"  429s               {r['rate_limited']} = {r['rate_limited_share']:.2%} of requests (target ≤ 1 %)")
    print(f"  budgets learned    {r['learned']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each layout's run (default 40)")
    parser.add_argument("--layout", choices=("events", "other"), action="append",
                        help="run only this layout (repeatable; default both)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    missed = False
    for layout in args.layout or ["events", "other"]:
        result = asyncio.run(run_layout(layout, args.seconds))
        report(result)
        missed |= result["ratio"] < 0.9 or result["rate_limited_share"] > 0.01
        missed |= result["received"] != result["delivered"]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
