"""`amplitude-brevo sandbox`: the Amplitude and Brevo simulators on loopback ports, for the demo and tests."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from aiohttp import web

from ..config import parse_hour
from .amplitude_sim import ExportFaults, make_amplitude_app
from .brevo_sim import EVENTS_BATCH_BUCKETS, BrevoFaults, BucketLimit, make_brevo_app
from .sample_data import DatasetSpec

SANDBOX_AMPLITUDE_KEY = "sandbox-amplitude-key"
SANDBOX_AMPLITUDE_SECRET = "sandbox-amplitude-secret"
SANDBOX_BREVO_KEY = "xkeysib-sandbox-key"
DEFAULT_START = "2026-11-01T00"


@dataclass
class SandboxOptions:
    host: str = "127.0.0.1"
    amplitude_port: int = 0
    brevo_port: int = 0
    spec: DatasetSpec = field(default_factory=lambda: DatasetSpec(start=parse_hour(DEFAULT_START)))
    members_per_hour: int = 2
    amplitude_api_key: str = SANDBOX_AMPLITUDE_KEY
    amplitude_secret_key: str = SANDBOX_AMPLITUDE_SECRET
    brevo_api_key: str = SANDBOX_BREVO_KEY
    brevo_limits: dict[str, BucketLimit] | None = None
    export_faults: ExportFaults | None = None
    brevo_faults: BrevoFaults | None = None
    brevo_events_batch_bucket: str = "other"  # the rate bucket /events/batch spends: "other" or "events"
    brevo_ecommerce_active: bool = True  # False: orders answer 403 until POST /ecommerce/activate


class Sandbox:
    """Both simulators, started on loopback; `stop()` shuts them down."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.amplitude_app = make_amplitude_app(
            options.spec,
            api_key=options.amplitude_api_key,
            secret_key=options.amplitude_secret_key,
            faults=options.export_faults,
            members_per_hour=options.members_per_hour,
        )
        self.brevo_app = make_brevo_app(
            api_key=options.brevo_api_key, limits=options.brevo_limits, faults=options.brevo_faults,
            events_batch_bucket=options.brevo_events_batch_bucket,
            ecommerce_active=options.brevo_ecommerce_active,
        )
        self._runners: list[web.AppRunner] = []
        self.amplitude_url = ""
        self.brevo_url = ""

    async def start(self) -> Sandbox:
        self.amplitude_url = await self._serve(self.amplitude_app, self.options.amplitude_port)
        self.brevo_url = await self._serve(self.brevo_app, self.options.brevo_port) + "/v3"
        return self

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.options.host, port)
        await site.start()
        self._runners.append(runner)
        bound = runner.addresses[0][1]
        return f"http://{self.options.host}:{bound}"

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def add_sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    parser.add_argument("--amplitude-port", type=int, default=9780, help="Amplitude simulator port (default 9780)")
    parser.add_argument("--brevo-port", type=int, default=9781, help="Brevo simulator port (default 9781)")
    parser.add_argument("--start", default=DEFAULT_START, help=f"first hour of sample data (default {DEFAULT_START})")
    parser.add_argument("--hours", type=int, default=6, help="hours of sample data (default 6)")
    parser.add_argument("--rows-per-hour", type=int, default=2000, help="export rows per hour (default 2000)")
    parser.add_argument("--users", type=int, default=500, help="distinct users in the sample data (default 500)")
    parser.add_argument("--seed", type=int, default=42, help="sample data seed (default 42)")
    parser.add_argument(
        "--events-batch-bucket", choices=EVENTS_BATCH_BUCKETS, default="other",
        help="Brevo rate bucket of POST /events/batch: other (100 per hour, the published table's reading) "
             "or events (shared with POST /events, 10 per second); default other",
    )
    parser.add_argument(
        "--ecommerce-inactive", action="store_true",
        help="start the Brevo simulator with eCommerce not activated: orders get 403 until POST /ecommerce/activate",
    )


def options_from_args(args: argparse.Namespace) -> SandboxOptions:
    if not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit(f"amplitude-brevo sandbox: --host must be a loopback address, not {args.host}")
    spec = DatasetSpec(
        seed=args.seed, start=parse_hour(args.start), hours=args.hours,
        rows_per_hour=args.rows_per_hour, users=args.users,
    )
    return SandboxOptions(host=args.host, amplitude_port=args.amplitude_port, brevo_port=args.brevo_port, spec=spec,
                          brevo_events_batch_bucket=args.events_batch_bucket,
                          brevo_ecommerce_active=not args.ecommerce_inactive)


async def run_sandbox(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Sandbox(options) as sandbox:
        info = {
            "event": "sandbox.started",
            "timestamp": datetime.now(UTC).isoformat(),
            "amplitude_url": sandbox.amplitude_url,
            "brevo_url": sandbox.brevo_url,
            "amplitude_api_key": options.amplitude_api_key,
            "brevo_api_key": options.brevo_api_key,
            "data": {"start": args.start, "hours": args.hours, "rows_per_hour": args.rows_per_hour},
            "dump": f"{sandbox.brevo_url.removesuffix('/v3')}/_sandbox/brevo/received",
        }
        sys.stdout.write(orjson.dumps(info).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    return 0
