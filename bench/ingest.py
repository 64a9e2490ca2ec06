"""Realtime ingest benchmark: the daemon's `POST /batch` under load, paced, and from the official SDK; 200 → Brevo.

What it does (`python bench/ingest.py [--seconds S] [--rate R] [--cpu N]`):

The sandbox simulators (`amplitude-brevo sandbox` on free loopback ports) and the REAL daemon
(`amplitude-brevo run`) are separate processes. The daemon's config: ingest on 127.0.0.1 with one app key, the
export off (`connectors.amplitude.enabled: false`), forwarding to the Amplitude simulator's `/batch` on (the
default), events only to the Brevo simulator (`sync.user_properties` and `sync.revenue` off), and everything
else as the daemon's defaults — the General plan's budgets (`/events/batch` 100 requests an hour, `/events`
10 a second), batches of up to 1,000 events waiting up to 2 s, the fsync'd SQLite spool. The sandbox keeps its
own defaults too: the General plan's limits, `/events/batch` in the 100-an-hour "other" bucket.

1. Throughput: `--connections` aiohttp connections post requests of `--batch` events (HTTP V2 bodies:
   `user_id`, `device_id`, `event_type`, `time` in ms, a unique `insert_id`, a few `event_properties`) to
   `POST /batch` as fast as the daemon answers, for `--seconds`. Printed: events accepted (answered 200) per
   second, p50/p99/max request latency, the daemon's CPU (all its threads) in cores, and events per
   CPU-second of the daemon (what one core does: the target's figure unless `--cpu 1` pins the daemon, then
   the rate itself is). Their event type is not in `event_mapping`: the Brevo
   side reads and skips them (Brevo's General plan could not take tens of thousands a second anyway: see run
   2), the forwarder sends them all to the Amplitude simulator. The bench then waits until both spool readers
   are past the last row (checkpoints `ingest.forwarded` and `ingest.brevo` read from the state file) and
   prints how long the spool took to drain.
2. Paced: `--rate` events a second (requests of `--batch` events at even intervals) for `--paced-seconds`,
   of a mapped event type (`Page View` → `page_viewed`). Printed: p50/p99 request latency at that rate, and
   the time from each event's 200 to its storage at the Brevo simulator (which records a wall-clock time per
   event, `GET /_sandbox/brevo/received/events`, polled every 50 ms), p50/p95/max, with the `/events/batch`
   requests it took and Brevo's 429s. At 2,000 events/s the events queue fills a 1,000-event batch in 0.5 s,
   so most of the 200 → Brevo time is that wait (0 to 0.5 s), not the request. The General plan allows 100 `/events/batch` requests an hour of up to
   1,000 events each: about 100,000 events an hour (28 events/s sustained), plus 10 single events a second.
   A paced run at 2,000 events/s has room in a fresh hour's window for about 40 s; the run is capped to what
   fits (printed), so the latency is measured "while the events budget has room" — after that, the daemon
   keeps to the budget and the spool holds the rest.
3. The official `amplitude-analytics` SDK (`Config(server_url=.../batch, use_batch=True)`, its 16 worker
   threads) tracks `--sdk-events` events in a thread of this process; printed: events/s from the first
   `track()` to the last callback, and the callbacks' codes (all 200 expected).

Peak RSS of the daemon: its VmHWM (/proc/PID/status), reset through /proc/PID/clear_refs at the start of
each run, read at its end; the highest is printed. `--cpu N` pins the daemon to N cores (the first N) and this
process and the sandbox to the others, so run 1 measures "events/s on N cores". Targets printed beside the
figures: ≥ 20,000 events/s on one core; p99 ≤ 50 ms at 2,000 events/s; 200 → Brevo p95 ≤ 5 s. `--check`
exits 1 when one is missed. `--profile PATH` runs the daemon under cProfile (its main thread only). Everything
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))  # runnable without an installed package too

import aiohttp  # noqa: E402
import orjson  # noqa: E402
import yaml  # noqa: E402
from procfs import cpu_seconds, proc_mib, reset_peak  # noqa: E402  (bench/procfs.py, beside this script)

from amplitude_brevo.config import PLAN_BUDGETS  # noqa: E402
from amplitude_brevo.sandbox.server import (  # noqa: E402
    SANDBOX_AMPLITUDE_KEY,
    SANDBOX_AMPLITUDE_SECRET,
    SANDBOX_BREVO_KEY,
)

APP_KEY = "bench-ingest-app-key"  # the key apps send (ingest.api_keys); the forwarder uses the project's
LOAD_TYPE = "Bench Load"  # not in the mapping: spooled and forwarded to Amplitude, skipped for Brevo
SDK_TYPE = "Bench SDK"
PACED_TYPE = "Page View"
MAPPING = {PACED_TYPE: "page_viewed"}
USERS = 5000

THROUGHPUT_TARGET = 20_000  # events/s on one core
P99_TARGET_MS = 50.0  # request latency at the paced rate
PACED_TARGET_RATE = 2000
ARRIVAL_P95_TARGET_S = 5.0  # 200 → Brevo, while the events budget has room
BATCH_MAX = 1000  # events per /events/batch request (the sink's and the simulator's limit)
START_BATCH_SIZE = 100  # connectors.brevo.events_batch_size's default: the sink doubles it from there
BUDGET_MARGIN = 10  # /events/batch requests kept spare: partial batches (max_wait), the growth steps' leftovers


# ------------------------------------------------------------------------------------------------- processes


class Child:
    """A child process whose stdout is JSON log lines, kept and searchable (stderr goes to a file)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.name, self.proc, self.stderr_path = name, proc, stderr_path
        self.lines: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, name: str, args: list[str], tmp: Path, env: dict[str, str] | None = None,
                    cpus: set[int] | None = None, profile: str | None = None) -> Child:
        stderr_path = tmp / f"{name}.stderr"
        path = os.pathsep.join(p for p in (str(ROOT / "daemon"), os.environ.get("PYTHONPATH")) if p)
        full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        # Pinned before exec, so that every thread the child starts inherits the affinity.
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with open(stderr_path, "wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []), "-m", "amplitude_brevo", *args,
                stdout=asyncio.subprocess.PIPE, stderr=stderr,
                env=full_env, preexec_fn=pin)
        return cls(name, proc, stderr_path)

    async def _read(self) -> None:
        assert self.proc.stdout
        async for raw in self.proc.stdout:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                line = {"event": "<non-json>", "text": raw.decode(errors="replace")}
            if isinstance(line, dict):
                self.lines.append(line)
            self._new.set()

    async def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines[seen:]:
                    if line.get("event") == event:
                        return line
                seen = len(self.lines)
                if self._reader.done():
                    raise RuntimeError(f"{self.name} exited before logging {event}: "
                                       f"{self.stderr_path.read_text()[-2000:]}{self.lines[-5:]}")
                self._new.clear()
                await self._new.wait()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.terminate()
        try:
            async with asyncio.timeout(20):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await self._reader
        return code


