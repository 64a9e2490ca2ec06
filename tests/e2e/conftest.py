"""Fixtures that run the real daemon as a separate process and listen to it like systemd would."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from .. import conftest as root
from ..conftest import SECRETS  # the tests here import it from this module

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this folder is marked `e2e` (slow: processes), so `pytest -m "not e2e"` is the fast part."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def base_config(tmp_path: Path, **overrides: object) -> dict:
    """The root conftest's base_config() with the timings the daemon processes here are tested with: a 5 s
    shutdown_timeout, batches that wait up to 1 s. Overrides are merged in the same way (`root.merge`)."""
    return root.base_config(tmp_path, **root.merge({"shutdown_timeout": "5s", "batching": {"max_wait": "1s"}},
                                                   overrides))


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class NotifySocket:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def expect(self, field: str, timeout: float = 15) -> str:
        """Wait for the next message containing `field` (e.g. READY=1); earlier ones are kept in messages."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = (await loop.sock_recv(self.sock, 65536)).decode()
                self.messages.append(data)
                if field in data.split("\n"):
                    return data

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """`amplitude-brevo <args>` as a child process; stdout is parsed as JSON log lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.stderr = b""

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        full_env = {**os.environ, **SECRETS, **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "amplitude_brevo", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=full_env,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout
        async for raw in self.proc.stdout:
            text = raw.decode()
            self.raw.append(text)
            try:
                self.lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                self.lines.append({"event": "<non-json>", "text": text})
            self._new.set()

    async def wait_for_log(self, event: str, timeout: float = 15, start: int = 0, **match: object) -> dict:
        async with asyncio.timeout(timeout):
            seen = start
            while True:
                for line in self.lines[seen:]:
                    if line.get("event") == event and all(line.get(k) == v for k, v in match.items()):
                        return line
                seen = len(self.lines)
                if self.proc.returncode is not None and self._reader.done():
                    raise AssertionError(f"process exited before logging {event}: {self.lines[-5:]}")
                self._new.clear()
                await self._new.wait()

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait(self, timeout: float = 30) -> int:
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
            assert self.proc.stderr
            self.stderr = await self.proc.stderr.read()
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    def all_output(self) -> str:
        return "".join(self.raw) + self.stderr.decode(errors="replace")


@pytest.fixture
async def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
async def processes():
    """Collects started processes and kills any left running at the end of a test."""
    started: list[DaemonProcess] = []
    yield started
    for p in started:
        p.kill()
        try:
            await p.wait(10)
        except Exception:
            pass


class SandboxProcess:
    """`amplitude-brevo sandbox` as a child process on free loopback ports."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict) -> None:
        self.proc = proc
        self.info = info
        self.amplitude_url: str = info["amplitude_url"]
        self.brevo_url: str = info["brevo_url"]
        self.control = self.brevo_url.removesuffix("/v3") + "/_sandbox/brevo"
        self.amplitude_control = self.amplitude_url + "/_sandbox/amplitude"
        # The sample data served: {"start", "hours", "rows_per_hour"}, as expected_events(**sb.data) takes them.
        self.data: dict = info["data"]

    @classmethod
    async def start(cls, *, hours: int = 6, rows_per_hour: int = 2000, start: str = "2026-11-01T00") -> SandboxProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "amplitude_brevo", "sandbox", "--amplitude-port", "0", "--brevo-port", "0",
            "--hours", str(hours), "--rows-per-hour", str(rows_per_hour), "--start", start,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout
        async with asyncio.timeout(20):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise AssertionError("sandbox exited: " + (await proc.stderr.read()).decode())  # type: ignore[union-attr]
                try:
                    info = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if info.get("event") == "sandbox.started":
                    return cls(proc, info)

    async def post(self, url: str, body: dict) -> dict:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def received(self) -> dict:
        """The Brevo simulator's whole dump: every event, contact and order received (see counts())."""
        return await self._get(self.control + "/received")

    async def counts(self) -> dict:
        """How many events (and per event_name), contacts, orders... were received, and the request counters:
        what to poll while waiting for a delivery to complete."""
        return await self._get(self.control + "/received/count")

    async def _get(self, url: str) -> dict:
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# /events/batch gets a bucket of its own in these tests, sized like the extended plan's "other" bucket, so
# that a test's few hundred batch requests (retries included) never exhaust it; test_brevo_sim and the
# demo cover the general plan's 100 requests/hour.
BATCH_LIMIT = {"requests": 600, "per": 3600}


