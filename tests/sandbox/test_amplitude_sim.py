"""Tests of the loopback Amplitude Export API simulator and its deterministic sample data."""

from __future__ import annotations

import asyncio
import gzip
import io
import re
import statistics
import tracemalloc
import zipfile
import zlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from amplitude_brevo.sandbox.amplitude_sim import (
    AMPLITUDE_EXPORT_STATE,
    HTML_404_BODY,
    MALFORMED_LINE,
    ExportFaults,
    build_export_zip,
    make_amplitude_app,
)
from amplitude_brevo.sandbox.sample_data import (
    EXPORT_ROW_FIELDS,
    DatasetSpec,
    bad_value_users,
    format_ts,
    hour_key,
    hours,
    parse_hour_key,
    rows_for_hour,
)

API_KEY, SECRET_KEY = "sandbox-api-key", "sandbox-secret-key"
AUTH = {"Authorization": aiohttp.encode_basic_auth(API_KEY, SECRET_KEY)}
START = datetime(2024, 1, 15, 0, tzinfo=UTC)
SPEC = DatasetSpec(start=START, hours=4, rows_per_hour=600, users=120)
MEMBER_RE = re.compile(r"(\d+)_(\d{4}-\d{2}-\d{2})_(\d{1,2})#(\d+)\.json\.gz$")
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")

# amplitude-api.md §1 "Complete field list of an exported row", spelled out independently of the code.
REFERENCE_FIELDS = {
    "$insert_id", "$insert_key", "$schema", "adid", "amplitude_attribution_ids", "amplitude_event_type",
    "amplitude_id", "app", "city", "client_event_time", "client_upload_time", "country", "data", "data_type",
    "device_brand", "device_carrier", "device_family", "device_id", "device_manufacturer", "device_model",
    "device_type", "dma", "event_id", "event_properties", "event_time", "event_type", "global_user_properties",
    "group_properties", "groups", "idfa", "ip_address", "is_attribution_event", "language", "library",
    "location_lat", "location_lng", "os_name", "os_version", "partner_id", "paying", "plan", "platform",
    "processed_time", "region", "sample_rate", "server_received_time", "server_upload_time", "session_id",
    "source_id", "start_version", "user_creation_time", "user_id", "user_properties", "uuid", "version_name",
}  # fmt: skip
TIMESTAMP_FIELDS = (
    "event_time", "client_event_time", "client_upload_time", "server_received_time", "server_upload_time",
    "processed_time", "user_creation_time",
)  # fmt: skip


def _key(offset_hours: int) -> str:
    return hour_key(START + timedelta(hours=offset_hours))


def _ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)


def _read_zip(body: bytes) -> tuple[zipfile.ZipFile, list[str]]:
    zf = zipfile.ZipFile(io.BytesIO(body))
    return zf, [n for n in zf.namelist() if n.endswith(".json.gz")]


def _member_rows(zf: zipfile.ZipFile, name: str) -> list[dict]:
    return [orjson.loads(line) for line in gzip.decompress(zf.read(name)).splitlines() if line]


@pytest.fixture(scope="module")
def sample_rows() -> list[dict]:
    return [row for h in hours(SPEC) for row in rows_for_hour(SPEC, h)]


@pytest.fixture
async def sim(clock):
    faults = ExportFaults(clock=clock)
    app = make_amplitude_app(
        SPEC, api_key=API_KEY, secret_key=SECRET_KEY, faults=faults, members_per_hour=3, empty_hours={_key(3)}
    )
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        yield server, session, faults


async def _export(server: TestServer, session: aiohttp.ClientSession, start: str, end: str, auth=AUTH):
    url = server.make_url("/api/2/export")
    async with session.get(url, params={"start": start, "end": end}, headers=auth) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


# ---------------------------------------------------------------------------------------------------------
# sample data


def test_rows_carry_every_reference_field(sample_rows):
    assert set(EXPORT_ROW_FIELDS) == REFERENCE_FIELDS
    for row in sample_rows:
        assert REFERENCE_FIELDS <= row.keys(), REFERENCE_FIELDS - row.keys()
        assert row["app"] == SPEC.app_id
        assert isinstance(row["amplitude_id"], int) and isinstance(row["session_id"], int)
        for f in TIMESTAMP_FIELDS:
            assert TS_RE.match(row[f]), (f, row[f])
    assert len({row["uuid"] for row in sample_rows}) == len(sample_rows)


