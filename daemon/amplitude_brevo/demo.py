"""`amplitude-brevo demo`: the sandbox plus the daemon's export path over sample hours, then what reached Brevo."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from .backfill import run_backfill
from .components import backfill_checkpoint
from .config import load_config, parse_hour
from .logs import configure_logging
from .sandbox.brevo_sim import BucketLimit
from .sandbox.sample_data import DatasetSpec
from .sandbox.server import DEFAULT_START, Sandbox, SandboxOptions
from .state import StateStore

DEMO_MAPPING = {
    "Purchase": "order_completed",
    "Sign Up": "customer_created",
    "Add to Cart": "cart_updated",
    "Page View": "page_viewed",
    "Feature Click": "feature_used",
    "Revenue": "revenue_event",
    "Subscription Started": "subscription_created",
}


# SPEC Appendix A: the seed's property_mapping, whole.
DEMO_PROPERTIES = {
    "email": "email", "first_name": "FIRSTNAME", "last_name": "LASTNAME", "phone": "SMS", "plan_type": "PLAN",
    "signup_date": "SIGNUP_DATE", "total_purchases": "ORDER_COUNT", "lifetime_revenue": "LTV",
    "last_active": "LAST_ACTIVE", "device_type": "DEVICE",
}


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hours", type=int, default=6, help="hours of sample export data (default 6)")
    parser.add_argument("--rows-per-hour", type=int, default=2000, help="export rows per hour (default 2000)")
    parser.add_argument("--keep", action="store_true", help="keep the demo's state directory and print its path")
    parser.add_argument("--verbose", action="store_true", help="print the daemon's JSON logs too")


def demo_config(sandbox: Sandbox, state_dir: Path) -> dict[str, Any]:
    o = sandbox.options
    return {
        "connectors": {
            "amplitude": {"api_key": o.amplitude_api_key, "secret_key": o.amplitude_secret_key,
                          "api_url": sandbox.amplitude_url, "ingest_url": sandbox.amplitude_url},
            "brevo": {"api_key": o.brevo_api_key, "api_url": sandbox.brevo_url, "create_attributes": True},
        },
        "event_mapping": DEMO_MAPPING,
        "property_mapping": DEMO_PROPERTIES,
        # Running totals the daemon keeps itself, in attributes it creates (the sandbox has none by these names).
        "revenue": {"orders": True, "ltv_attribute": "AMP_LTV", "count_attribute": "AMP_ORDERS"},
        "ingest": {"enabled": False},
        "state": {"path": str(state_dir / "state.db")},
        "batching": {"max_items": 1000, "max_wait": "200ms"},
        "logging": {"level": "info", "format": "json"},
    }


async def run_demo(args: argparse.Namespace) -> int:
    spec = DatasetSpec(start=parse_hour(DEFAULT_START), hours=args.hours, rows_per_hour=args.rows_per_hour)
    # Brevo's general-plan limits, with the batch endpoint sharing "all other endpoints" (100/hour).
    limits = {"events": BucketLimit(10, 1.0), "contacts": BucketLimit(10, 1.0), "orders": BucketLimit(5, 1.0),
              "other": BucketLimit(100, 3600.0)}
    state_dir = Path(tempfile.mkdtemp(prefix="amplitude-brevo-demo-"))
    async with Sandbox(SandboxOptions(spec=spec, brevo_limits=limits)) as sandbox:
        cfg_path = state_dir / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(demo_config(sandbox, state_dir), sort_keys=False))
        cfg = load_config(cfg_path)
        if not args.verbose:
            configure_logging("error", "json")
        start = spec.start
        end = start + timedelta(hours=spec.hours - 1)
        print(f"sandbox: Amplitude {sandbox.amplitude_url}  Brevo {sandbox.brevo_url}")
        print(f"backfilling export hours {start:%Y-%m-%dT%H} .. {end:%Y-%m-%dT%H} "
              f"({spec.hours} h x {spec.rows_per_hour} rows) through the daemon's export path ...")
        control = sandbox.brevo_url.removesuffix("/v3") + "/_sandbox/brevo/received"
        first = await run_backfill(cfg, start=start, end=end, config_path=str(cfg_path), progress=False,
                                   install_signal_handlers=False)
        after_first = await _get(control + "/count")
        # The same hours again, read from scratch: only the dedupe record and the stored profiles decide.
        async with await StateStore.open(cfg.state.path) as state:
            await state.reset_checkpoint(backfill_checkpoint(start, end))
        second = await run_backfill(cfg, start=start, end=end, config_path=str(cfg_path), progress=False,
                                    install_signal_handlers=False)
        after_second = await _get(control + "/count")
        received = await _get(control)
        print_summary(first, second, received)
        print_contacts_and_revenue(first, received, after_first, after_second)
        ingest_ok = await run_ingest_step(sandbox, state_dir, args.verbose)
    if args.keep:
        print(f"state and config kept in {state_dir}")
    return 0 if first.complete and first.exit_code == 0 and ingest_ok else 1


async def run_ingest_step(sandbox: Sandbox, state_dir: Path, verbose: bool) -> bool:
    """The daemon with its ingest endpoint on, and the seed's HTTP V2 example posted to it as `curl` would:
    what it answers, what reached the Amplitude sandbox, and what reached Brevo."""
    from .app import Daemon
    from .components import default_components
    from .config import parse_config
    from .sandbox.amplitude_ingest import AMPLITUDE_INGEST_STATE
    from .sandbox.brevo_sim import BREVO_STATE

    doc = demo_config(sandbox, state_dir)
    doc["connectors"]["amplitude"]["enabled"] = False  # the export was read above: the endpoint alone now
    doc["ingest"] = {"enabled": True, "listen": "127.0.0.1:0"}
    doc["admin"] = {"listen": "127.0.0.1:0"}
    if not verbose:
        doc["logging"] = {"level": "error", "format": "json"}
    daemon = Daemon(parse_config(doc), components=default_components, admin=False, install_signal_handlers=False)
    await daemon.startup()
    brevo, amplitude = sandbox.brevo_app[BREVO_STATE], sandbox.amplitude_app[AMPLITUDE_INGEST_STATE]
    try:
        url = f"http://127.0.0.1:{daemon.components['ingest_listener'].port}/2/httpapi"
        body = {"api_key": sandbox.options.amplitude_api_key, "events": [SEED_EXAMPLE]}
        print()
        print("realtime ingest (the daemon's endpoint; the seed's HTTP V2 example)")
        print(f"  curl -s {url} -H 'Content-Type: application/json' -d '{{\"api_key\": ..., \"events\": "
              f"[{{\"user_id\": \"user_123\", \"event_type\": \"Purchase\", ...}}]}}'")
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
            answer = await resp.text()
        print(f"  answer             {resp.status} {answer}")

        def arrived() -> tuple[Any, Any, Any]:
            event = next((e for e in brevo.events if (e.get("event_properties") or {}).get("amplitude_insert_id", "")
                          .startswith("ingest-")), None)
            order = next((o for o in brevo.orders.values() if o["id"].startswith("ingest-")), None)
            forwarded = next((e for e in amplitude.events if e.get("user_id") == "user_123"), None)
            return event, order, forwarded

        for _ in range(300):
            if all(arrived()):
                break
            await asyncio.sleep(0.1)
        event, order, forwarded = arrived()
    finally:
        await daemon.shutdown()
    if forwarded:
        shown = {k: v for k, v in forwarded.items() if k not in ("kind", "caller")}
        print(f"  at Amplitude       {orjson.dumps(shown).decode()[:300]}")
    if event:
        print(f"  Brevo event        {event['event_name']} for {event['identifiers']} at {event['event_date']}")
    if order:
        products = ", ".join(p["productId"] for p in order.get("products", []))
        print(f"  Brevo order        {order['amount']} for {products} (status {order['status']})")
    ok = bool(resp.status == 200 and event and order and forwarded)
    print(f"  {'reached both upstreams' if ok else 'DID NOT reach both upstreams within 30 s'}")
    return ok


# SPEC Appendix A: the event of the seed's HTTP V2 example.
SEED_EXAMPLE = {
    "user_id": "user_123", "event_type": "Purchase",
    "event_properties": {"revenue": 89.99, "product_id": "SKU-001", "product_name": "Widget Pro"},
    "user_properties": {"$set": {"plan_type": "premium"}}, "time": 1764400000000,
}


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()


def print_contacts_and_revenue(first: Any, received: dict[str, Any], after_first: dict[str, Any],
                               after_second: dict[str, Any]) -> None:
    folder = first.sinks.get("profiles", {})
    contacts = first.sinks.get("brevo_contacts", {})
    orders_sink = first.sinks.get("brevo_orders", {})
    writes = after_first.get("contact_writes", {})
    print()
    print("contacts (user properties -> typed attributes; profiles kept in the state file)")
    print(f"  profiles folded    {folder.get('new', 0):>8,} new, {folder.get('changed', 0):,} changed, "
          f"{folder.get('unchanged', 0):,} unchanged (no write)")
    print(f"  written to Brevo   {contacts.get('delivered', 0):>8,}   (created {contacts.get('created', 0):,} one by one, "
          f"imported {contacts.get('imported', 0):,} in {contacts.get('import_requests', 0):,} imports, "
          f"updated {contacts.get('updated', 0):,}; {contacts.get('batch_requests', 0):,} /contacts/batch)")
    print(f"  at the sandbox     created {writes.get('created', 0):,}, updated {writes.get('updated', 0):,}, "
          f"unchanged {writes.get('unchanged', 0):,}")
    print(f"  dead-lettered      {contacts.get('dead_lettered', 0):>8,}   (emails Brevo refuses; see `dlq list`)")
    dropped = folder.get("dropped", {})
    detail = ", ".join(f"{name} {n}" for name, n in sorted(dropped.items()))
    print(f"  values dropped     {sum(dropped.values()):>8,}   by conversion to the attribute's type ({detail})")
    orders = received.get("orders", [])
    total = sum(o.get("amount", 0) for o in orders)
    refunds = [o for o in orders if o.get("status") == "refunded"]
    print("orders and lifetime value")
    print(f"  orders             {len(orders):>8,}   ({len(refunds):,} refunds; historical: "
          f"{sorted({str(o.get('historical')) for o in orders})}; {orders_sink.get('batch_requests', 0):,} "
          f"/orders/status/batch)")
    print(f"  revenue total      {total:>11,.2f}")
    print(f"  counted once       {folder.get('revenue_counted', 0):>8,}   revenue events in the LTV / order count "
          f"totals (AMP_LTV, AMP_ORDERS)")
    example = next((c for c in received.get("contacts", []) if (c.get("attributes") or {}).get("AMP_LTV")), None)
    if example:
        import orjson

        print("  example contact:")
        print("    " + orjson.dumps({k: example.get(k) for k in ("email", "ext_id", "attributes")}).decode()[:600])
    again = after_second.get("contact_writes", {})
    new_writes = sum(again.values()) - sum(writes.values())
    print("second run")
    print(f"  contact writes     {new_writes:>8,}")
    print(f"  new orders         {after_second.get('orders', 0) - after_first.get('orders', 0):>8,}   "
          f"(orders updated: {after_second.get('orders_updated', 0) - after_first.get('orders_updated', 0):,})")


def print_summary(first: Any, second: Any, received: dict[str, Any]) -> None:
    s, k = first.source, first.sink
    events = received.get("events", [])
    names = Counter(e.get("event_name") for e in events)
    print()
    print("export path (first run)")
    print(f"  rows read          {s['rows_read']:>8,}")
    print(f"  mapped             {s['mapped']:>8,}")
    skipped = ", ".join(f"{n} {r}" for r, n in sorted(s["skipped"].items()))
    print(f"  skipped            {sum(s['skipped'].values()):>8,}   ({skipped})")
    print(f"  delivered          {k['delivered']:>8,}")
    print(f"  deduplicated       {s['deduplicated']:>8,}")
    print(f"  dead-lettered      {s['dead_lettered'] + k['dead_lettered']:>8,}")
    print(f"  Brevo requests     {k['batch_requests']:>8,} /events/batch, {k['single_requests']:,} /events")
    print(f"  429s received      {first.rate_limited:>8,}")
    print(f"  seconds            {first.seconds:>8.1f}")
    print("second identical run (its checkpoint removed: every hour is read again; the dedupe record and the")
    print("stored profiles decide what is sent)")
    print(f"  rows re-read       {second.source['rows_read']:>8,}")
    print(f"  delivered          {second.sink['delivered']:>8,}")
    print()
    print("what reached Brevo (sandbox dump)")
    print(f"  events             {len(events):>8,}")
    for name, count in names.most_common():
        print(f"    {name:<22} {count:>6,}")
    print(f"  requests per bucket {received.get('requests', {})}")
    print(f"  statuses            {received.get('statuses', {})}")
    print(f"  429s sent           {received.get('rate_limited', 0)}")
    if events:
        import orjson

        print("  example event:")
        print("    " + orjson.dumps(events[0]).decode()[:600])
