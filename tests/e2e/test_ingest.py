"""Realtime ingest end to end (issue 9 acceptance): the daemon and the sandbox as separate processes, apps
talking to the daemon's endpoint with the official `amplitude-analytics` SDK or plain HTTP.

What Amplitude and Brevo should hold is computed here from what was sent (and, for the export replay, from the
sandbox's own sample data: the live events *are* the export hour's rows, sent as an app would have sent them).
"""

from __future__ import annotations

import asyncio
import gzip
import io
import signal
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from amplitude_brevo.state.checkpoints import number_key

from .conftest import (
    SANDBOX_ENV,
    DaemonProcess,
    SandboxProcess,
    amount_of,
    checkpoint,
    contacts_pending,
    expected_events,
    free_port,
    sandbox_config,
    write_config,
)

APP_KEY = "app-key-e2e-12345"
HOUR = "2026-11-01T00"
# The export row's revenue keys, and the HTTP V2 (SDK) field an app sends each as.
REVENUE_FIELDS = {"$price": "price", "$quantity": "quantity", "$revenue": "revenue", "$productId": "product_id",
                  "$revenueType": "revenue_type"}
PROPERTY_MAPPING = {"email": "email", "plan_type": "PLAN", "first_plan": "FIRST_PLAN", "visits": "VISITS",
                    "tier": "TIER"}


def ingest_config(tmp_path, sb: SandboxProcess, port: int, **overrides: Any) -> dict[str, Any]:
    """The sandbox config with the endpoint on `port` and the export off (a test switches it on)."""
    cfg = sandbox_config(tmp_path, sb, **overrides)
    cfg["ingest"] = {"enabled": True, "listen": f"127.0.0.1:{port}", "api_keys": [APP_KEY],
                     **overrides.get("ingest", {})}
    cfg["connectors"]["amplitude"]["enabled"] = False
    return cfg


async def until(check: Callable[[], Any], timeout: float = 60, daemon: DaemonProcess | None = None) -> Any:
    """Poll the async `check` until it returns something true; fails at once if `daemon` exits."""
    try:
        async with asyncio.timeout(timeout):
            return await _poll(check, daemon)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s; last seen: {_progress}") from None


async def _poll(check: Callable[[], Any], daemon: DaemonProcess | None) -> Any:
    while True:
        if daemon is not None:
            assert daemon.proc.returncode is None, daemon.all_output()[-3000:]
        if result := await check():
            return result
        await asyncio.sleep(0.1)