def daemon_config(tmp: Path, amplitude_url: str, brevo_url: str) -> dict[str, Any]:
    """The daemon's defaults but for what the bench needs: loopback ports, the sandbox's URLs, a state file
    in `tmp`, the export off, events only, one mapped event type."""
    return {
        "connectors": {
            "amplitude": {"enabled": False, "api_key": "${AMPLITUDE_API_KEY}", "secret_key": "${AMPLITUDE_SECRET_KEY}",
                          "api_url": amplitude_url, "ingest_url": amplitude_url},
            "brevo": {"api_key": "${BREVO_API_KEY}", "api_url": brevo_url},
        },
        "event_mapping": dict(MAPPING),
        "sync": {"events": True, "user_properties": False, "revenue": False},
        "ingest": {"enabled": True, "listen": "127.0.0.1:0", "api_keys": [APP_KEY]},
        "admin": {"listen": "127.0.0.1:0"},
        "state": {"path": str(tmp / "state.db")},
        "logging": {"level": "info", "format": "json"},
    }


DAEMON_ENV = {"AMPLITUDE_API_KEY": SANDBOX_AMPLITUDE_KEY, "AMPLITUDE_SECRET_KEY": SANDBOX_AMPLITUDE_SECRET,
              "BREVO_API_KEY": SANDBOX_BREVO_KEY}


