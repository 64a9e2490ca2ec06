"""The ingest path's metrics: the endpoint's answers, refusals and events over a real socket and state file, the
spool's size gauges, the forwarder's outcomes against the sandbox's Amplitude ingest side, and all of them on
the daemon's /metrics."""

from __future__ import annotations

import gzip
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from amplitude_brevo.app import Daemon
from amplitude_brevo.components import default_components
from amplitude_brevo.ingest.forwarder import AmplitudeForwarder
from amplitude_brevo.metrics import Metrics
from amplitude_brevo.sandbox.amplitude_ingest import AMPLITUDE_INGEST_STATE
from amplitude_brevo.sandbox.amplitude_sim import make_amplitude_app
from amplitude_brevo.sandbox.server import Sandbox, SandboxOptions
from amplitude_brevo.secrets import Secret
from amplitude_brevo.state.checkpoints import number_key
from amplitude_brevo.state.spool import BREVO_CHECKPOINT, SpoolLimits
from tests.ingest.conftest import KEY, IngestFactory, Ingestion
from tests.ingest.test_daemon_ingest import APP_KEY, ingest_config
from tests.ingest.test_daemon_ingest import until as daemon_until
from tests.ingest.test_forwarder import FAST, SPEC, event, running, spool, stopped, until
from tests.ingest.test_server import body, post
from tests.ingest.test_server import event as ingest_event


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value, 0 for one never set (a child not made yet)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


def meters(ingestion: Ingestion) -> Metrics:
    return ingestion.service.meters.metrics


def requests(metrics: Metrics, endpoint: str, code: int) -> float:
    return value(metrics, "amplitude_brevo_ingest_requests_total", endpoint=endpoint, code=str(code))


def refused(metrics: Metrics, reason: str) -> float:
    return value(metrics, "amplitude_brevo_ingest_refused_requests_total", reason=reason)


def events(metrics: Metrics, outcome: str) -> float:
    return value(metrics, "amplitude_brevo_ingest_events_total", outcome=outcome)


async def identify(ingestion: Ingestion, path: str, identification: object, api_key: str = KEY) -> int:
    form = {"api_key": api_key, "identification": orjson.dumps(identification).decode()}
    async with ingestion.client.post(path, data=form) as resp:
        return resp.status


def spool_bytes(path: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(path)) as conn:
        rows, size = conn.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM ingest_spool").fetchone()
    return rows, size


# ---------------------------------------------------------------------- the endpoint


