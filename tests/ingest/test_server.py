"""The ingest endpoint over a real socket and a real state file: Amplitude's answers, and a 200 only once the
request is committed to the spool."""

from __future__ import annotations

import asyncio
import gzip
import io
import sqlite3
import tracemalloc
import zlib
from contextlib import closing
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from amplitude_brevo.ingest.api_keys import fingerprint
from amplitude_brevo.state.spool import SpoolLimits
from tests.ingest.conftest import KEY, IngestFactory, Ingestion

JSON = {"Content-Type": "application/json"}


def event(n: int = 0, **fields: Any) -> dict[str, Any]:
    return {"event_type": "Purchase", "user_id": "cust-00042", "time": 1764686400123 + n, "insert_id": f"ins-{n}",
            **fields}


def body(*events: dict[str, Any], api_key: str = KEY, **top: Any) -> bytes:
    return orjson.dumps({"api_key": api_key, "events": list(events), **top})


async def post(ingestion: Ingestion, path: str, data: bytes, **headers: str) -> tuple[int, Any]:
    # Big bodies as a file object: aiohttp warns (an error here) about writing large raw bytes in one go.
    payload = io.BytesIO(data) if len(data) > 2**20 else data
    async with ingestion.client.post(path, data=payload, headers={**JSON, **headers}) as resp:
        text = await resp.text()
        return resp.status, (orjson.loads(text) if resp.content_type == "application/json" else text)


# ---------------------------------------------------------------------- accepted


@pytest.mark.parametrize("path", ["/2/httpapi", "/batch"])
async def test_an_accepted_request_is_spooled_with_the_caller_and_receive_time(
    ingest_server: IngestFactory, path: str
) -> None:
    sent = [event(0, ip="$remote", event_properties={"sku": "SKU-001"}), event(1, device_id="dev-aaaa1")]
    async with ingest_server() as ingestion:
        status, answer = await post(ingestion, path, body(*sent, options={"min_id_length": 5}))
        spooled = ingestion.spooled()
    assert status == 200
    assert answer["code"] == 200 and answer["events_ingested"] == 2
    assert answer["payload_size_bytes"] == len(body(*sent, options={"min_id_length": 5}))
    assert isinstance(answer["server_upload_time"], int)
    [(kind, entry)] = spooled
    assert kind == entry.kind == path.rsplit("/", 1)[1]
    assert entry.items == sent
    assert entry.options == {"min_id_length": 5}
    assert entry.caller == "127.0.0.1"
    assert entry.key_fingerprint == fingerprint(KEY)
    assert abs(entry.received_at_ms - answer["server_upload_time"]) < 60_000


