"""Export source → Brevo events sink, in process, against the sandbox's Amplitude and Brevo simulators."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from tests.conftest import SECRETS, base_config  # by its full name: tests/sources is not a package

import amplitude_brevo.sinks.brevo_client as brevo_client_module
import amplitude_brevo.sources.amplitude_export as export_module
import amplitude_brevo.state.checkpoints as store_module
from amplitude_brevo.backfill import run_backfill
from amplitude_brevo.clients.amplitude import ExportResult, ExportStatus
from amplitude_brevo.components import backfill_checkpoint, export_source, sink_components
from amplitude_brevo.config import Config, parse_config
from amplitude_brevo.durations import hour_key
from amplitude_brevo.pipeline.acks import Acknowledger
from amplitude_brevo.pipeline.claims import Candidates
from amplitude_brevo.pipeline.dedupe import DedupeRecord
from amplitude_brevo.pipeline.queue import BatchQueue
from amplitude_brevo.pipeline.remap import BrevoEvent, MappingRules, SinkOutput, remap_event
from amplitude_brevo.pipeline.rows import row_decoder
from amplitude_brevo.retry import Backoff
from amplitude_brevo.sandbox.amplitude_sim import AMPLITUDE_EXPORT_STATE, ExportFaults, oversize_row
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE, BrevoFaults, BucketLimit
from amplitude_brevo.sandbox.sample_data import DatasetSpec, rows_for_hour
from amplitude_brevo.sandbox.server import Sandbox, SandboxOptions
from amplitude_brevo.sources.amplitude_export import ExportSource
from amplitude_brevo.sources.member_mapper import MappedChunk
from amplitude_brevo.state import StateStore

START = datetime(2026, 11, 1, 0, tzinfo=UTC)
MAPPING = {"Purchase": "order_completed", "Sign Up": "customer_created"}
PROPERTY_MAPPING = {"email": "email", "first_name": "FIRSTNAME", "plan_type": "PLAN",
                    "lifetime_revenue": "LTV", "total_purchases": "ORDER_COUNT"}
RULES = MappingRules(MAPPING, PROPERTY_MAPPING)


def hour(n: int) -> datetime:
    return START + timedelta(hours=n)


def dataset(hours: int = 3, rows_per_hour: int = 150) -> DatasetSpec:
    return DatasetSpec(start=START, hours=hours, rows_per_hour=rows_per_hour, users=30)


def expected_events(spec: DatasetSpec, hours: range | None = None) -> dict[str, tuple[datetime, dict[str, Any]]]:
    """What Brevo should receive: dedupe key → (server-upload hour, payload), computed from the sample rows."""
    out: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for n in hours if hours is not None else range(spec.hours):
        for row in rows_for_hour(spec, hour(n)):
            if not row.get("user_id"):
                continue
            result = remap_event(row_decoder.decode(orjson.dumps(row)), RULES)
            if isinstance(result, BrevoEvent):
                out[result.dedupe_key] = (hour(n), result.payload)
    return out


def received_ids(events: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(e["event_properties"]["amplitude_insert_id"] for e in events)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """Retries in milliseconds: the source and the Brevo client build their default Backoff from these names."""
    fast = Backoff(base=0.01, cap=0.05)
    monkeypatch.setattr(export_module, "Backoff", lambda **_: fast)
    monkeypatch.setattr(brevo_client_module, "Backoff", lambda **_: fast)


@asynccontextmanager
async def sandbox(spec: DatasetSpec, *, export_faults: ExportFaults | None = None,
                  brevo_faults: BrevoFaults | None = None, members_per_hour: int = 2) -> AsyncIterator[Sandbox]:
    options = SandboxOptions(
        spec=spec, members_per_hour=members_per_hour,
        amplitude_api_key=SECRETS["AMPLITUDE_API_KEY"], amplitude_secret_key=SECRETS["AMPLITUDE_SECRET_KEY"],
        brevo_api_key=SECRETS["BREVO_API_KEY"],
        brevo_limits={"events": BucketLimit(1000, 1.0), "events_batch": BucketLimit(1000, 1.0)},
        export_faults=export_faults, brevo_faults=brevo_faults,
    )
    async with Sandbox(options) as sb:
        yield sb


def make_config(tmp_path, sb: Sandbox, *, max_window: str = "6h", batch_size: int = 20, max_items: int = 50,
                queue_capacity: int = 1000, shutdown_timeout: str = "2s", readers: int = 0) -> Config:
    """A config for `sb`; rows are mapped in this process unless `readers` asks for reader children."""
    raw = base_config(
        tmp_path,
        connectors={"amplitude": {"api_url": sb.amplitude_url, "ingest_url": sb.amplitude_url},
                    "brevo": {"api_url": sb.brevo_url, "events_batch_size": batch_size}},
        event_mapping=MAPPING,
        property_mapping=PROPERTY_MAPPING,
        export={"lag": "0s", "max_window": max_window, "readers": readers},
        batching={"max_items": max_items, "max_wait": "50ms", "queue_capacity": queue_capacity},
        rate_limits={"brevo_events": {"requests": 1000, "per": "1s"},
                     "brevo_events_batch": {"requests": 1000, "per": "1s"}},
        shutdown_timeout=shutdown_timeout,
    )
    return parse_config(raw, env=SECRETS)


async def backfill(cfg: Config, first: int, last: int, **kwargs: Any):
    result = await asyncio.wait_for(
        run_backfill(cfg, start=hour(first), end=hour(last), progress=False, install_signal_handlers=False,
                     **kwargs),
        60,
    )
    assert result.exit_code == 0
    return result


async def stored(cfg: Config, first: int, last: int) -> tuple[str | None, list[Any]]:
    async with await StateStore.open(cfg.state.path) as state:
        checkpoint = await state.get_checkpoint(backfill_checkpoint(hour(first), hour(last)))
        letters = await state.list_dead_letters(limit=10_000)
    return checkpoint, letters


def export_requests(sb: Sandbox) -> list[tuple[str, str, int]]:
    return [(r["start"], r["end"], r["status"]) for r in sb.amplitude_app[AMPLITUDE_EXPORT_STATE].requests]


# -- (a) + (b): a backfill delivers each mapped event exactly once, and never again ------------------------------

@pytest.mark.parametrize("readers", [2, 0], ids=["reader-children", "in-process"])
async def test_backfill_delivers_every_mapped_event_once_and_reruns_send_nothing(tmp_path, readers):
    spec = dataset(hours=3)
    expected = expected_events(spec)
    assert len(expected) > 30
    async with sandbox(spec) as sb:
        cfg = make_config(tmp_path, sb, readers=readers)
        brevo = sb.brevo_app[BREVO_STATE]

        result = await backfill(cfg, 0, 2)
        assert result.complete
        counts = received_ids(brevo.events)
        assert set(counts) == set(expected), "every mapped row with a user id, nothing else"
        assert max(counts.values()) == 1, "each exactly once"
        for event in brevo.events:
            _, payload = expected[event["event_properties"]["amplitude_insert_id"]]
            assert event == payload  # name, date, identifiers, event and contact properties
            assert event["event_date"].endswith("Z")
        assert result.sink["delivered"] == len(expected)
        assert result.source["rows_read"] == 3 * 150
        assert result.source["skipped"]["unmapped"] > 0
        checkpoint, letters = await stored(cfg, 0, 2)
        assert checkpoint == hour_key(hour(3))
        assert letters == []

        # The same backfill again: its checkpoint says done, nothing is even requested.
        before = len(export_requests(sb))
        again = await backfill(cfg, 0, 2)
        assert again.complete and again.sink["delivered"] == 0
        assert len(export_requests(sb)) == before
        assert len(brevo.events) == len(expected)

        # Without the checkpoint, every row is read again and the dedupe record stops all of them.
        async with await StateStore.open(cfg.state.path) as state:
            await state._run(lambda conn: conn.execute("DELETE FROM checkpoints") and conn.commit())
            assert await state.get_checkpoint(backfill_checkpoint(hour(0), hour(2))) is None
        third = await backfill(cfg, 0, 2)
        assert third.complete
        assert third.source["deduplicated"] == len(expected)
        assert third.sink["delivered"] == 0
        assert len(brevo.events) == len(expected)
        assert len(export_requests(sb)) > before
        assert (await stored(cfg, 0, 2))[0] == hour_key(hour(3))


async def test_dry_run_sends_nothing_and_records_nothing(tmp_path):
    spec = dataset(hours=2)
    expected = expected_events(spec)
    async with sandbox(spec, export_faults=ExportFaults(malformed_line={hour_key(hour(0))})) as sb:
        cfg = make_config(tmp_path, sb)
        result = await backfill(cfg, 0, 1, dry_run=True)
        assert result.complete
        assert result.sink["would_send"] == len(expected)
        assert result.source["dead_lettered"] == 1, "counted"
        assert sb.brevo_app[BREVO_STATE].events == []
        assert sum(sb.brevo_app[BREVO_STATE].requests.values()) == 0
        checkpoint, letters = await stored(cfg, 0, 1)
        assert checkpoint is None and letters == [], "but not recorded"
        async with await StateStore.open(cfg.state.path) as state:
            assert await state.unseen(["events:" + k for k in expected]) == {"events:" + k for k in expected}

        # The real run afterwards sends everything.
        real = await backfill(cfg, 0, 1)
        assert real.sink["delivered"] == len(expected)
        assert set(received_ids(sb.brevo_app[BREVO_STATE].events)) == set(expected)


# -- (c) window halving ------------------------------------------------------------------------------------------

async def test_windows_halve_down_to_what_the_export_api_serves(tmp_path):
    spec = dataset(hours=6, rows_per_hour=60)
    expected = expected_events(spec)
    async with sandbox(spec, export_faults=ExportFaults(max_hours_per_request=1)) as sb:
        cfg = make_config(tmp_path, sb, max_window="6h")
        result = await backfill(cfg, 0, 5)
        assert result.complete
        counts = received_ids(sb.brevo_app[BREVO_STATE].events)
        assert set(counts) == set(expected) and max(counts.values()) == 1
        requests = export_requests(sb)
        assert requests[:3] == [
            ("20261101T00", "20261101T05", 400), ("20261101T00", "20261101T02", 400),
            ("20261101T00", "20261101T00", 200),
        ]
        served = [(s, e) for s, e, status in requests if status == 200]
        assert served == [(hour_key(hour(n)), hour_key(hour(n))) for n in range(6)], "one-hour windows"
        # After a window is read the next one only doubles: not the whole halving sequence per hour.
        assert len(requests) <= 6 + 2 + 5
        assert (await stored(cfg, 0, 5))[0] == "20261101T06"


async def test_a_window_that_fits_is_one_request(tmp_path):
    spec = dataset(hours=4, rows_per_hour=40)
    async with sandbox(spec) as sb:
        cfg = make_config(tmp_path, sb, max_window="24h")
        await backfill(cfg, 0, 3)
        assert export_requests(sb) == [("20261101T00", "20261101T03", 200)]


# -- (d) transient export failures --------------------------------------------------------------------------------

async def test_504_500_and_a_non_zip_200_are_retried_and_nothing_is_lost(tmp_path):
    spec = dataset(hours=4, rows_per_hour=80)
    expected = expected_events(spec)
    faults = ExportFaults(
        status_for_hours={"20261101T01": 504, "20261101T02": 500}, once=True,
        not_zip_once={"20261101T03"},
    )
    async with sandbox(spec, export_faults=faults) as sb:
        cfg = make_config(tmp_path, sb, max_window="1h")  # the tail's usual one-hour windows
        result = await backfill(cfg, 0, 3)
        assert result.complete
        counts = received_ids(sb.brevo_app[BREVO_STATE].events)
        assert set(counts) == set(expected) and max(counts.values()) == 1
        assert export_requests(sb) == [
            ("20261101T00", "20261101T00", 200),
            ("20261101T01", "20261101T01", 504), ("20261101T01", "20261101T01", 200),
            ("20261101T02", "20261101T02", 500), ("20261101T02", "20261101T02", 200),
            ("20261101T03", "20261101T03", 200), ("20261101T03", "20261101T03", 200),  # the first was not a zip
        ]
        checkpoint, letters = await stored(cfg, 0, 3)
        assert checkpoint == "20261101T04"
        assert letters == [], "a 504 on one hour is a timeout to retry, not an hour to give up on"


async def test_504_on_a_multi_hour_window_halves_it(tmp_path):
    spec = dataset(hours=4, rows_per_hour=40)
    expected = expected_events(spec)
    async with sandbox(spec, export_faults=ExportFaults(status_for_hours={"20261101T02": 504})) as sb:
        cfg = make_config(tmp_path, sb, max_window="4h")
        await backfill(cfg, 0, 3)
        assert set(received_ids(sb.brevo_app[BREVO_STATE].events)) == set(expected)
        assert export_requests(sb)[:2] == [("20261101T00", "20261101T03", 504), ("20261101T00", "20261101T01", 200)]


async def test_a_single_hour_over_the_size_limit_is_dead_lettered_and_skipped(tmp_path):
    spec = dataset(hours=3, rows_per_hour=40)
    expected = expected_events(spec, range(0, 1)) | expected_events(spec, range(2, 3))
    faults = ExportFaults(status_for_hours={"20261101T01": 400}, once=False)
    async with sandbox(spec, export_faults=faults) as sb:
        cfg = make_config(tmp_path, sb, max_window="1h")
        result = await backfill(cfg, 0, 2)
        assert result.complete
        assert set(received_ids(sb.brevo_app[BREVO_STATE].events)) == set(expected)
        checkpoint, letters = await stored(cfg, 0, 2)
        assert checkpoint == "20261101T03"
        assert [orjson.loads(dl.item) for dl in letters] == [{"hour": "20261101T01"}]
        assert "too large for the Export API" in letters[0].reason


# -- (e) empty hours ---------------------------------------------------------------------------------------------

async def test_404_empty_hours_advance_the_checkpoint(tmp_path):
    spec = dataset(hours=2, rows_per_hour=40)
    expected = expected_events(spec)
    async with sandbox(spec) as sb:
        sb.amplitude_app[AMPLITUDE_EXPORT_STATE].empty_hours = {"20261101T01"}
        expected = {k: v for k, v in expected.items() if v[0] != hour(1)}
        cfg = make_config(tmp_path, sb, max_window="1h")
        result = await backfill(cfg, 0, 4)  # hours 2..4 are past the data: 404 too
        assert result.complete
        assert set(received_ids(sb.brevo_app[BREVO_STATE].events)) == set(expected)
        statuses = {s: status for s, _, status in export_requests(sb)}
        assert statuses == {"20261101T00": 200, "20261101T01": 404, "20261101T02": 404, "20261101T03": 404,
                            "20261101T04": 404}
        assert (await stored(cfg, 0, 4))[0] == "20261101T05"


async def test_a_backfill_of_nothing_but_empty_hours_completes(tmp_path):
    spec = dataset(hours=1, rows_per_hour=10)
    async with sandbox(spec) as sb:
        cfg = make_config(tmp_path, sb, max_window="6h")
        result = await backfill(cfg, 3, 8)
        assert result.complete
        assert export_requests(sb) == [("20261101T03", "20261101T08", 404)]
        assert (await stored(cfg, 3, 8))[0] == "20261101T09"


# -- (f) bad data ------------------------------------------------------------------------------------------------

async def test_bad_items_are_dead_lettered_with_a_reason_and_everything_else_arrives(tmp_path):
    spec = dataset(hours=3, rows_per_hour=400)
    expected = expected_events(spec)
    users = collections.Counter(payload["identifiers"]["ext_id"] for _, payload in expected.values())
    blocked_user = users.most_common(1)[0][0]
    blocked = {k for k, (_, p) in expected.items() if p["identifiers"]["ext_id"] == blocked_user}
    # Rows of hour 01's last member (its second half) after the cut may be lost with the damaged stream.
    rows_01 = list(rows_for_hour(spec, hour(1)))
    cut_member = {r["$insert_id"] or r["uuid"] for r in rows_01[len(rows_01) // 2:]}
    faults = ExportFaults(malformed_line={"20261101T00"}, truncate_member={"20261101T01"},
                          oversize_event={"20261101T02"})
    async with sandbox(spec, export_faults=faults, brevo_faults=BrevoFaults(reject_ext_ids=frozenset({blocked_user}))) as sb:
        cfg = make_config(tmp_path, sb, max_window="3h")
        result = await backfill(cfg, 0, 2)
        assert result.complete, "bad input never stops the daemon"
        counts = received_ids(sb.brevo_app[BREVO_STATE].events)
        assert max(counts.values()) == 1
        assert set(counts) <= set(expected) - blocked
        missing = set(expected) - blocked - set(counts)
        assert missing <= cut_member
        assert len(missing) < len(cut_member & set(expected))

        checkpoint, letters = await stored(cfg, 0, 2)
        assert checkpoint == "20261101T03"
        reasons = collections.Counter()
        for dl in letters:
            item = orjson.loads(dl.item)
            if "malformed JSON line" in dl.reason:
                reasons["malformed"] += 1
                assert item["member"] == "187520/187520_2026-11-01_0#0.json.gz" and "sandbox-malformed-row" in item["text"]
            elif "truncated or corrupt gzip member" in dl.reason:
                reasons["truncated"] += 1
                assert item["member"] == "187520/187520_2026-11-01_1#1.json.gz"
                assert 0 < item["lines_read"] < len(rows_01) - len(rows_01) // 2
            elif "over Brevo's 50 KB limit" in dl.reason:
                reasons["oversize"] += 1
                assert item["uuid"] == oversize_row(hour(2))["uuid"]
            elif f"contact {blocked_user} cannot receive events" in dl.reason:
                reasons["refused"] += 1
                assert dl.sink == "brevo_events"
                assert item["identifiers"]["ext_id"] == blocked_user
                assert item == expected[item["event_properties"]["amplitude_insert_id"]][1], "the payload to replay"
            else:
                raise AssertionError(f"unexpected dead letter: {dl.reason}")
        assert reasons == {"malformed": 1, "truncated": 1, "oversize": 1, "refused": len(blocked)}
        assert result.source["dead_lettered"] == 3
        assert result.sink["dead_lettered"] == len(blocked)


async def test_a_zip_that_cannot_be_opened_is_fetched_again(tmp_path):
    """A 200 that starts like a zip but is not one is retried, like a non-zip body."""
    spec = dataset(hours=1, rows_per_hour=60)
    expected = expected_events(spec)
    async with sandbox(spec) as sb:
        cfg = make_config(tmp_path, sb)
        from amplitude_brevo.clients import amplitude as amplitude_module

        real = amplitude_module.AmplitudeClient.download_export
        calls = []

        async def first_one_broken(self, start, end):
            result = await real(self, start, end)
            calls.append(result.status)
            if len(calls) == 1:
                assert result.path is not None
                result.path.write_bytes(b"PK\x03\x04 but then nothing a zip reader can use")
            return result

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(amplitude_module.AmplitudeClient, "download_export", first_one_broken)
            result = await backfill(cfg, 0, 0)
        assert result.complete and calls == [ExportStatus.OK, ExportStatus.OK]
        assert set(received_ids(sb.brevo_app[BREVO_STATE].events)) == set(expected)


# -- (g) the checkpoint is per hour and never passes undelivered items ---------------------------------------

async def test_stopping_mid_window_keeps_undelivered_hours_and_a_restart_completes(tmp_path, monkeypatch, make_daemon):
    spec = dataset(hours=4, rows_per_hour=300)
    expected = expected_events(spec)
    async with sandbox(spec, brevo_faults=BrevoFaults(latency=0.02)) as sb:
        brevo = sb.brevo_app[BREVO_STATE]
        cfg = make_config(tmp_path, sb, max_window="4h", batch_size=5, max_items=10, queue_capacity=40,
                          shutdown_timeout="1s")
        name = backfill_checkpoint(hour(0), hour(3))

        # Every checkpoint write, with how many events Brevo had received when it was made.
        writes: list[tuple[str, int]] = []
        upsert = store_module._upsert_checkpoint

        def recording_upsert(conn, cp_name, value, now):
            if cp_name == name:
                writes.append((value, len(brevo.events)))
            upsert(conn, cp_name, value, now)

        monkeypatch.setattr(store_module, "_upsert_checkpoint", recording_upsert)

        def assert_never_ahead_of_delivery() -> None:
            for value, seen in writes:
                received = set(received_ids(brevo.events[:seen]))
                behind = {k for k, (h, _) in expected.items() if hour_key(h) < value}
                assert behind <= received, f"checkpoint {value} written before {len(behind - received)} items arrived"

        daemon = make_daemon(cfg, components=lambda rt: [*sink_components(rt), export_source(
                                 rt, checkpoint_name=name, start=hour(0), end=hour(3))],
                             burst=True, serve_admin=False)
        serving = asyncio.create_task(daemon.serve())
        async with asyncio.timeout(30):
            while len(brevo.events) < len(expected) // 2:
                await asyncio.sleep(0.005)
        brevo.faults.outage_until = time.monotonic() + 600  # Brevo goes away mid-backlog
        await asyncio.sleep(0.3)
        daemon.request_stop()
        assert await asyncio.wait_for(serving, 30) == 0

        delivered_first = set(received_ids(brevo.events))
        assert len(delivered_first) < len(expected), "stopped mid-way"
        checkpoint, letters = await stored(cfg, 0, 3)
        assert letters == []
        assert checkpoint is not None and writes
        assert checkpoint == writes[-1][0]
        assert "20261101T00" < checkpoint < "20261101T04", "hours completed inside the 4-hour window were recorded"
        assert_never_ahead_of_delivery()
        undelivered_hours = {h for k, (h, _) in expected.items() if k not in delivered_first}
        assert checkpoint <= hour_key(min(undelivered_hours)), "never past an hour with undelivered items"
        async with await StateStore.open(cfg.state.path) as state:
            recorded = {k for k in expected if "events:" + k not in await state.unseen(["events:" + k])}
        assert recorded == delivered_first, "every event Brevo got is in the dedupe record, even mid-batch"

        # Brevo is back: the restart resumes at the checkpoint and completes, without duplicates.
        brevo.faults.outage_until = 0.0
        first_requests = len(export_requests(sb))
        result = await backfill(cfg, 0, 3)
        assert result.complete
        assert export_requests(sb)[first_requests][0] == checkpoint
        counts = received_ids(brevo.events)
        assert set(counts) == set(expected)
        duplicated = {k for k, n in counts.items() if n > 1}
        assert not duplicated
        assert_never_ahead_of_delivery()
        assert (await stored(cfg, 0, 3))[0] == "20261101T04"


# -- the source on its own: acknowledgements and dedupe across windows ---------------------------------------

class _Client:
    """An AmplitudeClient stand-in that serves pre-built results (the network is covered above)."""

    temp_dir = None

    def __init__(self, results: list[ExportResult]) -> None:
        self.results = results
        self.calls: list[tuple[datetime, datetime]] = []

    async def download_export(self, start: datetime, end: datetime) -> ExportResult:
        self.calls.append((start, end))
        return self.results.pop(0)

    def reconfigure(self, **_: Any) -> None:
        pass


async def test_a_fatal_status_is_retried_until_stopped_and_never_advances(tmp_path):
    spec = dataset(hours=1, rows_per_hour=10)
    async with sandbox(spec) as sb:
        cfg = make_config(tmp_path, sb)
    state = await StateStore.open(cfg.state.path)
    stopping = asyncio.Event()
    client = _Client([ExportResult(ExportStatus.FATAL, 401, reason="HTTP 401")] * 50)
    queue: BatchQueue[Any] = BatchQueue("brevo_events", max_items=10, max_wait=0.01, capacity=10)
    dedupe = DedupeRecord(state, window=3600)
    source = ExportSource(cfg=cfg, client=client, queues={"brevo_events": queue},  # type: ignore[arg-type]
                          dedupe=dedupe, acks=Acknowledger(state, dedupe), stopping=stopping,
                          start=hour(0), end=hour(0), backoff=Backoff(base=0.001, cap=0.002))
    task = asyncio.create_task(source.run())
    async with asyncio.timeout(10):
        while len(client.calls) < 5:
            await asyncio.sleep(0.001)
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert not source.finished.is_set()
    assert await state.checkpoints() == {}
    await state.close()


class _LaggingState:
    """A state whose dedupe lookups never see keys (as if answered before the sink's commit landed)."""

    async def unseen(self, keys):
        return set(keys)

    async def add_dead_letters(self, letters, checkpoint=None, checkpoints=()):
        return []

    async def commit_delivery(self, keys, *, sink, checkpoint=None, checkpoints=()):
        pass


def candidates(*events: BrevoEvent) -> Any:
    """A chunk's outputs, as the reader hands them to the source: Brevo events with namespaced keys."""
    batch = Candidates()
    batch.add(MappedChunk(outputs={"brevo_events": SinkOutput(
        ["events:" + event.dedupe_key for event in events], [event.body for event in events])}))
    return batch


@asynccontextmanager
async def lagging_source(tmp_path, readers: int = 0) -> AsyncIterator[tuple[ExportSource, BatchQueue[Any]]]:
    """A source reading hour 0 whose dedupe lookups never see a key, and its queue."""
    async with Sandbox(SandboxOptions()) as sb:
        queue: BatchQueue[Any] = BatchQueue("brevo_events", max_items=10, max_wait=0, capacity=100)
        state = _LaggingState()
        dedupe = DedupeRecord(state, window=3600)  # type: ignore[arg-type]
        source = ExportSource(cfg=make_config(tmp_path, sb, readers=readers), client=None, queues={"brevo_events": queue},  # type: ignore[arg-type]
                              dedupe=dedupe, acks=Acknowledger(state, dedupe), stopping=asyncio.Event())  # type: ignore[arg-type]
        yield source, queue


async def test_a_repeated_row_is_not_queued_twice_while_its_commit_is_pending(tmp_path):
    """Keys leave `inflight` only once committed: a lookup that missed the commit cannot let a repeat through."""
    async with lagging_source(tmp_path) as (source, queue):
        event = BrevoEvent("insert-1", {"event_name": "x", "identifiers": {"ext_id": "u1"}})
        await source._flush(hour(0), candidates(event), [])
        await source._queue_pending()
        [queued] = await queue.next_batch()
        source.tracker.done(hour(0), 1)  # delivered; the commit is still on its way
        await source._flush(hour(0), candidates(event), [])
        await source._queue_pending()
        assert len(queue) == 0 and source.stats.deduplicated == 1
        source.dedupe.committed(["events:insert-1"])
        assert "events:insert-1" not in source.dedupe.inflight


async def test_a_chunk_for_several_sinks_queues_each_its_own_items_in_order_and_filters_only_keyed_ones(tmp_path):
    async with lagging_source(tmp_path) as (source, events):
        others = {name: BatchQueue(name, max_items=10, max_wait=0, capacity=100)
                  for name in ("brevo_orders", "profiles", "mixed")}
        source.queues.update(others)

        def chunk(events_keys, orders_keys, profiles, mixed):
            return MappedChunk(outputs={
                "brevo_events": SinkOutput(events_keys, [k.encode() for k in events_keys]),
                "brevo_orders": SinkOutput(orders_keys, [k.encode() for k in orders_keys]),
                "profiles": SinkOutput([None] * len(profiles), profiles),
                "mixed": SinkOutput([k for k, _ in mixed], [b for _, b in mixed]),
            })

        batch = Candidates()
        batch.add(chunk(["events:1", "events:2"], ["orders:1"], [b"p1"], [(None, b"m1"), ("mixed:1", b"m2")]))
        batch.add(chunk(["events:1", "events:3"], ["orders:1", "orders:2"], [b"p2", b"p2"],
                        [("mixed:1", b"m3"), (None, b"m4"), ("mixed:2", b"m5")]))
        await source._flush(hour(0), batch, [])
        await source._queue_pending()

        async def bodies(queue):
            return [(item.key, item.body) for item in (await queue.next_batch() if len(queue) else [])]

        assert await bodies(events) == [("events:1", b"events:1"), ("events:2", b"events:2"),
                                        ("events:3", b"events:3")], "a repeat within the chunk goes once"
        assert await bodies(others["brevo_orders"]) == [("orders:1", b"orders:1"), ("orders:2", b"orders:2")]
        assert await bodies(others["profiles"]) == [(None, b"p1"), (None, b"p2"), (None, b"p2")], \
            "idempotent writes are never filtered"
        assert await bodies(others["mixed"]) == [(None, b"m1"), ("mixed:1", b"m2"), (None, b"m4"),
                                                 ("mixed:2", b"m5")]
        assert source.stats.deduplicated == 3 and source.tracker.outstanding == 12


async def test_a_commit_landing_while_a_lookup_waits_stops_the_repeat(tmp_path):
    """A chunk waits for its lookup while the next one is read: a key committed (and so gone from `inflight`)
    after the lookup answered must still count as delivered when the chunk is queued."""
    async with lagging_source(tmp_path) as (source, queue):
        event = BrevoEvent("insert-1", {"event_name": "x", "identifiers": {"ext_id": "u1"}})
        other = BrevoEvent("insert-2", {"event_name": "x", "identifiers": {"ext_id": "u2"}})
        await source._flush(hour(0), candidates(event), [])
        await source._queue_pending()
        [queued] = await queue.next_batch()
        source.tracker.done(hour(0), 1)
        await source._flush(hour(0), candidates(event, other), [])  # the repeat's lookup answers "unseen" (too early)
        await asyncio.sleep(0.01)
        source.dedupe.committed(["events:insert-1"])  # the commit lands before the chunk is queued
        assert "events:insert-1" not in source.dedupe.inflight
        await source._queue_pending()
        assert [item.key for item in await queue.next_batch()] == ["events:insert-2"]
        assert source.stats.deduplicated == 1
        assert source.dedupe._pending == [], "nothing left watching once the chunk is queued"


async def test_a_reader_child_that_dies_mid_member_is_replaced_and_nothing_is_lost(tmp_path, monkeypatch):
    """The child decoding a member is killed after handing over its first chunk: a new child reads the member
    again, what was queued already is filtered, every event arrives once."""
    from amplitude_brevo.sources import export_reader

    killed: list[int] = []

    class KilledOnce(export_reader.ReaderPool):
        async def map_member(self, path, member, rules):
            async for chunk in super().map_member(path, member, rules):
                yield chunk
                if not killed:  # the child of this first chunk has most of the member still to send
                    killed.append(self.pids[0])
                    self._procs[0].kill()

    monkeypatch.setattr(export_module, "ReaderPool", KilledOnce)
    monkeypatch.setattr(export_module, "CHUNK", 10)  # the first chunk's events are queued before the kill
    spec = dataset(hours=1, rows_per_hour=20_000)  # members of about ten chunks
    expected = expected_events(spec)
    async with sandbox(spec) as sb:
        cfg = make_config(tmp_path, sb, queue_capacity=100_000, readers=2)  # never backed up: the children read it all
        result = await backfill(cfg, 0, 0)
        assert killed, "the child was killed mid-member"
        assert result.complete
        counts = received_ids(sb.brevo_app[BREVO_STATE].events)
        assert set(counts) == set(expected) and max(counts.values()) == 1
        assert result.source["deduplicated"] > 0, "the re-read member's first chunk was already queued"
        assert result.source["rows_read"] == 20_000, "rows of the failed attempt are not counted twice"
        checkpoint, letters = await stored(cfg, 0, 0)
        assert checkpoint == hour_key(hour(1)) and letters == []


async def test_reader_children_pause_while_the_queue_is_backed_up_and_resume_once_it_drains(tmp_path):
    """Brevo the bottleneck (queue ≥ 10 % full): map here, children stopped; ≤ 2 % again: children."""
    from structlog.testing import capture_logs

    async with lagging_source(tmp_path, readers=2) as (source, queue):
        assert source.reader.workers == 2 and queue.capacity == 100
        with capture_logs() as logs:
            assert source.reader.in_process() is False
            await queue.put_many(list(range(9)))
            assert source.reader.in_process() is False
            await queue.put_many([9])
            assert source.reader.in_process() is True
            await queue.next_batch()  # 10 → 0 items queued
            await queue.put_many(list(range(3)))
            assert source.reader.in_process() is True, "hysteresis: 3 % is not drained yet"
            await queue.next_batch()
            assert source.reader.in_process() is False
        assert [(e["event"], e["queued"]) for e in logs] == [("export.readers.paused", 10), ("export.readers.resumed", 0)]
        source.reader.workers = 0
        with capture_logs() as logs:
            assert source.reader.in_process() is True and logs == [], "export.readers: 0 always maps here, quietly"


async def test_a_slow_brevo_backs_the_queue_up_and_the_rest_is_read_without_children(tmp_path, monkeypatch):
    from amplitude_brevo.sources import export_reader

    started: list[int] = []
    closed_while_paused: list[bool] = []

    class Watched(export_reader.ReaderPool):
        async def _started(self):
            procs = await super()._started()
            started.extend(p.pid for p in procs if p.pid not in started)
            return procs

    monkeypatch.setattr(export_module, "ReaderPool", Watched)
    real_map_here = export_reader.ReaderPool.in_process

    def map_here(self):
        here = real_map_here(self)
        if here:
            closed_while_paused.append(self.pids == [])
        return here

    monkeypatch.setattr(export_reader.ReaderPool, "in_process", map_here)
    monkeypatch.setattr(export_module, "CHUNK", 10)  # queue as the member is read, not at its end
    spec = dataset(hours=2, rows_per_hour=6000)
    expected = expected_events(spec)
    async with sandbox(spec, brevo_faults=BrevoFaults(latency=0.3)) as sb:  # ~330 events/s: reading is faster
        cfg = make_config(tmp_path, sb, queue_capacity=200, readers=2)
        result = await backfill(cfg, 0, 1)
        counts = received_ids(sb.brevo_app[BREVO_STATE].events)
    assert set(counts) == set(expected) and max(counts.values()) == 1
    assert started, "the first member was read by children"
    assert len(closed_while_paused) >= 3 and not closed_while_paused[0] and all(closed_while_paused[1:]), \
        "the children stop when the queue backs up, and are not started again while it stays backed up"
    assert result.source["rows_read"] == 12_000


async def test_export_lag_keeps_growing_while_the_checkpoint_cannot_move(tmp_path):
    """The gauge is computed at each scrape from the oldest hour not yet delivered, not only when the
    checkpoint moves: a stuck checkpoint shows as a growing lag."""
    from amplitude_brevo.metrics import Metrics

    now = [hour(5)]
    async with lagging_source(tmp_path) as (source, _):
        source.metrics = Metrics()
        source._now = lambda: now[0]
        source.tracker.add(hour(1), 1)  # an item of hour 1 still on its way
        source.collect_metrics()
        assert source.metrics.export_lag._value.get() == 4 * 3600
        now[0] = hour(7)
        source.collect_metrics()
        assert source.metrics.export_lag._value.get() == 6 * 3600


async def test_bad_lines_are_logged_once_per_member_and_kind_with_a_count_and_a_sample(tmp_path):
    """SPEC §7 "logged once": 3 malformed lines and 1 refused row in one member give two log lines (with
    counts and the first line number), while every bad line still gets its own dead letter."""
    from structlog.testing import capture_logs

    from amplitude_brevo.sources.export_files import Member
    from amplitude_brevo.sources.member_mapper import MappedChunk

    member = Member("123/123_2026-11-01_0#0.json.gz", hour(0), 0)
    letters = [("export.line.malformed", n, {"member": member.name, "line": n}, f"malformed JSON line {n}")
               for n in (4, 9, 12)]
    letters.append(("export.row.rejected", 20, {"member": member.name}, "row has no event_type"))
    async with lagging_source(tmp_path) as (source, _):
        counted = MappedChunk()
        with capture_logs() as logs:
            first = source._take(MappedChunk(rows=10, letters=letters[:2]), member, hour(0), counted)
            second = source._take(MappedChunk(rows=10, letters=letters[2:]), member, hour(0), counted)
            assert logs == [], "nothing is logged line by line"
            source._log_bad_lines(member)
    assert len(first) + len(second) == 4, "a dead letter per bad line"
    by_event = {e["event"]: e for e in logs}
    assert set(by_event) == {"export.line.malformed", "export.row.rejected"} and len(logs) == 2
    malformed = by_event["export.line.malformed"]
    assert (malformed["count"], malformed["first_line"], malformed["first_reason"]) == (3, 4, "malformed JSON line 4")
    assert by_event["export.row.rejected"]["count"] == 1
