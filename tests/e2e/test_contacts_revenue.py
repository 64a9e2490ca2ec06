"""Export → Brevo contacts, orders and lifetime value, end to end (issue 8 acceptance): the sandbox and the
daemon as separate processes; what Brevo should hold is computed here from the sample data itself."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import orjson
import pytest

from .conftest import (
    SANDBOX_ENV,
    DaemonProcess,
    amount_of,
    checkpoint,
    contacts_pending,
    sandbox_config,
    write_config,
)

# SPEC Appendix A: the seed's property_mapping, whole.
SEED_MAPPING = {
    "email": "email", "first_name": "FIRSTNAME", "last_name": "LASTNAME", "phone": "SMS", "plan_type": "PLAN",
    "signup_date": "SIGNUP_DATE", "total_purchases": "ORDER_COUNT", "lifetime_revenue": "LTV",
    "last_active": "LAST_ACTIVE", "device_type": "DEVICE",
}
# ... and a boolean attribute, which some sample users fill with "maybe".
MAPPING = {**SEED_MAPPING, "newsletter": "NEWSLETTER"}
CONTACTS_ON = {
    "sync": {"user_properties": True, "revenue": True},
    "property_mapping": MAPPING,
    "revenue": {"orders": True, "ltv_attribute": "AMP_LTV", "count_attribute": "AMP_ORDERS"},
    "event_mapping": {},  # contacts and orders only: these tests are not about events
}


def contacts_config(tmp_path, sandbox, **overrides: Any) -> dict:
    cfg = sandbox_config(tmp_path, sandbox, **{**CONTACTS_ON, **overrides})
    cfg["connectors"]["brevo"]["create_attributes"] = True
    cfg["sync"] = {"events": False, "user_properties": True, "revenue": True}
    return cfg


def expected(data: dict[str, Any]) -> dict[str, Any]:
    """From the sample data: each user's newest row's mapped properties, their revenue events, totals."""
    from amplitude_brevo.config import parse_hour
    from amplitude_brevo.sandbox.sample_data import DatasetSpec, rows_for_hour

    spec = DatasetSpec(start=parse_hour(data["start"]), hours=data["hours"], rows_per_hour=data["rows_per_hour"])
    newest: dict[str, tuple[tuple[str, str], dict[str, Any]]] = {}
    orders: dict[str, dict[str, Any]] = {}
    ltv: dict[str, float] = defaultdict(float)
    purchases: dict[str, int] = defaultdict(int)
    for h in range(spec.hours):
        for row in rows_for_hour(spec, spec.start + timedelta(hours=h)):
            user = row.get("user_id")
            if not user:
                continue
            order = (row["event_time"], row["server_upload_time"])
            if user not in newest or order >= newest[user][0]:
                newest[user] = (order, row)
            amount = amount_of(row.get("event_properties") or {})
            if amount is not None:
                key = row.get("$insert_id") or row["uuid"]
                if key not in orders:
                    orders[key] = {"user": user, "amount": amount, "row": row}
                    ltv[user] += amount
                    purchases[user] += amount > 0
    return {"newest": {u: row for u, (_, row) in newest.items()}, "orders": orders, "ltv": ltv,
            "purchases": purchases}


async def _backfill(cfg_path, data, timeout=240):
    end = int(data["hours"]) - 1
    proc = await DaemonProcess.start("backfill", "-c", str(cfg_path), "--start", data["start"],
                                     "--end", f"2026-11-01T{end:02d}", env=SANDBOX_ENV)
    code = await proc.wait(timeout)
    assert code == 0, proc.all_output()[-4000:]
    return proc


async def brevo_attributes(sandbox) -> dict[str, Any]:
    """GET /contacts/attributes from the Brevo simulator, as the daemon reads it."""
    import aiohttp

    headers = {"api-key": SANDBOX_ENV["BREVO_API_KEY"]}
    async with aiohttp.ClientSession() as s, asyncio.timeout(10):
        while True:  # the contacts bucket may be spent by the daemon's last writes: wait for its window
            async with s.get(sandbox.brevo_url + "/contacts/attributes", headers=headers) as r:
                if r.status != 429:
                    assert r.status == 200, await r.text()
                    return await r.json()
                await asyncio.sleep(float(r.headers.get("x-sib-ratelimit-reset", "1")))


def _brevo_takes(email: str) -> bool:
    from amplitude_brevo.sandbox.brevo_sim import BrevoError, normalize_email

    try:
        normalize_email(email)
    except BrevoError:
        return False
    return True


async def check_contacts(sandbox, want: dict[str, Any], db=None) -> dict[str, Any]:
    """Every user's contact holds exactly the newest mapped values, converted; returns the dump."""
    from amplitude_brevo.contacts.attributes import AttributeModel, Dropped, convert
    from amplitude_brevo.pipeline.remap import email_id

    dump = await sandbox.received()
    model = AttributeModel.from_response(await brevo_attributes(sandbox))
    contacts = {c["ext_id"]: c for c in dump["contacts"] if c.get("ext_id")}
    # An email the daemon finds valid but Brevo refuses (`a..b@x.org`): that contact is dead-lettered.
    refused = {u for u, row in want["newest"].items() if email_id(row["user_properties"].get("email"))
               and not _brevo_takes(row["user_properties"]["email"])}
    assert refused, "the sample data has emails Brevo refuses"
    assert set(contacts) == set(want["newest"]) - refused, "one contact per user with a user id, and no other"
    if db is not None:
        with sqlite3.connect(db) as conn:
            letters = conn.execute("SELECT item, reason FROM dead_letters WHERE sink = 'brevo_contacts'").fetchall()
        lettered = {orjson.loads(item)["ext_id"]: reason for item, reason in letters}
        assert set(lettered) >= refused and all("refused" in lettered[u] and "email" in lettered[u].lower()
                                                for u in refused), lettered
    want = {**want, "newest": {u: r for u, r in want["newest"].items() if u not in refused}}
    dropped: Counter[str] = Counter()
    filled: Counter[str] = Counter()
    for user, row in want["newest"].items():
        contact, props = contacts[user], row["user_properties"]
        email = email_id(props.get("email"))
        if email is not None:  # an invalid one is left out of the contact (and logged)
            assert contact["email"] == email, (user, contact["email"], email)
        for source, attribute in MAPPING.items():
            if attribute == "email":
                continue
            value = props.get(source, row.get(source))
            got = contact["attributes"].get(attribute)
            if value is None:
                assert got is None, (user, attribute, got)
                continue
            converted = convert(model, attribute, value)
            if isinstance(converted, Dropped):
                dropped[attribute] += 1
                assert got is None, (user, attribute, value, got)
                continue
            filled[attribute] += 1
            if attribute == "SMS":  # Brevo shows numbers without the "+" (reference §1.2)
                assert got is not None and got.lstrip("+") == converted.value.lstrip("+"), (user, value, got)
            else:
                assert got == converted.value, (user, attribute, value, got)
        assert contact["attributes"].get("AMP_LTV") == (round(want["ltv"][user], 2) if user in want["ltv"] else None)
        assert contact["attributes"].get("AMP_ORDERS") == (want["purchases"][user] if user in want["ltv"] else None)
        assert isinstance(contact["attributes"].get("LAST_ACTIVE", "2000-01-01"), str)
    print(f"{len(contacts)} contacts checked; values dropped by conversion: {dict(dropped)}")
    assert set(filled) == set(MAPPING.values()) - {"email"}, "every attribute of the mapping is filled"
    assert {"SMS", "SIGNUP_DATE", "NEWSLETTER"} <= set(dropped), "no country code, a bad date, 'maybe'"
    return dump