class Meter:
    """A run's daemon figures: CPU seconds, wall seconds and peak RSS between start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reset_ok = True

    def start(self) -> None:
        self.reset_ok = reset_peak(self.pid)
        self.cpu0, self.wall0 = cpu_seconds(self.pid), time.perf_counter()

    def stop(self) -> dict[str, Any]:
        cpu, wall = cpu_seconds(self.pid) - self.cpu0, time.perf_counter() - self.wall0
        return {"cpu_s": cpu, "wall_s": wall, "cores": cpu / wall if wall else 0.0,
                "peak_rss_mib": proc_mib(self.pid, "VmHWM:"), "rss_mib": proc_mib(self.pid, "VmRSS:"),
                "peak_reset": self.reset_ok}


# ------------------------------------------------------------------------------------------------- requests


def body(event_type: str, run: str, first: int, count: int) -> bytes:
    """An HTTP V2 body of `count` events numbered from `first`; insert ids unique per run and number."""
    now = int(time.time() * 1000)
    events = [{
        "user_id": f"user-{n % USERS}", "device_id": f"device-{n % USERS}", "event_type": event_type,
        "time": now, "insert_id": f"{run}-{n}", "platform": "Web",
        "event_properties": {"path": f"/page/{n % 300}", "plan": "pro", "n": n},
    } for n in range(first, first + count)]
    return orjson.dumps({"api_key": APP_KEY, "events": events})


async def post(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, float]:
    """(status, seconds) of one request, the body read."""
    started = time.perf_counter()
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as response:
        await response.read()
        return response.status, time.perf_counter() - started


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def spool_position(state_path: Path) -> tuple[int, int, int]:
    """(last spool id, ingest.forwarded, ingest.brevo) from the daemon's state file, read-only."""
    conn = sqlite3.connect(f"file:{state_path}?mode=ro", uri=True, timeout=5)
    try:
        last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'ingest_spool'").fetchone()
        marks = dict(conn.execute("SELECT name, value FROM checkpoints WHERE name IN ('ingest.forwarded', "
                                  "'ingest.brevo')").fetchall())
    finally:
        conn.close()
    return (int(last[0]) if last else 0, int(marks.get("ingest.forwarded") or 0), int(marks.get("ingest.brevo") or 0))


