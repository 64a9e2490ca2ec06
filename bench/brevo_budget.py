"""Brevo budget benchmark: the real daemon working off a contacts and orders backlog at the General plan's limits.

What it does (`python bench/brevo_budget.py [--smoke] [--check]`):

1. Sample data sized to the issue's backlog: `DatasetSpec` with 60,000 users over 6 hours × 25,000 rows, the
   event mix diluted with page views so that 3.5 % of the rows are revenue events. The skewed user choice
   of the generator leaves ~50,000 distinct identified users seen and ~5,000 revenue events (the exact figures
   are counted from the generated rows and printed). Users' properties change from row to row (`last_active`,
   purchases, lifetime revenue): a *property change* is a row of an identified user whose mapped properties
   (SPEC Appendix A's `property_mapping`, a user property else the row's top-level field) differ from that
   user's previous row, a user's first row included.
2. The sandbox in this process (`sandbox.server.Sandbox`) at the General plan's limits: contacts 10/s, orders
   5/s, events 10/s, "all other endpoints" 100/h, and `/events/batch` in a 100/h window of its own (as the
   daemon's `brevo_events_batch` budget models it). A middleware in front of the simulator records every
   `/v3` request: when, which daemon budget it spends, its status, and how many contacts it wrote
   (`/contacts/batch`: its contacts, `/contacts/import`: its rows, `POST /contacts` and `PUT /contacts/{id}`: one;
   only 2xx answers count).
3. The REAL daemon as a child process: `amplitude-brevo backfill` over the data's hours, with
   `sync.user_properties: true`, the Appendix A `property_mapping`, `revenue.orders: true`,
   `revenue.ltv_attribute: AMP_LTV`, `revenue.count_attribute: AMP_ORDERS`, `connectors.brevo.create_attributes:
   true` (the simulator lacks the AMP_* attributes), `sync.events: false` (150,000 events through
   `/events/batch` at 100 an hour would take the rest of the hour: this bench is about contacts and orders).
4. Once a second it reads the daemon's state file (without the lock, as `amplitude-brevo status` does): the
   contacts pending a Brevo write (`contacts` rows past the `contacts.written` checkpoint) and the queue
   snapshot the daemon's usage recorder writes. A second that starts and ends with contacts pending is a
   backlog second for `brevo_contacts`; for another budget, a second with its sink's queue non-empty, or (no
   snapshot) any second between its first and last request.

Printed: contacts written (counted at the sandbox) and per second, per budget the requests per second during
its backlog against its allowance (utilization), the coalescing ratio (property changes in ÷ contact writes
out), 429s (all, and in steady state: after each budget's first 10 s, while it learns the server's window),
and what reached the simulated Brevo. Targets printed beside: contacts utilization ≥ 95 % while there is a
backlog, zero 429s in steady state.

It fails clearly (exit 2, never hangs): no contact write within `--first-write-timeout` seconds of the daemon's
start (e.g. a build without the contacts pipeline: the daemon's `config.not_built` lines are shown), the daemon
exiting with an error, or the whole run exceeding `--timeout`.

`--smoke`: one hour × 2,000 rows, 500 users, events on and contacts and orders off, so it runs on a build
without the contacts pipeline: it checks that the bench starts both, and that its per-budget counts (what the
utilization figures are made of) agree with the simulator's own request counters and with the backfill's
summary.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))  # runnable without an installed package too

import orjson  # noqa: E402
import yaml  # noqa: E402
from aiohttp import web  # noqa: E402

from amplitude_brevo.config import PLAN_BUDGETS  # noqa: E402
from amplitude_brevo.durations import hour_key, parse_hour  # noqa: E402
from amplitude_brevo.logs import configure_logging  # noqa: E402
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE, BucketLimit  # noqa: E402
from amplitude_brevo.sandbox.sample_data import (  # noqa: E402
    DEFAULT_EVENT_TYPES,
    REVENUE_EVENT_TYPES,
    DatasetSpec,
    hours,
    rows_for_hour,
)
from amplitude_brevo.sandbox.server import (  # noqa: E402
    SANDBOX_AMPLITUDE_KEY,
    SANDBOX_AMPLITUDE_SECRET,
    SANDBOX_BREVO_KEY,
    Sandbox,
    SandboxOptions,
)
from amplitude_brevo.state import StateStore  # noqa: E402

# Three hours before midnight and three after: the second backfill's rows are a day later, so every returning
# user's LAST_ACTIVE (a date attribute) changes, and the known contacts are updated through /contacts/batch
# (within one day most returning users' converted attributes would be unchanged: no write, by design).
START = "2026-11-01T21"

# SPEC Appendix A.
PROPERTY_MAPPING = {
    "email": "email", "first_name": "FIRSTNAME", "last_name": "LASTNAME", "phone": "SMS", "plan_type": "PLAN",
    "signup_date": "SIGNUP_DATE", "total_purchases": "ORDER_COUNT", "lifetime_revenue": "LTV",
    "last_active": "LAST_ACTIVE", "device_type": "DEVICE",
}
EVENT_MAPPING = {"Purchase": "order_completed", "Sign Up": "customer_created", "Add to Cart": "cart_updated",
                 "Page View": "page_viewed", "Feature Click": "feature_used", "Revenue": "revenue_event",
                 "Subscription Started": "subscription_created"}

# The default mix has 11 % revenue events (weights 11 of 90); seven more page-view entries (weight 30 each) and
# a feature click (18) bring it to 11/318 = 3.5 %: ~5,000 revenue events in 142,000 rows of identified users.
BENCH_EVENT_TYPES = (*DEFAULT_EVENT_TYPES, *("Page View",) * 7, "Feature Click")
FULL = {"users": 60_000, "hours": 6, "rows_per_hour": 25_000}
SMOKE = {"users": 500, "hours": 1, "rows_per_hour": 2_000}

UTILIZATION_TARGET = 0.95
LEARNING_SECONDS = 10.0  # a budget's first seconds, while it learns the server's window: 429s not "steady"


# ---------------------------------------------------------------------------------------------- sample data


@dataclass
class Survey:
    rows: int = 0
    identified_users: int = 0
    revenue_events: int = 0
    property_changes: int = 0
    mapped_events: int = 0  # rows of identified users whose event_type is in EVENT_MAPPING
    users: set[str] = field(default_factory=set)  # while counting


def survey(spec: DatasetSpec, phases: list[tuple[str, Any, Any]] | None = None) -> tuple[Survey, dict[str, Survey]]:
    """Count in the generated rows what the daemon will be given: users, revenue events, property changes;
    for all the hours, and for each phase's hours (a user's first row in a phase is a change only if it
    differs from that user's last row before it)."""
    out = Survey()
    by_phase = {label: Survey() for label, _, _ in phases or []}
    last: dict[str, int] = {}
    keys = tuple(PROPERTY_MAPPING)
    for hour in hours(spec):
        parts = [out, *(by_phase[label] for label, first, end in phases or [] if first <= hour <= end)]
        seen: list[set[str]] = [set() for _ in parts]
        for row in rows_for_hour(spec, hour):
            for part in parts:
                part.rows += 1
            user = row.get("user_id")
            if user is None:  # anonymous: no identity Brevo could take (neither ext_id nor email)
                continue
            mapped_event = row["event_type"] in EVENT_MAPPING
            revenue = row["event_type"] in REVENUE_EVENT_TYPES
            props = row.get("user_properties") or {}
            mapped = hash(tuple(props[k] if k in props else _hashable(row.get(k)) for k in keys))
            changed = last.get(user) != mapped
            last[user] = mapped
            for part, users in zip(parts, seen, strict=True):
                part.mapped_events += mapped_event
                part.revenue_events += revenue
                part.property_changes += changed
                users.add(user)
        for part, users in zip(parts, seen, strict=True):
            part.users.update(users)
    for part in (out, *by_phase.values()):
        part.identified_users = len(part.users)
        part.users = set()
    return out, by_phase