def check_orders(dump: dict[str, Any], want: dict[str, Any], *, historical: bool) -> None:
    orders = {o["id"]: o for o in dump["orders"]}
    assert set(orders) == set(want["orders"]), "one order per revenue event"
    for key, order in want["orders"].items():
        got = orders[key]
        assert got["amount"] == order["amount"] or abs(got["amount"] - order["amount"]) < 1e-9, (key, got)
        assert got["identifiers"]["ext_id"] == order["user"]
        assert got["historical"] is historical
        props = order["row"]["event_properties"]
        assert got["products"][0]["productId"] == props.get("$productId", order["row"]["event_type"])
        assert got["status"] == ("refunded" if order["amount"] < 0 else "completed")


def _progress(db) -> tuple[str, int]:
    """The export checkpoint, and how many contacts still have a Brevo write pending."""
    return checkpoint(db), contacts_pending(db)


async def _until_done(daemon, db, hour: str, sandbox, orders: int, timeout: float = 120) -> None:
    """Until the export has read through `hour`, no contact write is pending and Brevo has every order."""
    async with asyncio.timeout(timeout):
        while True:
            assert daemon.proc.returncode is None, daemon.all_output()[-3000:]
            read, pending = _progress(db)
            if read >= hour and pending == 0 and (await sandbox.counts())["orders"] >= orders:
                return
            await asyncio.sleep(0.25)


