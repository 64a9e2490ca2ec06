"""The official `amplitude-analytics` Python SDK, pointed at the ingest endpoint, as an app would use it.

The SDK is synchronous (urllib in worker threads), so it runs in a thread while the event loop serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from amplitude import Amplitude, BaseEvent, Config, EventOptions, Identify

from tests.ingest.conftest import KEY, IngestFactory

Outcome = tuple[str, int, str | None]


def sdk_client(server_url: str, outcomes: list[Outcome], *, api_key: str = KEY, **config: Any) -> Amplitude:
    def record(event: BaseEvent, code: int, message: str | None = None) -> None:
        outcomes.append((event.insert_id or event.event_type, code, message))

    cfg = Config(server_url=server_url, callback=record, flush_queue_size=500, flush_interval_millis=60_000,
                 **config)
    return Amplitude(api_key, cfg)


def flush(client: Amplitude) -> None:
    """Send what the SDK buffers and wait for the answers (flush() gives one future per destination)."""
    for future in client.flush():
        if future is not None:
            future.result()


async def run_sdk(use: Callable[[], None]) -> None:
    await asyncio.wait_for(asyncio.to_thread(use), timeout=30)


@pytest.mark.parametrize("endpoint", ["2/httpapi", "batch"])
async def test_events_and_identifies_sent_by_the_sdk_are_spooled_as_sent(
    ingest_server: IngestFactory, endpoint: str
) -> None:
    outcomes: list[Outcome] = []
    sent = [
        BaseEvent(event_type="Purchase", user_id="cust-00042", device_id="dev-aaaa1", insert_id=f"ins-{n}",
                  time=1764686400123 + n, price=89.99, quantity=1, product_id="SKU-001", revenue=89.99,
                  event_properties={"sku": "SKU-001", "n": n}, ip="$remote")
        for n in range(300)
    ]
    async with ingest_server() as ingestion:
        client = sdk_client(ingestion.url + endpoint, outcomes, use_batch=endpoint == "batch")

        def use() -> None:
            for event in sent:
                client.track(event)
            identify = Identify().set("plan", "pro").set_once("first_seen", "2026-12-02").add("logins", 1)
            client.identify(identify, EventOptions(user_id="cust-00042", insert_id="ident-1"))
            flush(client)
            client.shutdown()

        await run_sdk(use)
        spooled = ingestion.spooled()

    assert len(outcomes) == 301 and {code for _, code, _ in outcomes} == {200}
    events = [item for kind, entry in spooled for item in entry.items]
    assert {kind for kind, _ in spooled} == {endpoint.split("/")[-1]}
    assert events[:300] == [event.get_event_body() for event in sent]
    [identify_event] = events[300:]
    assert identify_event["event_type"] == "$identify"
    assert identify_event["user_properties"] == {
        "$set": {"plan": "pro"}, "$setOnce": {"first_seen": "2026-12-02"}, "$add": {"logins": 1}
    }


async def test_the_sdk_drops_only_the_events_the_answer_names_and_resends_the_rest(
    ingest_server: IngestFactory,
) -> None:
    outcomes: list[Outcome] = []
    async with ingest_server() as ingestion:
        client = sdk_client(ingestion.url + "2/httpapi", outcomes)

        def use() -> None:
            client.track(BaseEvent(event_type="Purchase", user_id="cust-00042", insert_id="good-1"))
            client.track(BaseEvent(event_type="Purchase", user_id="undefined", insert_id="placeholder"))
            client.track(BaseEvent(event_type="Purchase", user_id="cust-00043", insert_id="good-2"))
            flush(client)  # 400 naming index 1: the SDK drops it, requeues the others
            flush(client)  # the requeued events, accepted
            client.shutdown()

        await run_sdk(use)
        spooled = ingestion.spooled()

    assert sorted(outcomes) == [
        ("good-1", 200, "Event sent successfully."),
        ("good-2", 200, "Event sent successfully."),
        ("placeholder", 400, "Invalid field values on some events"),
    ]
    assert [[item["insert_id"] for item in entry.items] for _, entry in spooled] == [["good-1", "good-2"]]


async def test_the_sdk_stops_on_a_wrong_key_and_nothing_is_spooled(
    ingest_server: IngestFactory, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: list[Outcome] = []
    async with ingest_server() as ingestion:
        client = sdk_client(ingestion.url + "2/httpapi", outcomes, api_key="not-our-key-0000")

        def use() -> None:
            client.track(BaseEvent(event_type="Purchase", user_id="cust-00042", insert_id="k-1"))
            flush(client)
            client.shutdown()

        with caplog.at_level(logging.ERROR, logger="amplitude"):
            await run_sdk(use)
        assert ingestion.spooled() == []
    # amplitude/worker.py logs this when the processor raised InvalidAPIKeyError on the answer's prefix.
    assert "Invalid API Key" in caplog.text
    assert outcomes == []