def test_server_upload_time_lies_within_its_hour_and_late_rows_exist():
    for h in hours(SPEC):
        uploads = [_ts(r["server_upload_time"]) for r in rows_for_hour(SPEC, h)]
        assert len(uploads) == SPEC.rows_per_hour
        assert all(h <= u < h + timedelta(hours=1) for u in uploads)
        assert uploads == sorted(uploads)
    rows = list(rows_for_hour(SPEC, START + timedelta(hours=1)))
    late = [r for r in rows if _ts(r["server_upload_time"]) - _ts(r["event_time"]) > timedelta(hours=1)]
    assert 0 < len(late) < len(rows) * 0.1
    # event_time = client_event_time + (server_received_time - client_upload_time) once the skew reaches 60 s
    skewed = 0
    for r in rows:
        skew = _ts(r["server_received_time"]) - _ts(r["client_upload_time"])
        expected = _ts(r["client_event_time"]) + (skew if abs(skew) >= timedelta(seconds=60) else timedelta())
        assert _ts(r["event_time"]) == expected
        skewed += abs(skew) >= timedelta(seconds=60)
    assert skewed > 0


def test_rows_are_deterministic_and_lazy():
    h = START + timedelta(hours=2)
    assert list(rows_for_hour(SPEC, h)) == list(rows_for_hour(SPEC, h))
    assert list(rows_for_hour(SPEC, h)) != list(rows_for_hour(SPEC, h - timedelta(hours=1)))
    other = DatasetSpec(start=START, hours=4, rows_per_hour=600, users=120, seed=7)
    assert next(rows_for_hour(other, h))["uuid"] != next(rows_for_hour(SPEC, h))["uuid"]
    assert list(rows_for_hour(SPEC, START - timedelta(hours=1))) == []
    assert list(rows_for_hour(SPEC, SPEC.end)) == []
    big = DatasetSpec(start=START, hours=1, rows_per_hour=10_000_000)
    gen = rows_for_hour(big, START)
    first = [next(gen) for _ in range(3)]  # lazy: does not build 10M rows first
    gen.close()
    assert next(rows_for_hour(big, START)) == first[0]
    # a yielded row is a fresh object: mutating it does not leak into the next generation
    a = next(rows_for_hour(SPEC, h))
    a["event_properties"]["x"] = 1
    a["user_properties"].clear()
    assert next(rows_for_hour(SPEC, h)) != a


def test_hour_helpers():
    assert hour_key(datetime(2024, 1, 5, 7, tzinfo=UTC)) == "20240105T07"
    assert parse_hour_key("20240105T07") == datetime(2024, 1, 5, 7, tzinfo=UTC)
    for bad in ("2024010507", "20240105T7", "20241305T07", ""):
        with pytest.raises(ValueError):
            parse_hour_key(bad)
    assert hours(SPEC) == [START + timedelta(hours=i) for i in range(4)]
    assert format_ts(1705313025123) == "2024-01-15 10:03:45.123000"
    with pytest.raises(ValueError):
        DatasetSpec(start=datetime(2024, 1, 15, 0, 30, tzinfo=UTC))
    assert DatasetSpec(start=datetime(2024, 1, 15, 3)).start == datetime(2024, 1, 15, 3, tzinfo=UTC)