def _hashable(value: Any) -> Any:
    return orjson.dumps(value) if isinstance(value, (list, dict)) else value


# ---------------------------------------------------------------------------------------------- sandbox side


def budget_of(method: str, path: str) -> str:
    """The daemon budget a simulator request spends (design: every /contacts/* call is brevo_contacts)."""
    path = path.removeprefix("/v3")
    if path.startswith("/contacts"):
        return "brevo_contacts"
    if path == "/events":
        return "brevo_events"
    if path == "/events/batch":
        return "brevo_events_batch"
    if path == "/orders/status":
        return "brevo_orders"
    if path == "/orders/status/batch":
        return "brevo_orders_batch"
    return "brevo_other"


def contacts_written(method: str, path: str, body: bytes) -> int:
    if method == "POST" and path == "/v3/contacts":
        return 1
    if method == "PUT" and path.startswith("/v3/contacts/") and path.count("/") == 3:
        return 1
    if method == "POST" and path in ("/v3/contacts/batch", "/v3/contacts/import"):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 0
        if path.endswith("/batch"):
            return len(data.get("contacts") or [])
        if data.get("jsonBody") is not None:
            return len(data["jsonBody"])
        return max(0, len([line for line in str(data.get("fileBody") or "").splitlines() if line.strip()]) - 1)
    return 0