async def test_the_spooled_row_is_committed_when_the_200_arrives(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        for n in range(5):
            status, _ = await post(ingestion, "/2/httpapi", body(event(n)))
            assert status == 200
            # Read on a connection of our own: only committed rows are visible to it.
            assert len(ingestion.spooled()) == n + 1


async def test_a_gzip_body_is_inflated(ingest_server: IngestFactory) -> None:
    sent = [event(n) for n in range(100)]
    async with ingest_server() as ingestion:
        status, answer = await post(ingestion, "/batch", gzip.compress(body(*sent)), **{"Content-Encoding": "gzip"})
        spooled = ingestion.spooled()
    assert (status, answer["events_ingested"]) == (200, 100)
    assert spooled[0][1].items == sent


@pytest.mark.parametrize("auto_decompress", [True, False], ids=["aiohttp-inflates", "ingest-inflates"])
async def test_a_gzip_body_is_inflated_whoever_inflates_it(ingest_server: IngestFactory, auto_decompress: bool) -> None:
    gzipped = gzip.compress(body(event(1)))
    async with ingest_server(server={"auto_decompress": auto_decompress}) as ingestion:
        assert (await post(ingestion, "/2/httpapi", gzipped, **{"Content-Encoding": "gzip"}))[0] == 200
        too_big = gzip.compress(body(event(2))[:-2] + b" " * 21_000_000 + b"]}")
        status, _ = await post(ingestion, "/2/httpapi", too_big, **{"Content-Encoding": "gzip"})
        assert status == 413
        assert [entry.items for _, entry in ingestion.spooled()] == [[event(1)]]


async def test_the_api_key_is_never_logged(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        with capture_logs() as logs:
            await post(ingestion, "/2/httpapi", body(event()))
            await post(ingestion, "/2/httpapi", body(event(), api_key="wrong-key-0000"))
    text = repr(logs)
    assert KEY not in text and "wrong-key-0000" not in text
    assert any(line["event"] == "ingest.request.refused" for line in logs)


# ---------------------------------------------------------------------- refused: Amplitude's status and body


def _many(n: int) -> bytes:
    return body(*[event(i) for i in range(n)])


INVALID_REQUESTS = [
    ("bad-json", b'{"api_key": "' + KEY.encode() + b'", "events": [', 400,
     {"code": 400, "error": "Invalid JSON request body"}),
    ("no-api-key", orjson.dumps({"events": [event()]}), 400,
     {"code": 400, "error": "Request missing required field", "missing_field": "api_key"}),
    ("no-events", orjson.dumps({"api_key": KEY}), 400,
     {"code": 400, "error": "Request missing required field", "missing_field": "events"}),
    ("no-event-type", body(event(), {"user_id": "cust-00042"}), 400,
     {"code": 400, "error": "Request missing required field", "events_with_missing_fields": {"event_type": [1]}}),
    ("short-id", body(event(user_id="abc")), 400,
     {"code": 400, "error": "Invalid field values on some events",
      "events_with_invalid_id_lengths": {"user_id": [0]}}),
    ("placeholder-id", body(event(), event(user_id="undefined")), 400,
     {"code": 400, "error": "Invalid field values on some events", "events_with_invalid_fields": {"user_id": [1]}}),
    ("iso-time", body(event(time="2026-12-02T10:00:00Z")), 400,
     {"code": 400, "error": "Invalid field values on some events", "events_with_invalid_fields": {"time": [0]}}),
    ("2001-events", _many(2001), 413, {"code": 413, "error": "Payload too large"}),
    ("21-MB-body", body(event(event_properties={"pad": "x" * 1000}))[:-2] + b" " * 21_000_000 + b"]}", 413,
     {"code": 413, "error": "Payload too large"}),
]


@pytest.mark.parametrize(("name", "data", "status", "expected"), INVALID_REQUESTS, ids=[r[0] for r in INVALID_REQUESTS])
async def test_invalid_requests_get_amplitudes_answer_and_change_nothing(
    ingest_server: IngestFactory, name: str, data: bytes, status: int, expected: dict[str, Any]
) -> None:
    async with ingest_server() as ingestion:
        assert await post(ingestion, "/2/httpapi", data) == (status, expected)
        assert await post(ingestion, "/batch", data) == (status, expected)
        assert ingestion.spooled() == []
        assert await ingestion.state.spool_depth() == 0


async def test_a_wrong_key_gets_the_answer_the_sdk_stops_on(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        status, answer = await post(ingestion, "/2/httpapi", body(event(), api_key="someone-elses-key"))
        assert ingestion.spooled() == []
    assert status == 400 and answer["error"].startswith("Invalid API key:")
    assert "someone-elses-key" not in answer["error"]


async def test_a_gzip_bomb_stops_at_the_limit(ingest_server: IngestFactory) -> None:
    # 120 MB of spaces inside the JSON, ~120 kB on the wire.
    squeeze = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = body(event())[:-2]
    bomb = squeeze.compress(head) + b"".join(squeeze.compress(b" " * 2**20) for _ in range(120))
    bomb += squeeze.compress(b"]}") + squeeze.flush()
    assert len(bomb) < 2**20
    async with ingest_server() as ingestion:
        tracemalloc.start()
        try:
            status, answer = await post(ingestion, "/batch", bomb, **{"Content-Encoding": "gzip"})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert ingestion.spooled() == []
    assert (status, answer) == (413, {"code": 413, "error": "Payload too large"})
    # Reading stopped at the 20 MiB limit: holding the inflated 120 MB would have taken far more.
    assert peak < 64 * 2**20


async def test_a_chunked_body_over_the_limit_is_refused_without_a_length(ingest_server: IngestFactory) -> None:
    async def chunks():
        yield body(event())[:-2]
        for _ in range(21):
            yield b" " * 2**20
        yield b"]}"

    async with ingest_server() as ingestion:
        async with ingestion.client.post("/2/httpapi", data=chunks(), headers=JSON) as resp:
            assert resp.status == 413
            assert await resp.json() == {"code": 413, "error": "Payload too large"}
        assert ingestion.spooled() == []


async def test_a_broken_gzip_body_is_bad_json(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        broken = gzip.compress(body(event()))[:-12]
        status, answer = await post(ingestion, "/2/httpapi", broken, **{"Content-Encoding": "gzip"})
        assert ingestion.spooled() == []
    assert (status, answer) == (400, {"code": 400, "error": "Invalid JSON request body"})


async def test_a_body_marked_gzip_that_is_not_is_bad_json_not_a_500(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        status, answer = await post(ingestion, "/2/httpapi", body(event()), **{"Content-Encoding": "gzip"})
        assert ingestion.spooled() == []
    assert (status, answer) == (400, {"code": 400, "error": "Invalid JSON request body"})


async def test_a_caller_outside_allow_from_gets_403_and_a_log_line(ingest_server: IngestFactory) -> None:
    async with ingest_server(allow_from=["10.0.0.0/8", "::1/128"]) as ingestion:
        with capture_logs() as logs:
            assert await post(ingestion, "/2/httpapi", body(event())) == (403, {"code": 403, "error": "Forbidden"})
            async with ingestion.client.get("/healthz") as resp:
                assert resp.status == 403
        assert ingestion.spooled() == []
    refused = [line for line in logs if line["event"] == "ingest.caller.refused"]
    assert refused and refused[0]["peer"] == "127.0.0.1" and refused[0]["log_level"] == "warning"


async def test_a_caller_inside_allow_from_is_served(ingest_server: IngestFactory) -> None:
    async with ingest_server(allow_from=["127.0.0.0/8"]) as ingestion:
        assert (await post(ingestion, "/2/httpapi", body(event())))[0] == 200


async def test_x_forwarded_for_names_the_caller_only_behind_a_trusted_proxy(ingest_server: IngestFactory) -> None:
    forwarded = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}
    async with ingest_server() as ingestion:
        await post(ingestion, "/2/httpapi", body(event()), **forwarded)
        assert ingestion.spooled()[-1][1].caller == "127.0.0.1"
    async with ingest_server(trusted_proxies=["127.0.0.1/32"]) as ingestion:
        await post(ingestion, "/2/httpapi", body(event()), **forwarded)
        assert ingestion.spooled()[-1][1].caller == "203.0.113.7"


async def test_healthz(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        async with ingestion.client.get("/healthz") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})


# ---------------------------------------------------------------------- Identify and Group Identify

IDENTIFICATION = [{"user_id": "cust-00042", "user_properties": {"$set": {"plan": "pro"}, "$add": {"logins": 1}}}]
GROUP = {"group_type": "company", "group_value": "acme", "group_properties": {"$set": {"plan": "enterprise"}}}


async def test_identify_by_form_post_and_by_get(ingest_server: IngestFactory) -> None:
    fields = {"api_key": KEY, "identification": orjson.dumps(IDENTIFICATION).decode()}
    async with ingest_server() as ingestion:
        async with ingestion.client.post("/identify", data=fields) as resp:
            assert (resp.status, await resp.text()) == (200, "success")
        async with ingestion.client.get("/identify", params=fields) as resp:
            assert (resp.status, await resp.text()) == (200, "success")
        spooled = ingestion.spooled()
    assert [kind for kind, _ in spooled] == ["identify", "identify"]
    assert all(entry.items == IDENTIFICATION and entry.caller == "127.0.0.1" for _, entry in spooled)


async def test_identify_gzip_form_and_multipart(ingest_server: IngestFactory) -> None:
    from urllib.parse import urlencode

    import aiohttp

    form = urlencode({"api_key": KEY, "identification": orjson.dumps(IDENTIFICATION[0]).decode()}).encode()
    async with ingest_server() as ingestion:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"}
        async with ingestion.client.post("/identify", data=gzip.compress(form), headers=headers) as resp:
            assert resp.status == 200
        multipart = aiohttp.FormData({"api_key": KEY, "identification": orjson.dumps(IDENTIFICATION).decode()})
        multipart._is_multipart = True
        async with ingestion.client.post("/identify", data=multipart) as resp:
            assert resp.status == 200
        assert [entry.items for _, entry in ingestion.spooled()] == [IDENTIFICATION, IDENTIFICATION]


async def test_group_identify(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        fields = {"api_key": KEY, "identification": orjson.dumps(GROUP).decode()}
        async with ingestion.client.post("/groupidentify", data=fields) as resp:
            assert (resp.status, await resp.text()) == (200, "success")
        async with ingestion.client.get("/groupidentify", params=fields) as resp:
            assert resp.status == 200
        spooled = ingestion.spooled()
    assert [(kind, entry.items) for kind, entry in spooled] == [("groupidentify", [GROUP])] * 2


@pytest.mark.parametrize(
    ("path", "fields", "status", "expected"),
    [
        ("/identify", {"identification": "[]"}, 400,
         {"code": 400, "error": "Request missing required field", "missing_field": "api_key"}),
        ("/identify", {"api_key": KEY}, 400, {"code": 400, "error": "missing_event"}),
        ("/identify", {"api_key": KEY, "identification": "{no"}, 400, {"code": 400, "error": "missing_event"}),
        ("/identify", {"api_key": KEY, "identification": '{"user_id": "null"}'}, 400,
         {"code": 400, "error": "Invalid field values on some events", "events_with_invalid_fields": {"user_id": [0]}}),
        ("/groupidentify", {"api_key": KEY, "identification": '{"group_type": "company"}'}, 400,
         {"code": 400, "error": "Request missing required field",
          "events_with_missing_fields": {"group_value": [0]}}),
        ("/groupidentify", {"api_key": KEY, "identification": orjson.dumps([GROUP] * 1025).decode()}, 413,
         {"code": 413, "error": "Payload too large"}),
    ],
)
async def test_identify_refused(
    ingest_server: IngestFactory, path: str, fields: dict[str, str], status: int, expected: dict[str, Any]
) -> None:
    async with ingest_server() as ingestion:
        async with ingestion.client.post(path, data=fields) as resp:
            assert (resp.status, await resp.json()) == (status, expected)
        assert ingestion.spooled() == []


async def test_identify_with_a_wrong_key(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        async with ingestion.client.get("/identify", params={"api_key": "nope-nope", "identification": "{}"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"].startswith("Invalid API key:")
        assert ingestion.spooled() == []


# ---------------------------------------------------------------------- group commit and the size bound


async def test_concurrent_requests_share_commits(ingest_server: IngestFactory) -> None:
    requests = 40
    async with ingest_server() as ingestion:
        writer = ingestion.service.writer
        assert (await post(ingestion, "/2/httpapi", body(event(-1))))[0] == 200  # the spool has been counted
        # Another connection holds the write lock: the first request's commit waits, the rest queue behind it.
        with closing(sqlite3.connect(ingestion.path, isolation_level=None)) as blocker:
            blocker.execute("BEGIN IMMEDIATE")
            posts = [asyncio.ensure_future(post(ingestion, "/2/httpapi", body(event(n)))) for n in range(requests)]
            async with asyncio.timeout(10):
                while writer.queued < requests - 1:
                    await asyncio.sleep(0.001)
            assert writer.commits == 1
            blocker.execute("ROLLBACK")
            answers = await asyncio.gather(*posts)
        assert all(status == 200 for status, _ in answers)
        assert (writer.commits, writer.entries) == (1 + 2, 1 + requests)
        assert len(ingestion.spooled()) == 1 + requests


async def test_a_full_spool_answers_429_in_amplitudes_throttle_shape_and_logs_it(ingest_server: IngestFactory) -> None:
    async with ingest_server(limits=SpoolLimits(max_rows=2, max_bytes=None)) as ingestion:
        for n in range(3):
            assert (await post(ingestion, "/2/httpapi", body(event(n))))[0] == 200
        with capture_logs() as logs:
            status, answer = await post(ingestion, "/batch", body(event(3), event(4)))
            assert (await post(ingestion, "/2/httpapi", body(event(5))))[0] == 429
        assert len(ingestion.spooled()) == 3
        # A consumer frees the oldest rows: room again.
        await ingestion.state.spool_delete_through(2)
        assert (await post(ingestion, "/2/httpapi", body(event(6))))[0] == 200
    assert status == 429
    assert answer == {
        "code": 429,
        "error": "Too many requests for some devices and users",
        "eps_threshold": 30,
        "throttled_devices": {},
        "throttled_users": {},
        "throttled_events": [0, 1],
        "exceeded_daily_quota_users": {},
        "exceeded_daily_quota_devices": {},
    }
    full = [line for line in logs if line["event"] == "ingest.spool.full"]
    assert len(full) == 1 and full[0]["log_level"] == "warning"
    assert sum(line["event"] == "ingest.request.throttled" for line in logs) == 2


async def test_a_spool_that_cannot_commit_answers_503(ingest_server: IngestFactory) -> None:
    async with ingest_server() as ingestion:
        await ingestion.state.close()
        status, answer = await post(ingestion, "/2/httpapi", body(event()))
    assert (status, answer) == (503, {"code": 503, "error": "Service unavailable"})