def test_rows_look_like_real_traffic(sample_rows):
    anonymous = [r for r in sample_rows if r["user_id"] is None]
    assert 0 < len(anonymous) < len(sample_rows) * 0.15
    assert all("email" not in r["user_properties"] for r in anonymous)
    no_insert_id = [r for r in sample_rows if r["$insert_id"] is None]
    assert 0 < len(no_insert_id) < len(sample_rows) * 0.2
    assert {r["event_type"] for r in sample_rows} == set(SPEC.event_types)

    identified = [r for r in sample_rows if r["user_id"] is not None]
    for key in ("email", "first_name", "last_name", "plan_type", "signup_date", "total_purchases",
                "lifetime_revenue", "last_active", "device_type", "interests"):  # fmt: skip
        assert all(key in r["user_properties"] for r in identified), key
    assert any(isinstance(r["user_properties"]["interests"], list) and r["user_properties"]["interests"]
               for r in identified)  # fmt: skip
    phones = [r["user_properties"]["phone"] for r in identified if "phone" in r["user_properties"]]
    assert any(p.startswith("+") for p in phones) and any(not p.startswith("+") for p in phones)
    assert sum(p.startswith("+") for p in phones) > len(phones) / 2
    emails = defaultdict(set)
    for r in identified:
        emails[r["user_id"]].add(r["user_properties"]["email"])
    assert all(len(v) == 1 for v in emails.values())  # a user keeps their email across rows

    revenue = [r for r in sample_rows if r["event_type"] in ("Purchase", "Revenue", "Subscription Started")]
    assert revenue
    for r in revenue:
        ep = r["event_properties"]
        assert "$price" in ep and "$quantity" in ep
        assert not {"price", "revenue", "revenueType"} & r.keys()  # never top-level
    full = [r for r in revenue if "$revenue" in r["event_properties"]]
    assert full and all({"$productId", "$revenueType"} <= r["event_properties"].keys() for r in full)
    assert any("$revenue" not in r["event_properties"] for r in revenue)  # price + quantity only
    assert any(r["event_properties"]["$revenue"] < 0 for r in full)  # refunds
    keys = {k for r in sample_rows for k in r["event_properties"]}
    assert any(" " in k for k in keys) and any("." in k for k in keys)


def test_row_size_is_realistic(sample_rows):
    avg = statistics.mean(len(orjson.dumps(r)) for r in sample_rows)
    assert 1400 <= avg <= 2100, avg


# ---------------------------------------------------------------------------------------------------------
# export endpoint


async def test_export_zip_parses_back_to_generated_rows(sim):
    server, session, _ = sim
    status, ctype, body = await _export(server, session, _key(0), _key(2))
    assert status == 200 and ctype == "application/zip" and body[:2] == b"PK"
    zf, members = _read_zip(body)
    with zf:
        assert all(n.startswith(f"{SPEC.app_id}/") for n in zf.namelist())
        by_hour: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for name in members:
            m = MEMBER_RE.search(name)
            assert m, name
            assert name == f"{SPEC.app_id}/{m.group(0)}"
            app, day, hour, part = m.groups()
            assert int(app) == SPEC.app_id and day == "2024-01-15"
            assert str(int(hour)) == hour  # not zero-padded
            by_hour[int(hour)].append((int(part), name))
        assert sorted(by_hour) == [0, 1, 2]
        for hour, parts in by_hour.items():
            assert len(parts) == 3  # several members per busy hour
            got = [row for _, name in sorted(parts) for row in _member_rows(zf, name)]
            assert got == list(rows_for_hour(SPEC, START + timedelta(hours=hour)))


async def test_export_auth_and_parameter_errors(sim):
    server, session, _ = sim
    assert (await _export(server, session, _key(0), _key(0), auth=None))[0] == 401
    bad = {"Authorization": aiohttp.encode_basic_auth(API_KEY, "wrong")}
    assert (await _export(server, session, _key(0), _key(0), auth=bad))[0] == 401
    assert (await _export(server, session, "2024-01-15", _key(0)))[0] == 400
    assert (await _export(server, session, _key(2), _key(1)))[0] == 400
    async with session.get(server.make_url("/api/2/export"), params={"start": _key(0)}, headers=AUTH) as resp:
        assert resp.status == 400


async def test_export_empty_range_is_404(sim):
    server, session, _ = sim
    assert (await _export(server, session, _key(-5), _key(-1)))[0] == 404
    assert (await _export(server, session, _key(4), _key(30)))[0] == 404
    assert (await _export(server, session, _key(3), _key(3)))[0] == 404  # empty_hours
    status, _, body = await _export(server, session, _key(2), _key(9))  # partly empty: only hour 2
    zf, members = _read_zip(body)
    with zf:
        assert status == 200 and {MEMBER_RE.search(n).group(3) for n in members} == {"2"}


async def test_export_too_large_is_400(sim):
    server, session, faults = sim
    faults.max_hours_per_request = 2
    status, _, body = await _export(server, session, _key(0), _key(2))
    assert status == 400 and b"too large" in body
    assert (await _export(server, session, _key(0), _key(1)))[0] == 200