_ID_TAIL = re.compile(r"/[^/]*\d[^/]*$")  # /processes/12, /contacts/user-00042: one path


@dataclass
class Recorder:
    """Every /v3 request the simulator answered: (monotonic time, budget, status, contacts written)."""

    requests: list[tuple[float, str, int, int]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # "METHOD /path" of each, ids folded to N

    async def handle(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/v3/"):
            return await handler(request)
        body = await request.read() if request.method in ("POST", "PUT") else b""
        response = await handler(request)
        written = contacts_written(request.method, request.path, body) if response.status < 300 else 0
        self.requests.append((time.monotonic(), budget_of(request.method, request.path), response.status, written))
        self.paths.append(request.method + " " + _ID_TAIL.sub("/N", request.path))
        return response

    def writes(self) -> list[tuple[float, int]]:
        return [(t, n) for t, _, _, n in self.requests if n]


# ---------------------------------------------------------------------------------------------- daemon side


def daemon_config(tmp: Path, sandbox: Sandbox, *, smoke: bool, events: bool) -> Path:
    cfg: dict[str, Any] = {
        "connectors": {
            "amplitude": {"api_key": SANDBOX_AMPLITUDE_KEY, "secret_key": SANDBOX_AMPLITUDE_SECRET,
                          "api_url": sandbox.amplitude_url},
            "brevo": {"api_key": SANDBOX_BREVO_KEY, "api_url": sandbox.brevo_url, "create_attributes": not smoke},
        },
        "sync": {"events": smoke or events, "user_properties": not smoke, "cohorts": False, "revenue": not smoke},
        "event_mapping": EVENT_MAPPING,
        "property_mapping": PROPERTY_MAPPING,
        "revenue": {"orders": True, "ltv_attribute": "AMP_LTV", "count_attribute": "AMP_ORDERS"},
        "ingest": {"enabled": False},
        "admin": {"listen": "127.0.0.1:0"},
        "state": {"path": str(tmp / "state.db")},
        "logging": {"level": "info", "format": "json"},
        "shutdown_timeout": "10s",
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Sample:
    at: float
    contacts_pending: int | None
    queues: dict[str, int]
    queues_at: float | None


async def read_state(store: StateStore) -> tuple[int, dict[str, int], float | None]:
    written = await store.get_checkpoint("contacts.written")
    pending = await store.contacts_pending(written)
    queues, at = await store.backlogs()
    return pending, queues, at


class Failed(Exception):
    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


async def drive(spec: DatasetSpec, phases: list[tuple[str, Any, Any]], *, smoke: bool, events: bool, timeout: float,
                first_write_timeout: float, tmp: Path) -> list[dict[str, Any]]:
    """One `backfill` per phase (label, first hour, last hour), one after the other, against one sandbox and
    one state file: what a first backfill created, the next one finds (in Brevo and in the state file)."""
    recorders: list[Recorder] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        return await recorders[-1].handle(request, handler)

    options = SandboxOptions(spec=spec, brevo_limits={"events_batch": BucketLimit(100, 3600.0)})
    sandbox = Sandbox(options)
    sandbox.brevo_app.middlewares.insert(0, record)
    results = []
    usage_before: dict[str, int] = {}
    sim_before: dict[str, int] = {}
    async with sandbox:
        config = daemon_config(tmp, sandbox, smoke=smoke, events=events)
        for label, first_hour, last_hour in phases:
            recorder = Recorder()
            recorders.append(recorder)
            print(f"{label}: backfill {hour_key(first_hour)} .. {hour_key(last_hour)} ...", flush=True)
            result = await _backfill(config, first_hour, last_hour, recorder, smoke=smoke, timeout=timeout,
                                     first_write_timeout=first_write_timeout, tmp=tmp, label=label)
            sim = sandbox.brevo_app[BREVO_STATE].counts()
            async with await StateStore.open(tmp / "state.db", lock=False) as store:
                usage = await store.usage_since(0)
            total = {b: sum(n for _, n in rows) for b, rows in usage.items()}
            result["daemon_usage"] = {b: n - usage_before.get(b, 0) for b, n in total.items()
                                      if n - usage_before.get(b, 0)}
            usage_before = total
            result["sim"] = {**sim, "requests": {k: v - sim_before.get(k, 0) for k, v in sim["requests"].items()}}
            sim_before = dict(sim["requests"])
            result["label"] = label
            results.append(result)
    return results


async def _backfill(config: Path, first_hour: Any, last_hour: Any, recorder: Recorder, *, smoke: bool,
                    timeout: float, first_write_timeout: float, tmp: Path, label: str) -> dict[str, Any]:
    samples: list[Sample] = []
    log_path = tmp / f"daemon-{label}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "daemon"), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "amplitude_brevo", "backfill", "-c", str(config),
            "--start", hour_key(first_hour), "--end", hour_key(last_hour),
            stdout=log, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        started = time.monotonic()
        store: StateStore | None = None
        try:
            while True:
                try:
                    await asyncio.wait_for(proc.wait(), 1.0)
                    break
                except TimeoutError:
                    pass
                now = time.monotonic()
                if store is None and b'"daemon.started"' in log_path.read_bytes():
                    store = await StateStore.open(tmp / "state.db", lock=False)
                if store is not None:
                    pending, queues, at = await read_state(store)
                    samples.append(Sample(now, pending, queues, at))
                if not smoke and not recorder.writes() and now - started > first_write_timeout:
                    raise Failed(f"{label}: no contact write reached the sandbox within {first_write_timeout:.0f} s "
                                 f"of the daemon's start", log_path)
                if now - started > timeout:
                    raise Failed(f"{label}: the run did not finish within --timeout {timeout:.0f} s", log_path)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        finally:
            if store is not None:
                await store.close()
    ended = time.monotonic()
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines() if line.startswith(b"{")]
    if proc.returncode != 0:
        raise Failed(f"{label}: the daemon exited with {proc.returncode}", log_path)
    if not smoke and not recorder.writes():
        raise Failed(f"{label}: the daemon finished without writing a contact", log_path)
    return {"recorder": recorder, "samples": samples, "started": started, "ended": ended, "lines": lines,
            "log": log_path}


# ---------------------------------------------------------------------------------------------- figures


SINK_OF = {"brevo_contacts": "brevo_contacts", "brevo_orders": "brevo_orders", "brevo_orders_batch": "brevo_orders",
           "brevo_events": "brevo_events", "brevo_events_batch": "brevo_events"}


def backlog_intervals(budget: str, samples: list[Sample], times: list[float]) -> list[tuple[float, float]]:
    """The (start, end) of each sampled second during which `budget` had work waiting, at both ends.

    Contacts: contacts pending a write (read each second) or queued. Another budget: its sink's queue in the
    daemon's last snapshot; without any snapshot, the span from its first to its last request.
    """
    sink = SINK_OF.get(budget)
    if budget == "brevo_contacts":
        def waiting(s: Sample) -> bool:
            return bool(s.contacts_pending) or s.queues.get("brevo_contacts", 0) > 0
    elif sink is not None and any(sink in s.queues for s in samples):
        def waiting(s: Sample) -> bool:
            return s.queues.get(sink, 0) > 0
    else:
        return [(times[0], times[-1])] if len(times) > 1 else []
    return [(a.at, b.at) for a, b in zip(samples, samples[1:], strict=False) if waiting(a) and waiting(b)]


def figures(result: dict[str, Any], data: Survey) -> dict[str, Any]:
    recorder: Recorder = result["recorder"]
    rates = {name: limit.requests / limit.per for name, limit in PLAN_BUDGETS["general"].items()}
    rates.setdefault("brevo_orders_batch", 100 / 3600)
    by_budget: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for t, budget, status, _ in recorder.requests:
        by_budget[budget].append((t, status))
    budgets: dict[str, Any] = {}
    for budget, reqs in sorted(by_budget.items()):
        times = [t for t, _ in reqs]
        ok_times = [t for t, status in reqs if status != 429]
        intervals = backlog_intervals(budget, result["samples"], times)
        seconds = sum(b - a for a, b in intervals)
        during = sum(1 for t in ok_times if any(a <= t < b for a, b in intervals))
        first = times[0]
        limited = [t for t, status in reqs if status == 429]
        rate = rates.get(budget)
        budgets[budget] = {
            "requests": len(reqs), "rate_limited": len(limited),
            "rate_limited_steady": sum(1 for t in limited if t - first >= LEARNING_SECONDS),
            "backlog_seconds": seconds, "per_second": during / seconds if seconds else None,
            "allowance_per_second": rate,
            "utilization": (during / seconds / rate) if seconds and rate else None,
        }
    writes = recorder.writes()
    total_writes = sum(n for _, n in writes)
    span = writes[-1][0] - writes[0][0] if len(writes) > 1 else 0.0
    return {
        "budgets": budgets, "contact_writes": total_writes,
        "contacts_per_second": total_writes / span if span else None,
        "coalescing": data.property_changes / total_writes if total_writes else None,
        "seconds": result["ended"] - result["started"],
    }


def timeline(result: dict[str, Any]) -> None:
    """Per sampled second: contacts pending a write, the daemon's queues, and the requests of each budget."""
    samples: list[Sample] = result["samples"]
    requests: list[tuple[float, str, int, int]] = result["recorder"].requests
    recorder = result["recorder"]
    first = next((a.at for a in samples if a.contacts_pending), None)
    if first is not None:  # the backlog's first seconds, request by request
        print("  the backlog's first requests (seconds after the first sample with contacts pending):")
        for (t, budget, status, _), path in zip(recorder.requests, recorder.paths, strict=True):
            if first - 1 <= t < first + 4 and budget == "brevo_contacts":
                print(f"    {t - first:+6.2f}  {status}  {path}")
    print("  second  pending  queued contacts  requests by budget")
    for a, b in zip(samples, samples[1:], strict=False):
        counts = Counter(budget for t, budget, _, _ in requests if a.at <= t < b.at)
        print(f"  {a.at - result['started']:6.1f}  {a.contacts_pending or 0:7,}  {a.queues.get('brevo_contacts', 0):15,}"
              f"  {dict(sorted(counts.items()))}")


def report(spec: DatasetSpec, data: Survey, result: dict[str, Any], fig: dict[str, Any], *, smoke: bool,
           targeted: bool, note: str = "") -> bool:
    """Print one backfill's figures; True when every target is met (`target`: the utilization target
    applies to this backfill)."""
    ok = True
    print()
    print(f"== {result['label']}{note}")
    print(f"sample data        {data.rows:,} rows; "
          f"{data.identified_users:,} identified users, {data.property_changes:,} property changes, "
          f"{data.revenue_events:,} revenue events, {data.mapped_events:,} mapped events")
    print(f"daemon             backfill in {fig['seconds']:.1f} s")
    if not smoke:
        cps = fig["contacts_per_second"]
        print(f"contacts written   {fig['contact_writes']:,} ({'n/a' if cps is None else f'{cps:,.0f}'} per second, "
              f"first to last write)")
        co = fig["coalescing"]
        print(f"coalescing         {'n/a' if co is None else f'{co:.1f}'} property changes in per contact write out "
              f"({data.property_changes:,} ÷ {fig['contact_writes']:,})")
    print("budgets            requests/s while there is a backlog, against the allowance")
    for name, b in fig["budgets"].items():
        allowance = b["allowance_per_second"]
        if b["per_second"] is None or allowance is None:
            figure = f"{b['requests']:,} requests (no backlog measured)"
        elif allowance < 1:
            figure = (f"{b['requests']:,} requests in {b['backlog_seconds']:.0f} s "
                      f"(allowance {allowance * 3600:,.0f} an hour)")
        else:
            figure = (f"{b['per_second']:.2f} / {allowance:g} per s over {b['backlog_seconds']:.0f} s = "
                      f"{b['utilization']:.1%}")
        shown = ""
        if name == "brevo_contacts" and not smoke:
            met = b["utilization"] is not None and b["utilization"] >= UTILIZATION_TARGET
            if targeted:
                ok &= met
                shown = f"  (target ≥ {UTILIZATION_TARGET:.0%}{'' if met else ': MISSED'})"
            else:
                shown = "  (not a target here: new contacts go in a few big /contacts/import requests)"
        print(f"  {name:<20} {figure}{shown}")
    steady = sum(b["rate_limited_steady"] for b in fig["budgets"].values())
    total = sum(b["rate_limited"] for b in fig["budgets"].values())
    ok &= steady == 0
    print(f"429s               {total} in all, {steady} in steady state (target 0{'' if steady == 0 else ': MISSED'})")
    sim = result["sim"]
    print(f"simulated Brevo    {sim['contacts']:,} contacts, {sim['orders']:,} orders, {sim['events']:,} events "
          f"(in all, so far); requests in this backfill {sim['requests']}")
    paths = Counter(path for path in result["recorder"].paths)
    print(f"requests by path   {dict(paths.most_common())}")
    own = result["daemon_usage"]
    mine = Counter(b for _, b, _, _ in result["recorder"].requests)
    if own:
        agree = all(own.get(b, 0) == n for b, n in mine.items())
        print(f"daemon's own count {own} (budget_usage, what `status` shows){'' if agree else ' — DIFFERS'}")
    else:
        print("daemon's own count n/a (no UsageRecorder in this build's backfill components)")
    # The bench's own classification must add up to the simulator's counters, bucket by bucket.
    sim_buckets = {"brevo_contacts": "contacts", "brevo_events": "events", "brevo_orders": "orders",
                   "brevo_events_batch": "events_batch", "brevo_orders_batch": "other", "brevo_other": "other"}
    expected: Counter[str] = Counter()
    for budget, n in mine.items():
        expected[sim_buckets[budget]] += n
    if dict(expected) != {k: v for k, v in sim["requests"].items() if v}:
        print(f"  bench's request count {dict(expected)} differs from the simulator's {sim['requests']}")
        ok = False
    summary = next((line for line in result["lines"] if line.get("event") == "backfill.summary"), None)
    if smoke and summary is not None:
        delivered, deduplicated = summary.get("delivered"), summary.get("deduplicated", 0)
        match = delivered == sim["events"] == data.mapped_events - deduplicated
        print(f"smoke              backfill delivered {delivered:,} events, the simulator received {sim['events']:,}; "
              f"{data.mapped_events:,} mapped rows of identified users, {deduplicated} deduplicated"
              f"{'' if match else ' — MISMATCH'}")
        ok &= bool(match)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small events-only run (no contacts pipeline needed)")
    parser.add_argument("--users", type=int, help="users in the sample data (default 60,000; smoke 500)")
    parser.add_argument("--hours", type=int, help="hours of sample data (default 6; smoke 1)")
    parser.add_argument("--rows-per-hour", type=int, help="export rows per hour (default 25,000; smoke 2,000)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds (1800)")
    parser.add_argument("--first-write-timeout", type=float, default=120.0,
                        help="fail when no contact write arrives within this many seconds of the start (120)")
    parser.add_argument("--events", action="store_true",
                        help="also forward the rows as Brevo events (off by default: at 100 /events/batch an hour "
                             "they would outlast the contacts)")
    parser.add_argument("--split", type=int, default=None,
                        help="hours in the first backfill (default: half); the second backfills the rest")
    parser.add_argument("--single", action="store_true", help="one backfill over every hour (creates only)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--timeline", action="store_true",
                        help="also print, per sampled second, contacts pending and requests per budget")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    size = SMOKE if args.smoke else FULL
    spec = DatasetSpec(start=parse_hour(START), users=args.users or size["users"], hours=args.hours or size["hours"],
                       rows_per_hour=args.rows_per_hour or size["rows_per_hour"], event_types=BENCH_EVENT_TYPES)
    all_hours = hours(spec)
    split = args.split if args.split is not None else len(all_hours) // 2
    if args.smoke or args.single or not 0 < split < len(all_hours):
        phases = [("backfill", all_hours[0], all_hours[-1])]
    else:
        phases = [("first backfill (creates)", all_hours[0], all_hours[split - 1]),
                  ("second backfill (updates)", all_hours[split], all_hours[-1])]
    print(f"surveying the sample data ({spec.hours * spec.rows_per_hour:,} rows) ...", flush=True)
    data, by_phase = survey(spec, phases)
    print(f"sample data        {spec.hours} h × {spec.rows_per_hour:,} rows = {data.rows:,} rows; "
          f"{data.identified_users:,} identified users, {data.property_changes:,} property changes, "
          f"{data.revenue_events:,} revenue events, {data.mapped_events:,} mapped events", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-brevo-budget-") as tmp:
        try:
            results = asyncio.run(drive(spec, phases, smoke=args.smoke, events=args.events, timeout=args.timeout,
                                        first_write_timeout=args.first_write_timeout, tmp=Path(tmp)))
        except Failed as exc:
            print(f"bench failed: {exc}", file=sys.stderr)
            log = exc.log
            tail = log.read_text(errors="replace").splitlines() if log is not None and log.exists() else []
            notes = [line for line in tail if "config.not_built" in line or '"error"' in line]
            for line in (notes or tail)[-12:]:
                print(f"  daemon: {line}", file=sys.stderr)
            return 2
        met = True
        for n, result in enumerate(results):
            fig = figures(result, by_phase[result["label"]])
            last = n == len(results) - 1
            # The utilization target is the update backlog's (the last backfill); a single backfill's own.
            note = "" if len(results) == 1 else (
                ": new users, written through /contacts/import" if n == 0 else
                ": the same users' later hours, changed properties, written through /contacts/batch")
            met &= report(spec, by_phase[result["label"]], result, fig, smoke=args.smoke, targeted=last, note=note)
            if args.timeline:
                timeline(result)
                kept = Path(tempfile.gettempdir()) / result["log"].name
                kept.write_bytes(result["log"].read_bytes())
                print(f"  daemon log kept: {kept}")
    print()
    print(f"bench              {time.monotonic() - started:.0f} s in all; "
          f"{'all targets met' if met else 'a target was missed'}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    raise SystemExit(main())