async def test_answers_are_counted_by_endpoint_and_code_and_events_by_outcome(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        m = meters(ingestion)
        assert (await post(ingestion, "/2/httpapi", body(ingest_event(0), ingest_event(1))))[0] == 200
        assert (await post(ingestion, "/batch", body(*(ingest_event(n) for n in range(2, 5)))))[0] == 200
        assert await identify(ingestion, "/identify", {"user_id": "cust-00042", "user_properties": {"a": 1}}) == 200
        assert await identify(ingestion, "/groupidentify", [
            {"group_type": "org", "group_value": "acme", "group_properties": {"$set": {"plan": "pro"}}}] * 2) == 200
        # An event-level 400: one event good (resent by the SDK), three refused, each once under one outcome.
        mixed = body(ingest_event(5), ingest_event(6, user_id="null"), ingest_event(7, event_type=None),
                     ingest_event(8, user_id="abc"), ingest_event(9, user_id="null", event_type=None))
        status, answer = await post(ingestion, "/2/httpapi", mixed)
        assert status == 400 and "events_with_invalid_id_lengths" in answer
        # Refused before any event is counted.
        assert (await post(ingestion, "/2/httpapi", body(ingest_event(10), api_key="not-our-key")))[0] == 400
        assert (await post(ingestion, "/batch", orjson.dumps({"events": [ingest_event(11)]})))[0] == 400
        assert (await post(ingestion, "/batch", b"{not json"))[0] == 400
        broken = gzip.compress(body(ingest_event(12)))[:-12]  # cut: read_body cannot inflate it
        assert (await post(ingestion, "/batch", broken, **{"Content-Encoding": "gzip"}))[0] == 400
        assert (await post(ingestion, "/batch", body(*(ingest_event(n) for n in range(2001)))))[0] == 413
        assert await identify(ingestion, "/identify", {"user_id": "cust-00042"}, api_key="not-our-key") == 400
        async with ingestion.client.get("/2/httpapi") as resp:
            assert resp.status == 405
        async with ingestion.client.get("/healthz") as resp:
            assert resp.status == 200

    assert {(e, c): requests(m, e, c) for e in ("httpapi", "batch", "identify", "groupidentify")
            for c in (200, 400, 405, 413)} == {
        ("httpapi", 200): 1, ("httpapi", 400): 2, ("httpapi", 405): 1, ("httpapi", 413): 0,
        ("batch", 200): 1, ("batch", 400): 3, ("batch", 405): 0, ("batch", 413): 1,
        ("identify", 200): 1, ("identify", 400): 1, ("identify", 405): 0, ("identify", 413): 0,
        ("groupidentify", 200): 1, ("groupidentify", 400): 0, ("groupidentify", 405): 0, ("groupidentify", 413): 0,
    }
    assert {o: events(m, o) for o in ("accepted", "invalid", "missing_field", "invalid_id_length")} == {
        "accepted": 2 + 3 + 1 + 2, "invalid": 2, "missing_field": 1, "invalid_id_length": 1}
    assert {r: refused(m, r) for r in ("invalid_events", "invalid_api_key", "missing_field", "malformed",
                                       "too_large", "forbidden")} == {
        "invalid_events": 1, "invalid_api_key": 2, "missing_field": 1, "malformed": 2, "too_large": 1,
        "forbidden": 0}
    assert value(m, "amplitude_brevo_ingest_request_latency_seconds_count") == 4, "only the 200s are timed"
    assert 0 < value(m, "amplitude_brevo_ingest_request_latency_seconds_sum") < 60
    text = m.render().decode()
    assert 'amplitude_brevo_ingest_requests_total{code="200",endpoint="httpapi"} 1.0' in text
    assert 'amplitude_brevo_ingest_request_latency_seconds_bucket{le="0.001"}' in text
    assert "/healthz" not in text and 'endpoint="healthz"' not in text


async def test_a_caller_outside_allow_from_is_counted_as_forbidden(ingest_server: IngestFactory) -> None:
    async with ingest_server(allow_from=["10.0.0.0/8"]) as ingestion:
        assert (await post(ingestion, "/2/httpapi", body(ingest_event())))[0] == 403
        assert await identify(ingestion, "/identify", {"user_id": "cust-00042"}) == 403
        m = meters(ingestion)
    assert (requests(m, "httpapi", 403), requests(m, "identify", 403), refused(m, "forbidden")) == (1, 1, 2)
    assert events(m, "accepted") == 0


async def test_a_body_that_cannot_be_read_is_counted_as_malformed(ingest_server: IngestFactory) -> None:
    async with ingest_server(server={"auto_decompress": False}) as ingestion:  # read_body inflates
        broken = gzip.compress(body(ingest_event()))[:-12]
        assert (await post(ingestion, "/2/httpapi", broken, **{"Content-Encoding": "gzip"}))[0] == 400
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        async with ingestion.client.post("/identify", data=b"api_key=\xff\xfe", headers=form) as resp:
            assert resp.status == 400
        m = meters(ingestion)
    assert (requests(m, "httpapi", 400), requests(m, "identify", 400), refused(m, "malformed")) == (1, 1, 2)


async def test_a_full_spool_and_a_failed_commit_count_the_refused_events(ingest_server: IngestFactory) -> None:
    async with ingest_server(limits=SpoolLimits(max_rows=1, max_bytes=None)) as ingestion:
        m = meters(ingestion)
        for n in range(2):
            assert (await post(ingestion, "/2/httpapi", body(ingest_event(n))))[0] == 200
        assert (await post(ingestion, "/2/httpapi", body(ingest_event(2), ingest_event(3))))[0] == 429
        assert (await post(ingestion, "/batch", body(ingest_event(4))))[0] == 429
        assert (requests(m, "httpapi", 429), requests(m, "batch", 429), refused(m, "spool_full")) == (1, 1, 2)
        assert (events(m, "spool_full"), events(m, "accepted")) == (3, 2)
        await ingestion.state.spool_delete_through(2)  # room again
        await ingestion.state.close()
        assert (await post(ingestion, "/batch", body(ingest_event(5), ingest_event(6))))[0] == 503
    assert (requests(m, "batch", 503), refused(m, "spool_error"), events(m, "spool_error")) == (1, 1, 2)
    assert value(m, "amplitude_brevo_ingest_request_latency_seconds_count") == 2


async def test_the_spool_gauges_follow_commits_and_releases_at_each_scrape(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        m, service = meters(ingestion), ingestion.service
        for n in range(3):
            assert (await post(ingestion, "/2/httpapi", body(ingest_event(n))))[0] == 200
        service.collect_metrics()
        rows, size = spool_bytes(ingestion.path)
        assert rows == 3 and size > 0
        assert (value(m, "amplitude_brevo_ingest_spool_rows"), value(m, "amplitude_brevo_ingest_spool_bytes")) == (
            3, size)
        # A reader done through row 2 releases it (the forwarder and the spool source do this).
        await ingestion.state.set_checkpoint(BREVO_CHECKPOINT, number_key(2))
        assert await ingestion.state.spool_release([BREVO_CHECKPOINT]) == 2
        service.collect_metrics()
        rows, size = spool_bytes(ingestion.path)
        assert (value(m, "amplitude_brevo_ingest_spool_rows"), value(m, "amplitude_brevo_ingest_spool_bytes")) == (
            1, size)


# ---------------------------------------------------------------------- the forwarder


FORWARD_KEY = "forward-amplitude-key"


@pytest.fixture
async def amplitude():
    """The sandbox's Amplitude (its ingest side) on loopback, as in test_forwarder.py."""
    app = make_amplitude_app(SPEC, api_key=FORWARD_KEY, secret_key="secret")
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        yield server, session, app[AMPLITUDE_INGEST_STATE]


def forwarder(state, amplitude, metrics: Metrics, **kwargs) -> AmplitudeForwarder:
    server, session, _ = amplitude
    return AmplitudeForwarder(state=state, session=session, ingest_url=str(server.make_url("/")),
                              api_key=Secret(FORWARD_KEY), backoff=FAST, poll=0.02, metrics=metrics,
                              **kwargs)


def forwarded(metrics: Metrics, outcome: str) -> float:
    return value(metrics, "amplitude_brevo_ingest_forwarded_total", outcome=outcome)


def answered(metrics: Metrics, status: str) -> float:
    return value(metrics, "amplitude_brevo_http_responses_total", api="amplitude_ingest", status=status)


async def test_the_forwarder_counts_delivered_and_dead_lettered_events_and_amplitudes_answers(state, amplitude):
    _, _, sim = amplitude
    sim.faults.update({"invalid_event_types": ["Broken"], "quota_users": ["user-00009"], "fail_next": 1})
    await spool(state, [event("user-00001", 1), event("user-00001", 2, event_type="Broken"),
                        event("user-00009", 3), event("user-00003", 4)])
    last = await spool(state, [{"user_id": "user-00001", "user_properties": {"$set": {"plan": "pro"}}}],
                       kind="identify")
    m = Metrics()
    fwd = forwarder(state, amplitude, m)
    task = await running(fwd)
    await until(lambda: fwd._written == last)
    await stopped(fwd, task)
    assert (forwarded(m, "delivered"), forwarded(m, "dead_lettered")) == (2 + 1, 2)
    assert value(m, "amplitude_brevo_dlq_size") == 2 == len(await state.list_dead_letters())
    assert (answered(m, "503"), answered(m, "400"), answered(m, "429")) == (1, 1, 1)
    assert answered(m, "200") == 2, "the events left, then the identify"


async def test_the_forwarder_counts_events_a_429_holds_back(state, amplitude):
    _, _, sim = amplitude
    sim.faults.update({"throttle_users": ["user-00002"]})
    last = await spool(state, [event("user-00001", 1), event("user-00002", 2), event("user-00002", 3)])
    m = Metrics()
    fwd = forwarder(state, amplitude, m, throttle_pause=0.05)
    task = await running(fwd)
    await until(lambda: forwarded(m, "throttled") >= 2)
    sim.faults.update({"throttle_users": []})
    await until(lambda: fwd._written == last)
    await stopped(fwd, task)
    assert forwarded(m, "delivered") == 3 and forwarded(m, "dead_lettered") == 0
    assert forwarded(m, "throttled") == 2 * answered(m, "429"), "both of user-00002's events, at each 429"


# ---------------------------------------------------------------------- the daemon's /metrics


async def test_the_daemon_serves_the_ingest_metrics(tmp_path: Path) -> None:
    async with Sandbox(SandboxOptions()) as sb, aiohttp.ClientSession() as session:
        amplitude = sb.amplitude_app[AMPLITUDE_INGEST_STATE]
        amplitude.faults.update({"outage_seconds": 60})  # the forwarder's checkpoint holds the row in the spool
        daemon = Daemon(ingest_config(tmp_path, sb), components=default_components, install_signal_handlers=False)
        await daemon.startup()
        try:
            url = f"http://127.0.0.1:{daemon.components['ingest_listener'].port}"
            sent = {"api_key": APP_KEY, "events": [{"event_type": "Page View", "user_id": "user_123", "time": 1}] * 2}
            async with session.post(url + "/2/httpapi", json=sent) as resp:
                assert resp.status == 200
            await daemon_until(lambda: amplitude.answers.get(503))
            async with session.get(f"http://127.0.0.1:{daemon.admin_port}/metrics") as resp:
                text = await resp.text()
        finally:
            await daemon.shutdown()
        rows, size = spool_bytes(tmp_path / "state.db")
    lines = set(text.splitlines())
    assert 'amplitude_brevo_ingest_requests_total{code="200",endpoint="httpapi"} 1.0' in lines
    assert 'amplitude_brevo_ingest_events_total{outcome="accepted"} 2.0' in lines
    assert "amplitude_brevo_ingest_request_latency_seconds_count 1.0" in lines
    assert rows == 1 and "amplitude_brevo_ingest_spool_rows 1.0" in lines
    assert f"amplitude_brevo_ingest_spool_bytes {float(size)}" in lines
    assert any(line.startswith('amplitude_brevo_http_responses_total{api="amplitude_ingest",status="503"}')
               for line in lines), "the forwarder counts on the daemon's metrics"