async def test_status_fault_fires_once_then_serves(sim):
    server, session, faults = sim
    faults.status_for_hours[_key(1)] = 504
    assert (await _export(server, session, _key(0), _key(2)))[0] == 504
    status, _, body = await _export(server, session, _key(0), _key(2))
    assert status == 200 and body[:2] == b"PK"
    async with session.get(server.make_url("/_sandbox/amplitude/requests")) as resp:
        log = await resp.json()
    assert [(e["start"], e["end"], e["status"]) for e in log] == [(_key(0), _key(2), 504), (_key(0), _key(2), 200)]
    assert log[1]["completed"] is True and log[1]["rows"] == 3 * SPEC.rows_per_hour

    faults.once = False
    faults.status_for_hours = {_key(0): 429}
    assert (await _export(server, session, _key(0), _key(0)))[0] == 429
    assert (await _export(server, session, _key(0), _key(0)))[0] == 429
    assert (await _export(server, session, _key(1), _key(1)))[0] == 200


async def test_not_zip_once(sim):
    server, session, faults = sim
    faults.not_zip_once.add(_key(0))
    status, _, body = await _export(server, session, _key(0), _key(0))
    assert status == 200 and body[:2] != b"PK"
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(body))
    status, _, body = await _export(server, session, _key(0), _key(0))
    assert status == 200 and body[:2] == b"PK"


async def test_truncated_member_and_malformed_line(sim):
    server, session, faults = sim
    faults.truncate_member.add(_key(1))
    faults.malformed_line.add(_key(2))
    status, _, body = await _export(server, session, _key(0), _key(2))
    assert status == 200
    zf, members = _read_zip(body)
    with zf:
        assert zf.testzip() is None  # the zip itself is intact
        broken, malformed = [], []
        for name in members:
            hour = int(MEMBER_RE.search(name).group(3))
            try:
                lines = gzip.decompress(zf.read(name)).splitlines()
            except (EOFError, gzip.BadGzipFile, zlib.error):
                broken.append(hour)
                with gzip.open(zf.open(name)) as g, pytest.raises((EOFError, gzip.BadGzipFile, zlib.error)):
                    for _ in g:
                        pass
                continue
            for line in lines:
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError:
                    malformed.append((hour, line))
        assert broken == [1]
        assert malformed == [(2, MALFORMED_LINE)]


async def test_html_404_fault_answers_like_a_proxy_for_a_number_of_requests_or_a_while(sim, clock):
    server, session, faults = sim
    url = server.make_url("/_sandbox/amplitude/faults")
    async with session.post(url, json={"html_404_requests": 2}) as r:
        assert (await r.json())["html_404_requests"] == 2
    for auth in (AUTH, None):  # the proxy answers before any authentication
        status, content_type, body = await _export(server, session, _key(0), _key(0), auth=auth)
        assert (status, content_type, body) == (404, "text/html", HTML_404_BODY)
    assert (await _export(server, session, _key(0), _key(0)))[0] == 200
    async with session.post(url, json={"html_404_seconds": 600}) as r:
        assert (await r.json())["html_404_remaining_seconds"] == 600
    assert [(await _export(server, session, _key(0), _key(0)))[0] for _ in range(3)] == [404] * 3
    clock.advance(599.5)
    async with session.get(url) as r:
        assert (await r.json())["html_404_remaining_seconds"] == 0.5
    assert (await _export(server, session, _key(0), _key(0)))[0] == 404
    clock.advance(0.5)
    assert (await _export(server, session, _key(0), _key(0)))[0] == 200, "the while is over"
    async with session.post(url, json={"html_404_seconds": 600}) as r:
        assert (await r.json())["html_404_remaining_seconds"] == 600
    async with session.post(url, json={"reset": True}) as r:
        assert (await r.json())["html_404_remaining_seconds"] == 0
    assert faults.clock is clock, "a reset keeps the clock"
    assert (await _export(server, session, _key(0), _key(0)))[0] == 200
    assert faults.html_404_requests == 0