async def wait_drained(state_path: Path, timeout: float) -> float | None:
    """Seconds until both spool readers are past the last spooled row (None: not within `timeout`)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        last, forwarded, brevo = await asyncio.to_thread(spool_position, state_path)
        if forwarded >= last and brevo >= last:
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    return None


# ------------------------------------------------------------------------------------------------- run 1


async def run_throughput(url: str, seconds: float, connections: int, batch: int, meter: Meter,
                         sandbox_pid: int) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    numbers = itertools.count()
    accepted = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await post(session, url, body(LOAD_TYPE, "warm", 0, batch))  # the connection pool's first connections
        meter.start()
        cpu0, sandbox0 = time.process_time(), cpu_seconds(sandbox_pid)
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal accepted
            while time.perf_counter() < deadline:
                n = next(numbers)
                status, took = await post(session, url, body(LOAD_TYPE, "load", n * batch, batch))
                statuses[status] += 1
                latencies.append(took)
                if status == 200:
                    accepted += batch

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
        daemon = meter.stop()
        client_cores = (time.process_time() - cpu0) / elapsed
        sandbox_cores = (cpu_seconds(sandbox_pid) - sandbox0) / elapsed
    return {"seconds": elapsed, "accepted": accepted, "rate": accepted / elapsed, "statuses": dict(statuses),
            "requests": sum(statuses.values()), "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "max_ms": max(latencies) * 1000,
            "daemon": daemon, "per_core": accepted / daemon["cpu_s"] if daemon["cpu_s"] else 0.0,
            "client_cores": client_cores, "sandbox_cores": sandbox_cores, "connections": connections, "batch": batch}


# ------------------------------------------------------------------------------------------------- run 2


def budget_room(rate: float, seconds: float, batch_requests: int) -> tuple[float, int]:
    """(seconds of `rate` that fit the `/events/batch` allowance, the events that fit): the sink's requests
    grow from START_BATCH_SIZE by doubling to BATCH_MAX; BUDGET_MARGIN requests are kept spare."""
    sizes, size = [], START_BATCH_SIZE
    while size < BATCH_MAX and len(sizes) < batch_requests:
        sizes.append(size)
        size *= 2
    usable = max(0, batch_requests - BUDGET_MARGIN - len(sizes))
    events = sum(sizes) + usable * BATCH_MAX
    return min(seconds, events / rate), events


async def run_paced(url: str, brevo_control: str, rate: float, seconds: float, batch: int, meter: Meter,
                    settle: float) -> dict[str, Any]:
    per_second = rate / batch
    total = max(1, round(per_second * seconds))
    interval = 1 / per_second
    answered_at: dict[str, float] = {}  # insert id → wall-clock time of its request's 200
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    late: list[float] = []
    arrived: dict[str, float] = {}
    since = 0
    before = await brevo_counts(brevo_control)
    async with aiohttp.ClientSession() as control:

        async def poll_arrivals() -> None:
            nonlocal since
            async with control.get(f"{brevo_control}/received/events", params={"since": str(since)}) as response:
                page = await response.json(loads=orjson.loads)
            for record in page["events"]:
                props = record["event"].get("event_properties") or {}
                insert_id = props.get("amplitude_insert_id")
                if insert_id is not None:
                    arrived.setdefault(insert_id, record["received_at"])
            since += len(page["events"])

        async with aiohttp.ClientSession() as session:
            meter.start()

            async def send(k: int) -> None:
                data = body(PACED_TYPE, "paced", k * batch, batch)
                status, took = await post(session, url, data)
                done = time.time()
                statuses[status] += 1
                latencies.append(took)
                if status == 200:
                    for n in range(k * batch, (k + 1) * batch):
                        answered_at[f"paced-{n}"] = done

            async def poll_until(done: asyncio.Event) -> None:
                # Its own task: the sender never waits for the simulator's answer.
                while not done.is_set():
                    await poll_arrivals()
                    await asyncio.sleep(0.05)

            sending_done = asyncio.Event()
            poller = asyncio.create_task(poll_until(sending_done))
            started = time.perf_counter()
            tasks = []
            for k in range(total):
                due = started + k * interval
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                late.append(max(0.0, time.perf_counter() - due))
                tasks.append(asyncio.create_task(send(k)))
            await asyncio.gather(*tasks)
            sent_for = time.perf_counter() - started
            daemon = meter.stop()
        # Then until every accepted event is at Brevo (or `settle` seconds have passed).
        waited_from = time.perf_counter()
        while len(arrived.keys() & answered_at.keys()) < len(answered_at) and time.perf_counter() - waited_from < settle:
            await asyncio.sleep(0.05)
        sending_done.set()
        await poller
        await poll_arrivals()
    after = await brevo_counts(brevo_control)
    delays = [arrived[i] - answered_at[i] for i in answered_at if i in arrived]
    requests = {k: after["requests"].get(k, 0) - before["requests"].get(k, 0) for k in after["requests"]}
    return {"seconds": sent_for, "rate": rate, "requests_sent": total, "statuses": dict(statuses),
            "accepted": len(answered_at), "achieved_rate": len(answered_at) / sent_for,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": max(latencies) * 1000, "late_max_ms": max(late) * 1000,
            "late_p99_ms": percentile(late, 99) * 1000,
            "arrived": len(delays), "arrival_p50_s": percentile(delays, 50), "arrival_p95_s": percentile(delays, 95),
            "arrival_max_s": max(delays) if delays else float("nan"),
            "brevo_requests": requests, "rate_limited": after["rate_limited"] - before["rate_limited"],
            "other_used": after["requests"].get("other", 0),
            "daemon": daemon}


async def brevo_counts(control: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{control}/received/count") as response:
        return await response.json(loads=orjson.loads)


# ------------------------------------------------------------------------------------------------- run 3


def sdk_send(server_url: str, count: int) -> dict[str, Any]:
    """The official SDK, as an app uses it: track `count` events, flush, shut down (blocking: run in a thread)."""
    from amplitude import Amplitude, BaseEvent, Config

    codes: Counter[int] = Counter()
    lock = threading.Lock()
    last = [0.0]

    def callback(event: BaseEvent, code: int, message: str | None = None) -> None:
        with lock:
            codes[code] += 1
            last[0] = time.perf_counter()

    client = Amplitude(APP_KEY, Config(server_url=server_url, use_batch=True, callback=callback,
                                       flush_queue_size=1000, flush_interval_millis=1000))
    started = time.perf_counter()
    for n in range(count):
        client.track(BaseEvent(event_type=SDK_TYPE, user_id=f"user-{n % USERS}", device_id=f"device-{n % USERS}",
                               insert_id=f"sdk-{n}", time=int(time.time() * 1000),
                               event_properties={"path": f"/page/{n % 300}", "n": n}))
    tracked = time.perf_counter() - started
    for future in client.flush():
        if future is not None:
            future.result()
    client.shutdown()
    elapsed = (last[0] or time.perf_counter()) - started
    return {"events": count, "codes": dict(codes), "seconds": elapsed, "track_seconds": tracked,
            "rate": count / elapsed if elapsed else 0.0}


async def run_sdk(server_url: str, count: int, meter: Meter) -> dict[str, Any]:
    meter.start()
    result = await asyncio.wait_for(asyncio.to_thread(sdk_send, server_url, count), timeout=120)
    result["daemon"] = meter.stop()
    return result


# ------------------------------------------------------------------------------------------------- orchestration


async def orchestrate(args: argparse.Namespace) -> int:
    cores = sorted(os.sched_getaffinity(0))
    daemon_cpus = others = None
    if args.cpu:
        if args.cpu >= len(cores):
            raise SystemExit(f"--cpu {args.cpu}: this machine has {len(cores)} cores; leave one for the load")
        daemon_cpus, others = set(cores[: args.cpu]), set(cores[args.cpu:])
        os.sched_setaffinity(0, others)  # this process: the load client and the SDK
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        sandbox = await Child.start("sandbox", ["sandbox", "--amplitude-port", "0", "--brevo-port", "0",
                                                "--hours", "1", "--rows-per-hour", "10"], tmp, cpus=others)
        daemon = None
        try:
            info = await sandbox.wait_for("sandbox.started", 30)
            brevo_control = info["brevo_url"].removesuffix("/v3") + "/_sandbox/brevo"
            config = tmp / "config.yaml"
            config.write_text(yaml.safe_dump(daemon_config(tmp, info["amplitude_url"], info["brevo_url"]),
                                             sort_keys=False))
            started = time.perf_counter()
            daemon = await Child.start("daemon", ["run", "-c", str(config)], tmp, env=DAEMON_ENV, cpus=daemon_cpus,
                                       profile=args.profile)
            listening = await daemon.wait_for("ingest.listening", 60)
            await daemon.wait_for("daemon.started", 60)
            results["startup_s"] = time.perf_counter() - started
            base = f"http://127.0.0.1:{listening['port']}"
            pid = daemon.proc.pid
            meter = Meter(pid)
            results["rss_idle_mib"] = proc_mib(pid, "VmRSS:")
            print(f"daemon          pid {pid}, READY in {results['startup_s']:.2f} s, ingest on {base}, "
                  f"RSS {results['rss_idle_mib']:.1f} MiB; cores: daemon "
                  f"{sorted(daemon_cpus) if daemon_cpus else 'any'}, load and sandbox "
                  f"{sorted(others) if others else 'any'} (of {len(cores)})", flush=True)

            if not args.skip_throughput:
                before = await brevo_counts(brevo_control)
                r1 = await run_throughput(base + "/batch", args.seconds, args.connections, args.batch, meter,
                                          sandbox.proc.pid)
                r1["drain_s"] = await wait_drained(tmp / "state.db", args.drain_timeout)
                r1["brevo_requests"] = sum((await brevo_counts(brevo_control))["requests"].values()) - sum(
                    before["requests"].values())
                results["throughput"] = r1
                report_throughput(r1)

            allowance = PLAN_BUDGETS["general"]["brevo_events_batch"]
            fit_seconds, fit_events = budget_room(args.rate, args.paced_seconds, allowance.requests)
            results["budget"] = {"requests": allowance.requests, "per": allowance.per, "events": fit_events,
                                 "asked_s": args.paced_seconds, "seconds": fit_seconds}
            r2 = await run_paced(base + "/batch", brevo_control, args.rate, fit_seconds, args.batch, meter,
                                 args.settle)
            results["paced"] = r2
            report_paced(r2, results["budget"])

            if args.sdk_events:
                r3 = await run_sdk(base + "/batch", args.sdk_events, meter)
                results["sdk"] = r3
                report_sdk(r3)
        finally:
            if daemon is not None:
                code = await daemon.stop()
                results["daemon_exit"] = code
                results["dead_lettered"] = sum(int(line.get("dead_lettered") or 0)
                                               for line in daemon.events("brevo.batch.sent"))
                results["problems_logged"] = Counter(
                    str(line.get("event")) for line in daemon.lines if line.get("level") in ("warning", "error", "critical"))
            await sandbox.stop()
    return report_targets(args, results)


# ------------------------------------------------------------------------------------------------- output


def _daemon_line(d: dict[str, Any]) -> str:
    return (f"daemon CPU {d['cpu_s']:.1f} s = {d['cores']:.2f} cores; peak RSS {d['peak_rss_mib']:.1f} MiB"
            + ("" if d["peak_reset"] else " (since start: VmHWM could not be reset)"))


def report_throughput(r: dict[str, Any]) -> None:
    print(f"1. throughput   {r['connections']} connections, POST /batch of {r['batch']} events, {r['seconds']:.1f} s")
    print(f"   accepted     {r['accepted']:,} events = {r['rate']:,.0f} events/s ({r['requests']:,} requests; "
          f"statuses {r['statuses']})")
    print(f"   latency      p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms")
    print(f"   daemon       {_daemon_line(r['daemon'])}; {r['per_core']:,.0f} events per daemon CPU-second "
          f"(load client {r['client_cores']:.2f} cores, sandbox {r['sandbox_cores']:.2f})")
    drained = f"{r['drain_s']:.1f} s after the run" if r["drain_s"] is not None else "NOT within the timeout"
    print(f"   spool        forwarded to Amplitude and read past for Brevo: drained {drained} "
          f"(Brevo requests meanwhile: {r['brevo_requests']}, the event type is not mapped)", flush=True)


def report_paced(r: dict[str, Any], budget: dict[str, Any]) -> None:
    per = f"{budget['per'] / 3600:g} h" if budget["per"] >= 3600 else f"{budget['per']:g} s"
    print(f"2. paced        {r['rate']:,.0f} events/s for {r['seconds']:.1f} s: {r['requests_sent']} requests, "
          f"statuses {r['statuses']}, "
          f"{r['achieved_rate']:,.0f} events/s accepted; sender late by p99 {r['late_p99_ms']:.1f} ms, at most {r['late_max_ms']:.1f} ms")
    capped = budget["seconds"] < budget["asked_s"]
    print(f"   budget       General plan: /events/batch {budget['requests']} requests per {per}, ≤ {BATCH_MAX:,} "
          f"events each: ~{budget['events']:,} events fit from a fresh window"
          + (f" — run capped from {budget['asked_s']:.0f} s to {budget['seconds']:.1f} s" if capped else
             f"; this run's {r['accepted']:,} fit"))
    print(f"   latency      p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms")
    print(f"   200 → Brevo  {r['arrived']:,} of {r['accepted']:,} events arrived: p50 {r['arrival_p50_s']:.2f} s, "
          f"p95 {r['arrival_p95_s']:.2f} s, max {r['arrival_max_s']:.2f} s")
    print(f"   Brevo        requests {r['brevo_requests']} (/events/batch counts in 'other'), 429s "
          f"{r['rate_limited']}; {r['other_used']} of the hour's {budget['requests']} 'other' requests used")
    print(f"   daemon       {_daemon_line(r['daemon'])}", flush=True)


def report_sdk(r: dict[str, Any]) -> None:
    print(f"3. SDK          amplitude-analytics, use_batch, {r['events']:,} events: {r['rate']:,.0f} events/s "
          f"({r['seconds']:.2f} s to the last callback, of which the SDK's own track() calls "
          f"{r['track_seconds']:.2f} s); callback codes {r['codes']}")
    print(f"   daemon       {_daemon_line(r['daemon'])}", flush=True)


def report_targets(args: argparse.Namespace, results: dict[str, Any]) -> int:
    problems = []
    runs = [results[k]["daemon"] for k in ("throughput", "paced", "sdk") if k in results]
    peak = max((d["peak_rss_mib"] for d in runs), default=0.0)
    print(f"peak RSS        {peak:.1f} MiB: the daemon's highest VmHWM over the runs (idle after start "
          f"{results['rss_idle_mib']:.1f} MiB)")
    print(f"daemon          exit code {results.get('daemon_exit')}; events dead-lettered "
          f"{results.get('dead_lettered')}; warnings and errors logged {dict(results.get('problems_logged') or {})}")
    print("targets")
    if "throughput" in results:
        r1 = results["throughput"]
        # Pinned to one core, the rate is the figure; otherwise the daemon shares the cores with the sandbox
        # and the load, and what one core does is its events per CPU-second.
        pinned = args.cpu == 1
        figure = r1["rate"] if pinned else r1["per_core"]
        basis = (f"{r1['rate']:,.0f} events/s pinned to one core ({r1['daemon']['cores']:.2f} of it used)"
                 if pinned else f"{r1['per_core']:,.0f} events per daemon CPU-second, not pinned "
                 f"({r1['rate']:,.0f} events/s on {r1['daemon']['cores']:.2f} cores; --cpu 1 measures it directly)")
        met = figure >= THROUGHPUT_TARGET
        print(f"  throughput    {basis} (target ≥ {THROUGHPUT_TARGET:,} events/s on one core: "
              f"{'met' if met else 'MISSED'})")
        if not met:
            problems.append("throughput")
    r2 = results["paced"]
    at = "" if r2["rate"] == PACED_TARGET_RATE else f" (measured at {r2['rate']:,.0f})"
    met = r2["p99_ms"] <= P99_TARGET_MS
    print(f"  latency       p99 {r2['p99_ms']:.1f} ms at {r2['rate']:,.0f} events/s (target ≤ {P99_TARGET_MS:.0f} ms at "
          f"{PACED_TARGET_RATE:,} events/s{at}: {'met' if met else 'MISSED'})")
    if not met:
        problems.append("latency")
    met = r2["arrival_p95_s"] <= ARRIVAL_P95_TARGET_S and r2["arrived"] == r2["accepted"]
    print(f"  200 → Brevo   p95 {r2['arrival_p95_s']:.2f} s, {r2['arrived']:,} of {r2['accepted']:,} arrived (target p95 ≤ "
          f"{ARRIVAL_P95_TARGET_S:.0f} s while the events budget has room: {'met' if met else 'MISSED'})")
    if not met:
        problems.append("200 → Brevo")
    if "sdk" in results:
        r3 = results["sdk"]
        met = r3["codes"] == {200: r3["events"]}
        print(f"  SDK           {r3['codes'].get(200, 0):,} of {r3['events']:,} callbacks with code 200 "
              f"({'all' if met else 'NOT all'})")
        if not met:
            problems.append("SDK")
    print("result          " + ("all targets met" if not problems else "missed: " + ", ".join(problems)))
    return 1 if problems and args.check else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the throughput run (default 15)")
    parser.add_argument("--connections", type=int, default=24, help="concurrent connections of the throughput run "
                        "(default 24)")
    parser.add_argument("--batch", type=int, default=100, help="events per request (default 100)")
    parser.add_argument("--rate", type=float, default=float(PACED_TARGET_RATE),
                        help=f"events per second of the paced run (default {PACED_TARGET_RATE})")
    parser.add_argument("--paced-seconds", type=float, default=30.0,
                        help="length of the paced run (default 30; capped to what the events budget has room for)")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds to wait after the paced run for its events to reach Brevo (default 30)")
    parser.add_argument("--sdk-events", type=int, default=5000, help="events the SDK sends (default 5000; 0: skip)")
    parser.add_argument("--cpu", type=int, default=0,
                        help="pin the daemon to this many cores, the load and the sandbox to the others")
    parser.add_argument("--drain-timeout", type=float, default=90.0,
                        help="seconds to wait for the spool to drain after the throughput run (default 90)")
    parser.add_argument("--profile", metavar="PATH",
                        help="run the daemon under cProfile (its main thread), the stats written to PATH at its exit")
    parser.add_argument("--skip-throughput", action="store_true", help="only the paced and SDK runs")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    return asyncio.run(orchestrate(args))


if __name__ == "__main__":
    raise SystemExit(main())
