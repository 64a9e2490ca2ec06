"""The daemon with ingest on, in process, against both simulators on loopback: a request's way from the 200 to
Amplitude and to Brevo (events, orders, contact attributes from operations), and the spool emptied after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from amplitude_brevo.app import Daemon
from amplitude_brevo.components import default_components
from amplitude_brevo.config import parse_config
from amplitude_brevo.sandbox.amplitude_ingest import AMPLITUDE_INGEST_STATE
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE
from amplitude_brevo.sandbox.server import Sandbox, SandboxOptions
from amplitude_brevo.state.checkpoints import number_key

from ..conftest import SECRETS, base_config

APP_KEY = "app-key-12345"
SEED = {"user_id": "user_123", "event_type": "Purchase",
        "event_properties": {"revenue": 89.99, "product_id": "SKU-001", "product_name": "Widget Pro"},
        "user_properties": {"$set": {"plan_type": "premium"}}, "time": 1764400000000}


def ingest_config(tmp_path: Path, sb: Sandbox, **overrides: Any) -> Any:
    cfg = base_config(
        tmp_path, ingest={"enabled": True, "listen": "127.0.0.1:0", "api_keys": [APP_KEY]},
        sync={"user_properties": True, "revenue": True},
        revenue={"orders": True, "ltv_attribute": "AMP_LTV"},
        property_mapping={"email": "email", "plan_type": "PLAN", "visits": "VISITS"},
        **overrides,
    )
    cfg["connectors"]["amplitude"].update(api_url=sb.amplitude_url, ingest_url=sb.amplitude_url,
                                          enabled=False, api_key="sandbox-amplitude-key")
    cfg["connectors"]["brevo"].update(api_url=sb.brevo_url, api_key="xkeysib-sandbox-key", create_attributes=True)
    return parse_config(cfg, env=SECRETS)


@asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Daemon, Sandbox, str]]:
    async with Sandbox(SandboxOptions()) as sb:
        daemon = Daemon(ingest_config(tmp_path, sb, **overrides), components=default_components, admin=False,
                        install_signal_handlers=False)
        await daemon.startup()
        try:
            yield daemon, sb, f"http://127.0.0.1:{daemon.components['ingest_listener'].port}"
        finally:
            await daemon.shutdown()


async def until(check: Callable[[], bool], timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def post(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.post(url, **kw) as resp:
        text = await resp.text()
        try:
            return resp.status, orjson.loads(text)
        except orjson.JSONDecodeError:
            return resp.status, text


async def test_the_seeds_example_reaches_amplitude_and_brevo_and_identifies_operate_on_the_contact(tmp_path):
    async with running(tmp_path) as (daemon, sb, url), aiohttp.ClientSession() as session:
        event = {**SEED, "user_properties": {"$set": {"plan_type": "premium", "email": "u123@example.com"},
                                             "$add": {"visits": 2}}}
        status, body = await post(session, url + "/2/httpapi", json={"api_key": APP_KEY, "events": [event]})
        assert status == 200 and body["code"] == 200 and body["events_ingested"] == 1
        identification = [{"user_id": "user_123",
                           "user_properties": {"$add": {"visits": 3}, "$setOnce": {"plan_type": "free"}}}]
        status, body = await post(session, url + "/identify", data={
            "api_key": APP_KEY, "identification": orjson.dumps(identification).decode()})
        assert status == 200 and body == "success"

        brevo, amplitude = sb.brevo_app[BREVO_STATE], sb.amplitude_app[AMPLITUDE_INGEST_STATE]
        await until(lambda: brevo.events and brevo.orders and amplitude.events and amplitude.identifies
                    and any(c.attributes.get("VISITS") == 5 for c in brevo.contacts.values()))
        [sent] = amplitude.events
        assert {k: v for k, v in sent.items() if k not in ("ip", "kind", "caller")} == event, "unchanged but ip"
        assert sent["ip"] == "127.0.0.1"
        [brevo_event] = brevo.events
        assert brevo_event["event_name"] == "order_completed"
        [order] = brevo.orders.values()
        assert order["amount"] == 89.99 and order["products"][0]["productId"] == "SKU-001"
        [contact] = brevo.contacts.values()
        assert contact.ext_id == "user_123" and contact.email == "u123@example.com"
        assert contact.attributes["PLAN"] == "premium", "$setOnce keeps what was set"
        assert contact.attributes["VISITS"] == 5, "$add sums"
        assert contact.attributes["AMP_LTV"] == 89.99

        state = daemon.runtime.state
        await until(lambda: state.spool_size_known() is not None and state.spool_size_known().rows == 0)
        checkpoints = await state.checkpoints()
        assert checkpoints["ingest.brevo"] == checkpoints["ingest.forwarded"] == number_key(2)


async def test_an_amplitude_outage_does_not_hold_back_brevo_and_the_spool_keeps_what_amplitude_lacks(tmp_path):
    async with running(tmp_path) as (daemon, sb, url), aiohttp.ClientSession() as session:
        async with session.post(sb.amplitude_url + "/_sandbox/amplitude/ingest/faults",
                                json={"outage_seconds": 30}) as resp:
            assert resp.status == 200
        status, _ = await post(session, url + "/batch", json={"api_key": APP_KEY, "events": [
            {**SEED, "insert_id": f"ins-{n}", "user_id": f"user-{n:03d}"} for n in range(20)]})
        assert status == 200
        brevo = sb.brevo_app[BREVO_STATE]
        await until(lambda: len(brevo.events) == 20 and len(brevo.orders) == 20)
        state = daemon.runtime.state
        checkpoints: dict[str, str] = {}

        async def brevo_checkpoint() -> None:
            while "ingest.brevo" not in checkpoints:
                checkpoints.update(await state.checkpoints())
                await asyncio.sleep(0.05)

        await asyncio.wait_for(brevo_checkpoint(), 15)
        assert checkpoints["ingest.brevo"] == number_key(1) and "ingest.forwarded" not in checkpoints
        assert await state.spool_depth() == 1, "Amplitude has not had it yet: the row stays"
        assert sb.amplitude_app[AMPLITUDE_INGEST_STATE].events == []


async def test_a_request_the_mapping_fails_on_is_dead_lettered_and_the_next_one_still_arrives(tmp_path, monkeypatch):
    from amplitude_brevo.ingest.brevo_feed import BrevoFeed

    original = BrevoFeed.map_request

    def failing(self, spool_id, request):
        if spool_id == 1:
            raise RuntimeError("a case the mapping does not know")
        return original(self, spool_id, request)

    monkeypatch.setattr(BrevoFeed, "map_request", failing)
    async with running(tmp_path) as (daemon, sb, url), aiohttp.ClientSession() as session:
        for n in range(2):
            status, _ = await post(session, url + "/2/httpapi", json={"api_key": APP_KEY, "events": [
                {**SEED, "insert_id": f"ins-{n}"}]})
            assert status == 200
        brevo = sb.brevo_app[BREVO_STATE]
        await until(lambda: len(brevo.events) == 1)
        assert brevo.events[0]["event_properties"]["amplitude_insert_id"] == "ins-1"
        letters = await daemon.runtime.state.list_dead_letters(source="ingest")
        assert [orjson.loads(letter.item) for letter in letters] == [{"spool_id": 1, "kind": "httpapi"}]
        assert "a case the mapping does not know" in letters[0].reason
        assert "ingest_spool" in daemon.components, "the source keeps running"