async def test_control_routes_update_faults(sim):
    server, session, faults = sim
    url = server.make_url("/_sandbox/amplitude/faults")
    async with session.post(url, json={"status_for_hours": {_key(0): 500}, "once": True, "latency": 0.01}) as r:
        assert r.status == 200
        assert (await r.json())["status_for_hours"] == {_key(0): 500}
    assert faults.status_for_hours == {_key(0): 500} and faults.latency == 0.01
    assert (await _export(server, session, _key(0), _key(0)))[0] == 500
    assert (await _export(server, session, _key(0), _key(0)))[0] == 200
    async with session.post(url, json={"truncate_member": [_key(1)], "empty_hours": [_key(0)]}) as r:
        assert r.status == 200
    assert faults.truncate_member == {_key(1)}
    assert (await _export(server, session, _key(0), _key(0)))[0] == 404
    async with session.post(url, json={"bogus": 1}) as r:
        assert r.status == 400
    async with session.post(url, json={"not_zip_once": ["yesterday"]}) as r:
        assert r.status == 400
    async with session.post(url, json={"reset": True, "empty_hours": []}) as r:
        assert r.status == 200
    assert faults.truncate_member == set() and faults.latency == 0.0
    async with session.get(url) as r:
        assert (await r.json())["max_hours_per_request"] is None
    async with session.delete(server.make_url("/_sandbox/amplitude/requests")) as r:
        assert await r.json() == []


async def test_large_export_is_streamed(tmp_path):
    spec = DatasetSpec(start=START, hours=3, rows_per_hour=20_000, users=2000)
    app = make_amplitude_app(spec, api_key=API_KEY, secret_key=SECRET_KEY, members_per_hour=2)
    target = tmp_path / "export.zip"
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        params = {"start": _key(0), "end": _key(2)}
        async with session.get(server.make_url("/api/2/export"), params=params, headers=AUTH) as resp:
            assert resp.status == 200
            assert "Content-Length" not in resp.headers  # chunked: the size is not known up front
            entry = app[AMPLITUDE_EXPORT_STATE].requests[-1]
            first = True
            with target.open("wb") as fh:
                async for chunk in resp.content.iter_chunked(1 << 16):
                    if first:
                        assert "completed" not in entry  # server is still producing while we receive
                        first = False
                    fh.write(chunk)
        for _ in range(500):  # the handler records the outcome just after the last byte went out
            if "completed" in entry:
                break
            await asyncio.sleep(0.01)
        assert entry["completed"] is True and entry["rows"] == 60_000
    rows = 0
    with zipfile.ZipFile(target) as zf:
        names = [n for n in zf.namelist() if n.endswith(".json.gz")]
        assert len(names) == 6
        for name in names:
            with zf.open(name) as raw, gzip.open(raw) as g:
                rows += sum(1 for _ in g)
    assert rows == 60_000


async def test_client_abort_stops_the_producer():
    spec = DatasetSpec(start=START, hours=3, rows_per_hour=50_000, users=2000)
    app = make_amplitude_app(spec, api_key=API_KEY, secret_key=SECRET_KEY)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        params = {"start": _key(0), "end": _key(2)}
        resp = await session.get(server.make_url("/api/2/export"), params=params, headers=AUTH)
        assert resp.status == 200
        assert (await resp.content.read(1 << 16))[:2] == b"PK"
        resp.close()  # drop the connection mid-download
        entry = app[AMPLITUDE_EXPORT_STATE].requests[-1]
        for _ in range(500):
            if "completed" in entry:
                break
            await asyncio.sleep(0.01)
        assert entry["completed"] is False and entry["bytes"] < 20_000_000