async def test_a_backfill_writes_typed_contacts_orders_and_totals_and_a_rerun_writes_nothing(tmp_path, sandbox):
    want = expected(sandbox.data)
    # The general plan's budgets; 40 % of the users have `newsletter: false`, which an import does not apply
    # (reference §1.5): the simulator leaves it out of imports, and check_contacts wants it on every contact.
    cfg = contacts_config(tmp_path, sandbox)
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    await _backfill(cfg_path, sandbox.data)
    dump = await check_contacts(sandbox, want, tmp_path / "state.db")
    check_orders(dump, want, historical=True)
    counts = await sandbox.counts()
    print("contact writes", counts["contact_writes"], "orders", len(dump["orders"]))

    # Again over the same hours, with the checkpoint gone: every row is read again, nothing is written.
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("DELETE FROM checkpoints WHERE name LIKE 'backfill.%'")
    proc = await _backfill(cfg_path, sandbox.data)
    assert proc.events("backfill.summary")[-1]["rows_read"] == 6 * 2000
    again = await sandbox.counts()
    assert again["contact_writes"] == counts["contact_writes"], "a re-read makes no contact write"
    assert again["orders"] == counts["orders"] and again.get("orders_updated", 0) == counts.get("orders_updated", 0)
    await check_contacts(sandbox, want)


async def test_sigkill_at_three_moments_with_contacts_and_orders_loses_and_double_counts_nothing(
        tmp_path, make_sandbox):
    sandbox = await make_sandbox(hours=3, rows_per_hour=1000)
    want = expected(sandbox.data)
    await sandbox.post(sandbox.control + "/faults", {"latency": 0.2})
    # Many small requests, so that the kills land among them: new contacts one by one (no import), known ones
    # 20 a batch, at the extended plan's 60/s.
    await sandbox.post(sandbox.control + "/limits", {"contacts": {"requests": 60, "per": 1}})
    cfg = contacts_config(tmp_path, sandbox, export={"start": "2026-11-01T00", "lag": "0s", "max_window": "1h"},
                          rate_limits={"brevo_contacts": {"requests": 60, "per": "1s"}})
    cfg["connectors"]["brevo"]["contacts_batch_size"] = 20
    cfg["connectors"]["brevo"]["contacts_import_min"] = 1_000_000
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    rng = random.Random(88)
    for _ in range(3):
        daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
        await daemon.wait_for_log("daemon.started")
        await asyncio.sleep(rng.uniform(0.5, 2.5))
        daemon.proc.send_signal(signal.SIGKILL)
        await daemon.wait(10)
    killed = await sandbox.counts()
    print(f"after the kills: {killed['contacts']} contacts, {killed['orders']} orders, "
          f"progress {_progress(tmp_path / 'state.db')}")
    assert killed["contacts"] < len(want["newest"]) - 10, "the kills came while contacts were being written"
    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    try:
        await _until_done(daemon, tmp_path / "state.db", "20261101T03", sandbox, len(want["orders"]))
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0
    dump = await check_contacts(sandbox, want)
    check_orders(dump, want, historical=False)
    with sqlite3.connect(tmp_path / "state.db") as conn:
        totals = {u: (ltv, n) for u, ltv, n in conn.execute("SELECT user_id, ltv, orders FROM revenue_totals")}
    assert {u: (round(a, 6), n) for u, (a, n) in totals.items()} == {
        u: (round(want["ltv"][u], 6), want["purchases"][u]) for u in want["ltv"]}, "every purchase counted once"