@pytest.fixture
async def make_sandbox():
    """`await make_sandbox(hours=..., rows_per_hour=...)`: a sandbox process with BATCH_LIMIT on /events/batch,
    stopped after the test."""
    started: list[SandboxProcess] = []

    async def start(**data: object) -> SandboxProcess:
        sb = await SandboxProcess.start(**data)  # type: ignore[arg-type]
        started.append(sb)
        await sb.post(sb.control + "/limits", {"events_batch": BATCH_LIMIT})
        return sb

    yield start
    for sb in started:
        await sb.stop()


@pytest.fixture
async def sandbox(make_sandbox):
    """The default sandbox: 6 hours of 2,000 rows from 2026-11-01T00."""
    return await make_sandbox()


def sandbox_config(tmp_path: Path, sb: SandboxProcess, **overrides: object) -> dict:
    """base_config() pointed at a running sandbox, with the demo's mappings."""
    from amplitude_brevo.demo import DEMO_MAPPING

    overrides.setdefault("rate_limits", {"brevo_events_batch": {"requests": 600, "per": "1h"}})
    cfg = base_config(tmp_path, **overrides)
    cfg["connectors"]["amplitude"].update(api_url=sb.amplitude_url, ingest_url=sb.amplitude_url)
    cfg["connectors"]["brevo"]["api_url"] = sb.brevo_url
    if "event_mapping" not in overrides:
        cfg["event_mapping"] = DEMO_MAPPING
    cfg.setdefault("property_mapping", {"email": "email", "first_name": "FIRSTNAME", "plan_type": "PLAN",
                                        "total_purchases": "ORDER_COUNT", "lifetime_revenue": "LTV"})
    cfg["logging"] = {"level": "info", "format": "json"}
    return cfg


SANDBOX_ENV = {
    "AMPLITUDE_API_KEY": "sandbox-amplitude-key",
    "AMPLITUDE_SECRET_KEY": "sandbox-amplitude-secret",
    "BREVO_API_KEY": "xkeysib-sandbox-key",
}


def free_port() -> int:
    """A loopback port free now (for a daemon's config that must name it before the daemon starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint(db: Path, name: str = "export.next_hour") -> str:
    """A checkpoint's value in the state file `db`, "" while it is not set."""
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
    return row[0] if row else ""


def contacts_pending(db: Path) -> int:
    """How many contacts in the state file `db` still have a Brevo write pending."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT count(*) FROM contacts WHERE seq > coalesce((SELECT CAST(value AS INTEGER) FROM checkpoints"
            " WHERE name = 'contacts.written'), 0)").fetchone()[0]


def amount_of(props: dict) -> float | None:
    """An export row's revenue as the daemon reads it: `$revenue`, else `$price` × `$quantity`."""
    if props.get("$revenue") is not None:
        return float(props["$revenue"])
    if props.get("$price") is not None:
        return float(props["$price"]) * float(props.get("$quantity") or 1)
    return None


def expected_events(hours: int = 6, rows_per_hour: int = 2000, start: str = "2026-11-01T00",
                    mapping: dict | None = None, property_mapping: dict | None = None,
                    only_hour: int | None = None) -> dict[str, dict]:
    """What Brevo should receive for the sandbox's sample data: insert id → Brevo event payload.

    `only_hour` keeps the rows of that server-upload hour (0-based) only.
    """
    from datetime import timedelta

    from amplitude_brevo.config import parse_hour
    from amplitude_brevo.demo import DEMO_MAPPING
    from amplitude_brevo.pipeline.remap import BrevoEvent, MappingRules, remap_event
    from amplitude_brevo.pipeline.rows import row_decoder
    from amplitude_brevo.sandbox.sample_data import DatasetSpec, rows_for_hour

    spec = DatasetSpec(start=parse_hour(start), hours=hours, rows_per_hour=rows_per_hour)
    rules = MappingRules(
        mapping or DEMO_MAPPING,
        property_mapping or {"email": "email", "first_name": "FIRSTNAME", "plan_type": "PLAN",
                             "total_purchases": "ORDER_COUNT", "lifetime_revenue": "LTV"},
    )
    out: dict[str, dict] = {}
    for h in range(hours):
        if only_hour is not None and h != only_hour:
            continue
        for row in rows_for_hour(spec, spec.start + timedelta(hours=h)):
            result = remap_event(row_decoder.decode(orjson.dumps(row)), rules)
            if isinstance(result, BrevoEvent):
                out[result.dedupe_key] = result.payload
    return out