async def amplitude_received(sb: SandboxProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(sb.amplitude_control + "/ingest") as r:
        assert r.status == 200
        return await r.json()


async def amplitude_faults(sb: SandboxProcess, **faults: Any) -> None:
    await sb.post(sb.amplitude_control + "/ingest/faults", faults)


def insert_ids(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["event_properties"]["amplitude_insert_id"] for e in events)


async def stop(daemon: DaemonProcess) -> None:
    daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.wait(30) == 0, daemon.all_output()[-3000:]


def _ms(export_time: str) -> int:
    return int(datetime.fromisoformat(export_time).replace(tzinfo=UTC).timestamp() * 1000)


def sample_rows(sb: SandboxProcess) -> list[dict[str, Any]]:
    """The rows the sandbox's export serves for its (one) hour."""
    from amplitude_brevo.config import parse_hour
    from amplitude_brevo.sandbox.sample_data import DatasetSpec, rows_for_hour

    spec = DatasetSpec(start=parse_hour(sb.data["start"]), hours=1, rows_per_hour=sb.data["rows_per_hour"])
    return list(rows_for_hour(spec, spec.start))


# --------------------------------------------------------------------------- the official SDK, and the export


async def test_the_official_sdk_reaches_both_upstreams_and_the_export_of_the_same_events_adds_nothing(
    tmp_path, make_sandbox
):
    from amplitude import Amplitude, BaseEvent, Config, EventOptions, Identify

    from amplitude_brevo.sandbox.sample_data import bad_value_users

    sb = await make_sandbox(hours=1, rows_per_hour=3000)
    rows = sample_rows(sb)
    port = free_port()
    cfg = ingest_config(tmp_path, sb, port, property_mapping=PROPERTY_MAPPING,
                        sync={"events": True, "user_properties": True, "revenue": True},
                        revenue={"orders": True, "ltv_attribute": "AMP_LTV"})
    cfg["connectors"]["brevo"]["create_attributes"] = True
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    await daemon.wait_for_log("daemon.started")

    # Each export row as the app sent it: revenue as the SDK's top-level fields, times in ms. A row the sample
    # data leaves without `$insert_id` is keyed by its `uuid` in the export; the SDK would have given it an
    # insert_id, which Amplitude's export would show: here that insert_id is the uuid.
    sent: list[BaseEvent] = []
    for row in rows:
        props = dict(row["event_properties"])
        revenue = {name: props.pop(key) for key, name in REVENUE_FIELDS.items() if key in props}
        sent.append(BaseEvent(event_type=row["event_type"], user_id=row.get("user_id"), device_id=row["device_id"],
                              time=_ms(row["event_time"]), insert_id=row["$insert_id"] or row["uuid"], session_id=row["session_id"],
                              event_properties=props, user_properties=row["user_properties"],
                              platform=row.get("platform"), **revenue))
    from amplitude_brevo.config import parse_hour
    from amplitude_brevo.sandbox.sample_data import DatasetSpec

    bad = bad_value_users(DatasetSpec(start=parse_hour(HOUR), hours=1, rows_per_hour=3000))
    refused_email = set(bad.get("email", {}))
    users = sorted({r["user_id"] for r in rows if r.get("user_id")} - refused_email)
    identified = users[:40]
    outcomes: list[tuple[str, int]] = []

    def use() -> None:
        client = Amplitude(APP_KEY, Config(server_url=f"http://127.0.0.1:{port}/2/httpapi", flush_queue_size=200,
                                           flush_interval_millis=60_000,
                                           callback=lambda e, code, _=None: outcomes.append((e.event_type, code))))
        def flush() -> None:
            for future in client.flush():
                if future is not None:
                    future.result()

        for event in sent:
            client.track(event)
        # Two identifies per user: $setOnce keeps the first, $add sums. The SDK sends a flush's requests in
        # parallel, so the second round follows a flush (what comes "first" is what arrived first).
        for n, user in enumerate(identified):
            client.identify(Identify().set("tier", "gold").set_once("first_plan", "trial").add("visits", 2),
                            EventOptions(user_id=user, insert_id=f"ident-a-{n}"))
        flush()
        for n, user in enumerate(identified):
            client.identify(Identify().set_once("first_plan", "pro").add("visits", 3),
                            EventOptions(user_id=user, insert_id=f"ident-b-{n}"))
        flush()
        client.shutdown()

    try:
        await asyncio.wait_for(asyncio.to_thread(use), 60)
        assert len(outcomes) == len(sent) + 2 * len(identified) and {c for _, c in outcomes} == {200}

        # Amplitude: every event as the SDK sent it, but for the caller's address in `ip`.
        want = {e.insert_id: e.get_event_body() for e in sent}
        got = await until(lambda: _amplitude_has(sb, len(sent) + 2 * len(identified)), daemon=daemon)
        by_id = {e["insert_id"]: e for e in got["events"]}
        assert got["duplicates"] == 0 and len(by_id) == len(got["events"])
        for insert_id, body in want.items():
            received = {k: v for k, v in by_id[insert_id].items() if k not in ("ip", "kind", "caller")}
            assert received == body, insert_id
            assert by_id[insert_id]["ip"] == "127.0.0.1"
        identify = by_id["ident-a-0"]
        assert identify["event_type"] == "$identify" and identify["user_properties"] == {
            "$set": {"tier": "gold"}, "$setOnce": {"first_plan": "trial"}, "$add": {"visits": 2}}

        # Brevo: each mapped event once; an order per revenue event; totals and identified attributes.
        mapped = expected_events(hours=1, rows_per_hour=3000, start=HOUR, property_mapping=PROPERTY_MAPPING)
        revenue_rows = {r["$insert_id"] or r["uuid"]: r for r in rows  # an order needs a user id (ext_id)
                        if r.get("user_id") and amount_of(r["event_properties"]) is not None}
        assert revenue_rows and mapped
        _progress["want"] = {"events": len(mapped), "orders": len(revenue_rows)}
        dump = await until(lambda: _brevo_has(sb, len(mapped), len(revenue_rows), identified), daemon=daemon)
        events = insert_ids(dump["events"])
        assert set(events) == set(mapped) and max(events.values()) == 1, "each mapped event once"
        names = {e["event_properties"]["amplitude_insert_id"]: e["event_name"] for e in dump["events"]}
        assert names == {k: p["event_name"] for k, p in mapped.items()}
        orders = {o["id"]: o for o in dump["orders"]}
        assert set(orders) == set(revenue_rows)
        ltv: dict[str, float] = defaultdict(float)
        for key, row in revenue_rows.items():
            value = amount_of(row["event_properties"])
            assert abs(orders[key]["amount"] - value) < 1e-9, key
            ltv[row["user_id"]] += value
        contacts = {c["ext_id"]: c for c in dump["contacts"] if c.get("ext_id")}
        newest_plan = {r["user_id"]: r["user_properties"]["plan_type"] for r in rows if r.get("user_id")}
        for user in users:
            attributes = contacts[user]["attributes"]
            assert attributes.get("PLAN") == newest_plan[user], "plain user_properties act as $set"
            assert attributes.get("AMP_LTV") == (round(ltv[user], 2) if user in ltv else None), user
        for user in identified:
            attributes = contacts[user]["attributes"]
            assert (attributes["TIER"], attributes["FIRST_PLAN"], attributes["VISITS"]) == ("gold", "trial", 5)
        await stop(daemon)

        # The same events in the export window the daemon now tails: no Brevo event, order or LTV more.
        cfg["connectors"]["amplitude"]["enabled"] = True
        cfg["export"] = {**cfg["export"], "start": HOUR, "lag": "0s", "max_window": "2h"}
        write_config(cfg_path, cfg)
        daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
        await until(lambda: _export_past(tmp_path / "state.db", "20261101T01"), daemon=daemon)
        read = [line for line in daemon.events("export.window.done") if line.get("bytes")]
        assert read, "the export hour was downloaded and read"
        await until(lambda: _contacts_written(tmp_path / "state.db"), daemon=daemon)
        after = await sb.received()
        assert insert_ids(after["events"]) == events, "no Brevo event twice"
        assert len(after["orders"]) == len(dump["orders"]), "no order twice"
        for contact in after["contacts"]:
            if contact.get("ext_id") in contacts:
                before = contacts[contact["ext_id"]]["attributes"].get("AMP_LTV")
                assert contact["attributes"].get("AMP_LTV") == before, "revenue counted once"
    finally:
        daemon.kill()
        await daemon.wait(10)


async def _amplitude_has(sb: SandboxProcess, n: int) -> dict[str, Any] | None:
    got = await amplitude_received(sb)
    return got if got["unique"] >= n else None


async def _brevo_has(sb: SandboxProcess, events: int, orders: int, identified: list[str]) -> dict[str, Any] | None:
    counts = await sb.counts()
    _progress["brevo"] = {k: counts.get(k) for k in ("events", "orders", "contacts")}
    if counts["events"] < events or counts["orders"] < orders:
        return None
    dump = await sb.received()
    visits = {c.get("ext_id"): c["attributes"].get("VISITS") for c in dump["contacts"]}
    _progress["visits"] = Counter(visits.get(u) for u in identified)
    return dump if all(visits.get(u) == 5 for u in identified) else None


_progress: dict[str, Any] = {}  # what the last poll saw, for a timeout's message


async def _export_past(db, hour: str) -> bool:
    return checkpoint(db) >= hour


async def _contacts_written(db) -> bool:
    return contacts_pending(db) == 0


# --------------------------------------------------------------------------- SIGKILL mid-stream


def stream_event(n: int) -> dict[str, Any]:
    kind = ("Purchase", "Sign Up")[n % 2]
    return {"event_type": kind, "user_id": f"user-{n % 97:05d}", "insert_id": f"kill-{n}", "time": 1764400000000 + n,
            "event_properties": {"n": n}}


async def test_sigkill_during_a_steady_stream_loses_no_event_that_got_a_200(tmp_path, sandbox):
    await sandbox.post(sandbox.control + "/faults", {"latency": 0.3})  # Brevo lags: the kill finds a backlog
    port = free_port()
    cfg_path = write_config(tmp_path / "config.yaml", ingest_config(tmp_path, sandbox, port,
                                                                    batching={"max_items": 1000}))
    url = f"http://127.0.0.1:{port}/batch"
    acked: set[str] = set()
    refused = 0
    running = True

    async def stream() -> None:
        nonlocal refused
        n = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while running:
                events = [stream_event(n + i) for i in range(100)]
                n += 100
                try:
                    async with session.post(url, json={"api_key": APP_KEY, "events": events}) as resp:
                        if resp.status == 200 and (await resp.json())["code"] == 200:
                            acked.update(e["insert_id"] for e in events)
                            continue
                except (aiohttp.ClientError, TimeoutError):
                    pass
                refused += 1
                await asyncio.sleep(0.02)  # the daemon is down: try again shortly, as an SDK would

    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    await daemon.wait_for_log("ingest.listening")
    client = asyncio.create_task(stream())
    try:
        await until(lambda: _at_least(acked, 3000), timeout=30)
        daemon.proc.send_signal(signal.SIGKILL)
        await daemon.wait(10)
        acked_at_kill = set(acked)
        in_brevo = set(insert_ids((await sandbox.received())["events"]))
        in_amplitude = {e["insert_id"] for e in (await amplitude_received(sandbox))["events"]}
        assert not acked_at_kill <= in_brevo & in_amplitude, "the kill came with events still to deliver"
        daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
        await daemon.wait_for_log("ingest.listening")
        await until(lambda: _at_least(acked, len(acked_at_kill) + 2000), timeout=30)
        running = False
        await client
        assert refused, "some requests found the daemon down"

        async def delivered() -> bool:
            brevo = set(insert_ids((await sandbox.received())["events"]))
            amplitude = {e["insert_id"] for e in (await amplitude_received(sandbox))["events"]}
            return acked <= brevo and acked <= amplitude

        await until(delivered, timeout=90, daemon=daemon)
        print(f"{len(acked)} events got a 200 ({len(acked_at_kill)} before the kill), {refused} requests refused")
    finally:
        running = False
        await client
        daemon.kill()
        await daemon.wait(10)


async def _at_least(items: set[str], n: int) -> bool:
    return len(items) >= n


# --------------------------------------------------------------------------- invalid requests


def _pad(body: bytes) -> bytes:
    """`body` grown past 21 MB with an extra top-level field (still one valid JSON object)."""
    pad = 21 * 1024 * 1024 - len(body)
    return body[:-1] + b',"padding":"' + b"p" * pad + b'"}'


GOOD = {"event_type": "Purchase", "user_id": "user-00001", "insert_id": "ok-1", "time": 1764400000000}
INVALID = [
    ("bad JSON", "/2/httpapi", {"data": b'{"api_key": "' + APP_KEY.encode() + b'", "events": [',
                                "headers": {"Content-Type": "application/json"}},
     400, {"code": 400, "error": "Invalid JSON request body"}),
    ("no api_key", "/2/httpapi", {"json": {"events": [GOOD]}},
     400, {"code": 400, "error": "Request missing required field", "missing_field": "api_key"}),
    ("no events", "/batch", {"json": {"api_key": APP_KEY}},
     400, {"code": 400, "error": "Request missing required field", "missing_field": "events"}),
    ("an event without event_type", "/2/httpapi",
     {"json": {"api_key": APP_KEY, "events": [GOOD, {"user_id": "user-00002", "insert_id": "x"}]}},
     400, {"code": 400, "error": "Request missing required field", "events_with_missing_fields": {"event_type": [1]}}),
    ("a short user id", "/2/httpapi", {"json": {"api_key": APP_KEY, "events": [{**GOOD, "user_id": "ab"}]}},
     400, {"code": 400, "error": "Invalid field values on some events",
           "events_with_invalid_id_lengths": {"user_id": [0]}}),
    ("a placeholder user id", "/2/httpapi",
     {"json": {"api_key": APP_KEY, "events": [GOOD, {**GOOD, "user_id": "undefined"}]}},
     400, {"code": 400, "error": "Invalid field values on some events",
           "events_with_invalid_fields": {"user_id": [1]}}),
    ("a time in ISO format", "/2/httpapi",
     {"json": {"api_key": APP_KEY, "events": [{**GOOD, "time": "2026-11-29T07:06:40Z"}]}},
     400, {"code": 400, "error": "Invalid field values on some events", "events_with_invalid_fields": {"time": [0]}}),
    ("a wrong key", "/2/httpapi", {"json": {"api_key": "not-our-key-99999", "events": [GOOD]}},
     400, None),
    ("2,001 events", "/batch", {"json": {"api_key": APP_KEY, "events": [
        {**GOOD, "insert_id": f"many-{n}"} for n in range(2001)]}},
     413, {"code": 413, "error": "Payload too large"}),
    ("a 21 MB body", "/batch", {"data": None, "headers": {"Content-Type": "application/json"}},
     413, {"code": 413, "error": "Payload too large"}),
    ("a 21 MB body, gzipped", "/batch", {"data": "gzip", "headers": {"Content-Type": "application/json",
                                                                     "Content-Encoding": "gzip"}},
     413, {"code": 413, "error": "Payload too large"}),
]


async def test_invalid_requests_get_amplitudes_answers_and_change_nothing(tmp_path, sandbox):
    port = free_port()
    cfg = ingest_config(tmp_path, sandbox, port, ingest={"allow_from": ["127.0.0.1/32"]})
    daemon = await DaemonProcess.start("run", "-c", str(write_config(tmp_path / "config.yaml", cfg)),
                                       env=SANDBOX_ENV)
    await daemon.wait_for_log("ingest.listening")
    base = f"http://127.0.0.1:{port}"
    big = _pad(orjson.dumps({"api_key": APP_KEY, "events": [GOOD]}))
    assert len(big) > 21 * 1024 * 1024
    try:
        async with aiohttp.ClientSession() as session:
            for name, path, kwargs, status, body in INVALID:
                if kwargs.get("data") is None and "data" in kwargs:
                    kwargs = {**kwargs, "data": io.BytesIO(big)}
                elif kwargs.get("data") == "gzip":
                    kwargs = {**kwargs, "data": io.BytesIO(gzip.compress(big, 1))}
                async with session.post(base + path, **kwargs) as resp:
                    answer = orjson.loads(await resp.read())
                    assert resp.status == status, (name, resp.status, answer)
                    if body is None:  # the wrong key: Amplitude's prefix, which the SDKs match
                        assert answer["code"] == 400 and answer["error"].startswith("Invalid API key: "), answer
                        assert "not-our-key" not in answer["error"], "the refused key is not echoed"
                    else:
                        assert answer == body, name
            # An Identify call whose identification is not JSON.
            async with session.post(base + "/identify", data={"api_key": APP_KEY, "identification": "[{"}) as resp:
                assert resp.status == 400, await resp.text()
            # A caller outside allow_from (127.0.0.2 is loopback too, and outside 127.0.0.1/32).
            outsider = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=outsider) as s2, s2.post(
                    base + "/2/httpapi", json={"api_key": APP_KEY, "events": [GOOD]}) as resp:
                assert resp.status == 403 and await resp.json() == {"code": 403, "error": "Forbidden"}
            refused = await daemon.wait_for_log("ingest.caller.refused")
            assert refused["peer"] == "127.0.0.2"
            # Nothing changed: nothing spooled, nothing at either upstream. A valid request afterwards is the
            # first thing the spool holds, and reaches both.
            assert _spool_rows(tmp_path / "state.db") == 0
            async with session.post(base + "/2/httpapi", json={"api_key": APP_KEY, "events": [GOOD]}) as resp:
                assert resp.status == 200 and (await resp.json())["events_ingested"] == 1

        async def arrived() -> bool:
            amplitude = await amplitude_received(sandbox)
            return amplitude["count"] >= 1 and (await sandbox.counts())["events"] >= 1

        await until(arrived, timeout=30, daemon=daemon)
        amplitude = await amplitude_received(sandbox)
        assert [e["insert_id"] for e in amplitude["events"]] == ["ok-1"] and amplitude["identifies"] == []
        assert list(insert_ids((await sandbox.received())["events"])) == ["ok-1"]
        assert checkpoint(tmp_path / "state.db", "ingest.brevo") == number_key(1), "the valid request was the 1st"
        assert daemon.proc.returncode is None
    finally:
        daemon.kill()
        await daemon.wait(10)


