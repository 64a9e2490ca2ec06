"""`amplitude-brevo demo`: the sandbox plus the daemon's export path over sample hours, then what reached Brevo."""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .backfill import run_backfill
from .config import load_config, parse_hour
from .logs import configure_logging
from .sandbox.brevo_sim import BucketLimit
from .sandbox.sample_data import DatasetSpec
from .sandbox.server import DEFAULT_START, Sandbox, SandboxOptions

DEMO_MAPPING = {
    "Purchase": "order_completed",
    "Sign Up": "customer_created",
    "Add to Cart": "cart_updated",
    "Page View": "page_viewed",
    "Feature Click": "feature_used",
    "Revenue": "revenue_event",
    "Subscription Started": "subscription_created",
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
            "brevo": {"api_key": o.brevo_api_key, "api_url": sandbox.brevo_url},
        },
        "event_mapping": DEMO_MAPPING,
        "property_mapping": {"email": "email", "first_name": "FIRSTNAME", "last_name": "LASTNAME",
                             "plan_type": "PLAN", "total_purchases": "ORDER_COUNT", "lifetime_revenue": "LTV"},
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
        first = await run_backfill(cfg, start=start, end=end, config_path=str(cfg_path), progress=False,
                                   install_signal_handlers=False)
        second = await run_backfill(cfg, start=start, end=end, config_path=str(cfg_path), progress=False,
                                    install_signal_handlers=False)
        async with aiohttp.ClientSession() as session:
            url = sandbox.brevo_url.removesuffix("/v3") + "/_sandbox/brevo/received"
            async with session.get(url) as resp:
                received = await resp.json()
    print_summary(first, second, received)
    if args.keep:
        print(f"state and config kept in {state_dir}")
    return 0 if first.complete and first.exit_code == 0 else 1


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
    print("second identical run (resumes from the finished checkpoint; the dedupe record guards re-reads)")
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