def test_build_export_zip_memory_stays_flat(tmp_path):
    spec = DatasetSpec(start=START, hours=2, rows_per_hour=4000, users=300)
    next(rows_for_hour(spec, START))  # warm the per-spec user population cache
    target = tmp_path / "big.zip"
    tracemalloc.start()
    try:
        with target.open("wb") as fh:
            stats = build_export_zip(spec, START, START + timedelta(hours=1), fh, members_per_hour=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats == (4, 8000, 2)
    with zipfile.ZipFile(target) as zf:  # gzip trailer: ISIZE = uncompressed length of the member
        uncompressed = sum(
            int.from_bytes(zf.read(n)[-4:], "little") for n in zf.namelist() if n.endswith(".json.gz")
        )
    assert peak < 3_000_000 < uncompressed / 4, (peak, uncompressed)


# ---------------------------------------------------------------------------------------------- sample data for contacts

# The seed's example property_mapping (SPEC Appendix A): Amplitude property -> Brevo attribute.
SEED_PROPERTY_MAPPING = {
    "email": "email", "first_name": "FIRSTNAME", "last_name": "LASTNAME", "phone": "SMS", "plan_type": "PLAN",
    "signup_date": "SIGNUP_DATE", "total_purchases": "ORDER_COUNT", "lifetime_revenue": "LTV",
    "last_active": "LAST_ACTIVE", "device_type": "DEVICE",
}  # fmt: skip
DEFAULT_SPEC = DatasetSpec(start=datetime(2026, 11, 1, tzinfo=UTC))  # the sandbox's: 6 h x 2,000 rows, 500 users


@pytest.fixture(scope="module")
def default_rows() -> list[dict]:
    return [row for h in hours(DEFAULT_SPEC) for row in rows_for_hour(DEFAULT_SPEC, h)]


def test_default_data_keeps_its_rows_and_event_types(default_rows):
    """Pinned: other tests count these; the bad values for contacts must not move them."""
    assert len(default_rows) == 12_000
    first_hour = defaultdict(int)
    for row in default_rows[:2000]:
        first_hour[row["event_type"]] += 1
    assert dict(first_hour) == {
        "$identify": 133, "Add to Cart": 203, "Feature Click": 398, "Page View": 669, "Purchase": 131,
        "Revenue": 72, "Sign Up": 83, "Subscription Started": 39, "session_start": 272,
    }  # fmt: skip
    assert sum(1 for r in default_rows if r["user_id"]) == 11_384


def test_every_seed_mapping_key_has_a_source(default_rows):
    identified = [r for r in default_rows if r["user_id"] is not None]
    for key in SEED_PROPERTY_MAPPING:
        with_value = [r for r in identified if r["user_properties"].get(key) not in (None, "")]
        share = len(with_value) / len(identified)
        assert share > (0.9 if key == "phone" else 0.999), (key, share)
    assert all(r["device_type"] for r in default_rows)  # also a top-level column
    good = set(bad_value_users(DEFAULT_SPEC)["signup_date"])
    dates = {r["user_properties"]["signup_date"] for r in identified if r["user_id"] not in good}
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", d) and datetime.fromisoformat(d) for d in dates)
    assert all(r["user_properties"]["last_active"].endswith("Z") for r in identified)


def test_bad_values_are_few_fixed_and_listed(default_rows):
    from amplitude_brevo.pipeline.remap import email_id
    from amplitude_brevo.sandbox.brevo_sim import EMAIL_RE

    bad = bad_value_users(DEFAULT_SPEC)
    assert bad["signup_date"] == {"user-00037": "31/02/2024", "user-00137": "soon", "user-00237": "31/02/2024",
                                  "user-00337": "soon", "user-00437": "31/02/2024"}
    assert set(bad["email"]) == {"user-00011", "user-00211", "user-00411"}
    assert set(bad["newsletter"]) == {f"user-{i:05d}" for i in range(23, 500, 50)}
    assert 0.10 < len(bad["phone"]) / DEFAULT_SPEC.users < 0.20
    assert bad_value_users(DatasetSpec(seed=7, users=500))["signup_date"].keys() == bad["signup_date"].keys()
    # every email listed is refused by the Brevo sandbox; some pass a naive x@y.z check (only Brevo refuses them)
    assert not any(EMAIL_RE.match(e) for e in bad["email"].values())
    assert sum(email_id(e) is not None for e in bad["email"].values()) == 2
    seen: dict[str, dict] = {}
    for row in default_rows:
        if row["user_id"] is not None:
            seen[row["user_id"]] = row["user_properties"]
    for kind, users in bad.items():
        assert users and all(u in seen and seen[u][kind] == v for u, v in users.items()), kind
    others = [up for u, up in seen.items() if u not in bad["newsletter"]]
    assert {up["newsletter"] for up in others} == {True, False}
    assert all(EMAIL_RE.match(up["email"]) for u, up in seen.items() if u not in bad["email"])