def _spool_rows(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM ingest_spool").fetchone()[0]


# --------------------------------------------------------------------------- Amplitude throttles and outages


async def test_a_throttled_user_holds_back_no_one_else_and_a_30s_outage_loses_nothing_nor_slows_brevo(
    tmp_path, sandbox
):
    port = free_port()
    cfg_path = write_config(tmp_path / "config.yaml", ingest_config(tmp_path, sandbox, port))
    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    await daemon.wait_for_log("ingest.listening")
    url = f"http://127.0.0.1:{port}/batch"

    def events(prefix: str, users: list[str]) -> list[dict[str, Any]]:
        return [{"event_type": "Purchase", "user_id": u, "insert_id": f"{prefix}-{u}-{n}", "time": 1764400000000 + n}
                for u in users for n in range(5)]

    others = [f"user-{n:05d}" for n in range(20)]
    try:
        async with aiohttp.ClientSession() as session:
            # One user over Amplitude's per-user rate: its events wait, the others' go through at once.
            await amplitude_faults(sandbox, throttle_users=["user-slow1"])
            throttled = events("t", ["user-slow1", *others])
            async with session.post(url, json={"api_key": APP_KEY, "events": throttled}) as resp:
                assert resp.status == 200
            await daemon.wait_for_log("ingest.forward.throttled")

            async def others_forwarded() -> bool:
                got = {e["insert_id"] for e in (await amplitude_received(sandbox))["events"]}
                return {e["insert_id"] for e in throttled if e["user_id"] != "user-slow1"} <= got

            await until(others_forwarded, timeout=15, daemon=daemon)
            got = (await amplitude_received(sandbox))["events"]
            assert not [e for e in got if e["user_id"] == "user-slow1"], "the throttled user waits"
            await amplitude_faults(sandbox, throttle_users=[])

            # Then Amplitude is down for 30 s: Brevo still gets the events within seconds.
            await amplitude_faults(sandbox, outage_seconds=30)
            outage_started = asyncio.get_running_loop().time()
            during = events("o", others)
            async with session.post(url, json={"api_key": APP_KEY, "events": during}) as resp:
                assert resp.status == 200
            posted = asyncio.get_running_loop().time()

            async def in_brevo() -> bool:
                got = set(insert_ids((await sandbox.received())["events"]))
                return {e["insert_id"] for e in during} <= got

            await until(in_brevo, timeout=10, daemon=daemon)
            took = asyncio.get_running_loop().time() - posted
            assert asyncio.get_running_loop().time() - outage_started < 30, "Brevo had them during the outage"
            assert not {e["insert_id"] for e in (await amplitude_received(sandbox))["events"]} & {
                e["insert_id"] for e in during}, "Amplitude was down"
            print(f"Brevo had the outage's events {took:.2f} s after their 200")

            # After the outage (and the throttled user's pause), Amplitude has everything, once.
            async def all_forwarded() -> bool:
                got = Counter(e["insert_id"] for e in (await amplitude_received(sandbox))["events"])
                return {e["insert_id"] for e in throttled + during} <= set(got)

            await until(all_forwarded, timeout=75, daemon=daemon)
            received = await amplitude_received(sandbox)
            assert received["duplicates"] == 0
            assert len(set(insert_ids((await sandbox.received())["events"]))) == len(throttled) + len(during)
    finally:
        daemon.kill()
        await daemon.wait(10)