@pytest.mark.timeout(300)  # about a minute here; the injected 429s pause the contacts budget a second each
async def test_faults_and_an_outage_with_events_contacts_and_orders_lose_nothing(tmp_path, make_sandbox):
    # 20 % of requests answered 500/502/503/429, 5 % of connections reset, a 20 s outage while requests are in
    # flight: every event arrives once, every contact and order is there, nothing is dead-lettered for it.
    from amplitude_brevo.demo import DEMO_MAPPING

    from .conftest import expected_events

    sandbox = await make_sandbox(hours=2, rows_per_hour=1000)
    want = expected(sandbox.data)
    events = expected_events(**sandbox.data, property_mapping=SEED_MAPPING)
    await sandbox.post(sandbox.control + "/faults", {"error_rate": 0.2, "error_statuses": [500, 502, 503, 429],
                                                      "reset_rate": 0.05, "seed": 7, "latency": 0.05})
    cfg = contacts_config(tmp_path, sandbox, export={"start": "2026-11-01T00", "lag": "0s", "poll_interval": "1s"})
    cfg["connectors"]["brevo"]["contacts_batch_size"] = 20
    cfg["connectors"]["brevo"]["events_batch_size"] = 50
    cfg["sync"]["events"] = True
    cfg["event_mapping"] = DEMO_MAPPING
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    try:
        await daemon.wait_for_log("brevo.retry", timeout=60)
        await sandbox.post(sandbox.control + "/faults", {"outage_seconds": 20})
        await _until_done(daemon, tmp_path / "state.db", "20261101T02", sandbox, len(want["orders"]), timeout=240)
        async with asyncio.timeout(60):
            while (await sandbox.counts())["events"] < len(events):
                await asyncio.sleep(0.25)
        # Everything is delivered: the checks read the simulator without its faults.
        await sandbox.post(sandbox.control + "/faults", {"error_rate": 0, "reset_rate": 0, "latency": 0})
        dump = await check_contacts(sandbox, want)
        check_orders(dump, want, historical=False)
        sent = Counter(e["event_properties"]["amplitude_insert_id"] for e in dump["events"])
        assert set(sent) == set(events) and max(sent.values()) == 1, "every event once"
        with sqlite3.connect(tmp_path / "state.db") as conn:
            sinks = {sink for (sink,) in conn.execute("SELECT DISTINCT sink FROM dead_letters")}
        assert sinks <= {"brevo_contacts"}, "faults dead-letter nothing (only the emails Brevo refuses)"
        assert dump["injected"] > 0 and dump["resets"] > 0
        outage = [e for e in daemon.events("brevo.retry") if "Sandbox outage" in e["reason"]]
        assert outage, "requests met the outage and were retried"
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0


async def test_sighup_with_contacts_and_orders_on_reloads_every_component(tmp_path, make_sandbox):
    # Every running component reloads in place (the profile folder, the contact outbox, the contacts and
    # orders sinks): a changed batch window applies, and the daemon goes on writing contacts.
    sandbox = await make_sandbox(hours=1, rows_per_hour=300)
    want = expected(sandbox.data)
    cfg = contacts_config(tmp_path, sandbox, export={"start": "2026-11-01T00", "lag": "0s"})
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    try:
        await daemon.wait_for_log("daemon.started")
        cfg["batching"]["max_wait"] = "500ms"
        write_config(cfg_path, cfg)
        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = await daemon.wait_for_log("config.reloaded")
        assert "batching" in reloaded["changed"]
        await _until_done(daemon, tmp_path / "state.db", "20261101T01", sandbox, len(want["orders"]))
        await check_contacts(sandbox, want)
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert await daemon.wait(30) == 0, daemon.all_output()[-3000:]
