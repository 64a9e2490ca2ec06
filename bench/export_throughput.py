"""Export throughput benchmark: the real export path against the single-core ISA-L + orjson limit, and peak RSS.

What it does (`python bench/export_throughput.py [--rows N] [--big]`):

1. Builds an export zip of `--rows` realistic rows (~1.9 KB each, `sandbox.build_export_zip`) once, in a
   subprocess, and caches it under /tmp/amplitude-brevo-bench/ keyed by layout and seed.
2. Serves that file on 127.0.0.1 as `GET /api/2/export` with the simulator's Basic auth (a static route:
   the simulator's on-the-fly generation is slower than the reader and would be what we measure).
3. Baselines, each in a fresh subprocess on one core: for every member, gzip decompression + `orjson.loads`
   of every line. The target's is the fastest full parse of the file: ISA-L (isal's `igzip`, faster here than
   streaming through `isal_zlib` by hand) + orjson. Stdlib `gzip` + orjson (~1.6× slower), the former
   baseline, is printed beside it, with the ratio against it.
4. Stages, in a fresh subprocess (reference only): `iter_lines`, then + `row_decoder`, then + `remap_event`.
5. Pipeline, in a fresh subprocess: the real `ExportSource` for one window (download with
   `AmplitudeClient.download_export` to a temp file, read, decode, remap, dedupe lookups against a real
   `StateStore`, `BatchQueue` with the configured capacity) drained by the real `BrevoEventsSink` whose
   Brevo client discards every request. The issue's "discarding sink": it joins each `/events/batch` body
   and acknowledges every event (hour tracker, checkpoint in memory) but writes no delivery record.
   Peak RSS is that of the pipeline process (never the generator's) and its reader children
   (`export.readers`, the config default) together at their highest: every 100 ms each process's peak
   since the last sample (VmHWM, then reset with /proc/PID/clear_refs), summed. Each process's own peak
   and the summed PSS (shared pages counted once) are printed beside it, and the CPU seconds of both.
6. Steps 3 (both baselines) and 5 run `--repeat` times, alternately. Each ratio is the median of each
   pipeline run over the baseline run just before it: this machine's speed drifts by tens of percent within
   a minute, and adjacent runs share the conditions. Every run is printed.
7. Once more with the real sink's delivery record (the dedupe keys and checkpoint committed to SQLite per
   request, as in production): reported, not a target — in production Brevo's budgets let through at most
   a few hundred events per second, far below what the record can write (`--no-record` skips it). The
   record makes the sink the slow side, so the queue fills as with `--hold`; its memory is printed apart.

`--hold` makes the sink wait while the queue is below capacity (a slow Brevo): peak RSS then includes a full
queue of `--queue-capacity` events. `--profile` runs the pipeline under cProfile. `--check` exits 1 when a
target (ratio against ISA-L ≥ 0.7, peak RSS ≤ 150 MB) is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hmac
import itertools
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))  # runnable without an installed package too

from procfs import proc_mib, reset_peak  # noqa: E402  (bench/procfs.py, beside this script)

CACHE = Path(tempfile.gettempdir()) / "amplitude-brevo-bench"
CACHE_VERSION = 1  # bump when the generated data changes shape
START = datetime(2024, 1, 15, 0, tzinfo=UTC)
ROWS_PER_HOUR = 25_000  # per export hour; a window holds at most 24 hours (export.max_window default)
API_KEY = "bench-amplitude-key"
SECRET_KEY = "bench-amplitude-secret"
RATIO_TARGET = 0.7
RSS_TARGET_MB = 150.0
DEFAULT_ROWS = 300_000
BIG_ROWS = 600_000  # ≈ 1.1 GB uncompressed
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------------
# helpers shared by every process


def layout(rows: int) -> tuple[int, int]:
    """(hours, rows_per_hour) of an export of at least `rows` rows that fits in one 24-hour window."""
    hours = max(1, min(24, math.ceil(rows / ROWS_PER_HOUR)))
    return hours, math.ceil(rows / hours)


def peak_rss_mib() -> tuple[float, float]:
    """(VmHWM of this address space, ru_maxrss) in MiB; VmHWM is not inherited from the parent."""
    hwm = 0.0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def emit(result: dict[str, Any]) -> None:
    """A child's result: one JSON line, the last line on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------------
# phase: build the zip (child)


def phase_build(args: argparse.Namespace) -> None:
    from amplitude_brevo.sandbox.amplitude_sim import build_export_zip
    from amplitude_brevo.sandbox.sample_data import DatasetSpec

    spec = DatasetSpec(seed=args.seed, start=START, hours=args.hours, rows_per_hour=args.rows_per_hour)
    out = Path(args.zip)
    partial = out.with_suffix(".partial")
    started = time.perf_counter()
    with open(partial, "wb") as fp:
        stats = build_export_zip(spec, spec.start, spec.end - timedelta(hours=1), fp,
                                 members_per_hour=args.members_per_hour)
    os.replace(partial, out)
    meta = {"rows": stats.rows, "members": stats.members, "hours": stats.hours,
            "compressed_bytes": out.stat().st_size, "build_seconds": time.perf_counter() - started}
    out.with_suffix(".json").write_text(json.dumps(meta))
    emit(meta)


# ---------------------------------------------------------------------------------------------------------
# phase: baseline, ISA-L (or stdlib gzip) + orjson.loads of every line (child, one core)


def phase_baseline(args: argparse.Namespace) -> None:
    import gzip
    import zipfile

    import orjson
    from isal import igzip

    opener = gzip.GzipFile if args.codec == "gzip" else igzip.IGzipFile
    loads = orjson.loads
    rows = uncompressed = 0
    started = time.perf_counter()
    with zipfile.ZipFile(args.zip) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".json.gz"):
                continue
            with archive.open(info) as raw, opener(fileobj=raw, mode="rb") as gz:
                pending = b""
                while chunk := gz.read(MIB):
                    uncompressed += len(chunk)
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if line:
                            loads(line)
                            rows += 1
                if pending:
                    loads(pending)
                    rows += 1
    seconds = time.perf_counter() - started
    hwm, maxrss = peak_rss_mib()
    emit({"codec": args.codec, "rows": rows, "uncompressed_bytes": uncompressed, "seconds": seconds,
          "rows_per_s": rows / seconds, "peak_rss_mib": hwm, "ru_maxrss_mib": maxrss})


# ---------------------------------------------------------------------------------------------------------
# phase: the reader's stages without I/O or queueing, for reference (child)


def phase_stages(args: argparse.Namespace) -> None:
    from amplitude_brevo.config import parse_config
    from amplitude_brevo.pipeline.remap import (
        MappingRules,
        SinkOutput,
        collectors_for,
        finish_collectors,
        remap_event,
        row_mapper,
    )
    from amplitude_brevo.pipeline.rows import row_decoder
    from amplitude_brevo.sources.export_files import iter_lines, list_members, open_export

    cfg = parse_config(bench_config("http://127.0.0.1:9", "/nonexistent", 50_000), env=bench_env())
    rules = MappingRules.from_config(cfg)
    fan_cfg = parse_config(bench_config("http://127.0.0.1:9", "/nonexistent", 50_000, contacts=True), env=bench_env())
    fan_rules = MappingRules.from_config(fan_cfg)
    decode = row_decoder.decode
    out: dict[str, Any] = {}
    stages = ("lines", "decode", "remap") if args.events_only else ("lines", "decode", "remap", "fanout")
    for stage in stages:
        rows = 0
        started = time.perf_counter()
        with open_export(args.zip) as archive:
            for member in list_members(archive):
                mapper, size = None, 0
                collectors = collectors_for(fan_rules)  # as the reader: carried over the member
                for line in iter_lines(archive, member):
                    rows += 1
                    if stage == "lines":
                        continue
                    row = decode(line)
                    if stage == "remap":
                        remap_event(row, rules)
                    elif stage == "fanout":
                        # Every consumer (events, orders, profile collector), a chunk per ~1 MiB of lines (the reader: 512 KiB) as
                        # the reader makes one per decompressed step; the collector written once per member.
                        if mapper is None:
                            outputs = {n: SinkOutput() for n in fan_rules.sinks}
                            mapper = row_mapper(fan_rules, outputs, {}, collectors)
                        mapper(row)
                        size += len(line)
                        if size >= MIB:
                            mapper.finish()
                            mapper, size = None, 0
                if stage == "fanout":
                    finish_collectors(collectors, {n: SinkOutput() for n in fan_rules.sinks})
        seconds = time.perf_counter() - started
        out[stage] = {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}
    emit(out)


# ---------------------------------------------------------------------------------------------------------
# phase: the real export path (child)


def bench_env() -> dict[str, str]:
    return {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SECRET_KEY": SECRET_KEY, "BREVO_API_KEY": "xkeysib-bench"}


def bench_config(url: str, state_dir: str, queue_capacity: int, max_wait: float = 2.0,
                 readers: int | None = None, contacts: bool = False) -> dict[str, Any]:
    """The demo's event mapping (demo.py) against the benchmark's server; batching as the defaults but
    `max_wait`; `export.readers` as the default unless given.

    `contacts`: contacts and orders switched on as well (`sync: {events, user_properties, revenue}`), with the
    seed's `property_mapping` (SPEC Appendix A) and revenue totals written to AMP_LTV / AMP_ORDERS: every row
    also feeds the profile collector, revenue rows the orders consumer."""
    from amplitude_brevo.demo import DEMO_MAPPING

    cfg: dict[str, Any] = {
        "connectors": {
            "amplitude": {"api_key": "${AMPLITUDE_API_KEY}", "secret_key": "${AMPLITUDE_SECRET_KEY}",
                          "api_url": url, "ingest_url": url},
            "brevo": {"api_key": "${BREVO_API_KEY}", "api_url": "http://127.0.0.1:9/v3"},
        },
        "event_mapping": dict(DEMO_MAPPING),
        "property_mapping": {"email": "email", "first_name": "FIRSTNAME", "last_name": "LASTNAME",
                             "plan_type": "PLAN", "total_purchases": "ORDER_COUNT", "lifetime_revenue": "LTV"},
        "ingest": {"enabled": False},
        "state": {"path": str(Path(state_dir) / "state.db")},
        "batching": {"queue_capacity": queue_capacity, "max_wait": max_wait},
        "logging": {"level": "warning", "format": "json"},
    }
    cfg["sync"] = {"events": True, "user_properties": False, "revenue": False}  # events only
    if contacts:
        cfg["sync"] = {"events": True, "user_properties": True, "revenue": True}
        cfg["property_mapping"] = dict(APPENDIX_A_MAPPING)
        cfg["revenue"] = {"orders": True, "ltv_attribute": "AMP_LTV", "count_attribute": "AMP_ORDERS"}
    if readers is not None:
        cfg["export"] = {"readers": readers}
    return cfg


# SPEC Appendix A: the seed's example property_mapping.
APPENDIX_A_MAPPING = {
    "email": "email", "first_name": "FIRSTNAME", "last_name": "LASTNAME", "phone": "SMS", "plan_type": "PLAN",
    "signup_date": "SIGNUP_DATE", "total_purchases": "ORDER_COUNT", "lifetime_revenue": "LTV",
    "last_active": "LAST_ACTIVE", "device_type": "DEVICE",
}


class _Unlimited:
    def has_capacity(self, *_: Any) -> bool:
        return True

    def can_send_within(self, *_: Any) -> bool:
        return True


class _Budgets(dict):  # type: ignore[type-arg]
    """Every budget name answers an unlimited budget."""

    def __missing__(self, name: str) -> _Unlimited:
        self[name] = budget = _Unlimited()
        return budget


class DiscardingBrevo:
    """Stands in for BrevoClient: every request is answered at once and its payload dropped.

    The answers are what each sink needs to count its items delivered: `/events/batch` 202; `/orders/status/batch`
    202 {count: the orders sent}; `/contacts/batch` 204; `/contacts/import` 202 {processId} and `/processes/N`
    completed; `POST /contacts` 201 {id}; `/contacts/lists` one list named as the import list; and
    `GET /contacts/attributes` the sandbox's attributes (sandbox/brevo_sim.py) plus the revenue totals'."""

    def __init__(self) -> None:
        from amplitude_brevo.sandbox.brevo_sim import DEFAULT_ATTRIBUTES
        from amplitude_brevo.sinks.brevo_client import BrevoResponse
        from amplitude_brevo.sinks.brevo_contacts import IMPORT_LIST_NAME

        self._response = BrevoResponse
        self.budgets = _Budgets()
        self.stop = None
        self.session = None
        self.health = None
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self._ids = itertools.count(1)
        attributes = [*DEFAULT_ATTRIBUTES, {"name": "AMP_LTV", "category": "normal", "type": "float"},
                      {"name": "AMP_ORDERS", "category": "normal", "type": "float"}]
        self._attributes = {"attributes": attributes}
        self._lists = {"lists": [{"id": 77, "name": IMPORT_LIST_NAME}], "count": 1}

    def reconfigure(self, **_: Any) -> None:
        pass

    def share(self) -> DiscardingBrevo:
        """One more client on the same counters and budgets (each sink has a client of its own: `stop`)."""
        other = object.__new__(DiscardingBrevo)
        other.__dict__.update(self.__dict__)
        other.stop = None
        other._parent = self  # type: ignore[attr-defined]
        return other

    def _count(self, path: str) -> None:
        root = getattr(self, "_parent", self)
        root.requests += 1
        template = path.split("?")[0]
        template = "/processes/N" if template.startswith("/processes/") else template
        root.by_path[template] = root.by_path.get(template, 0) + 1

    async def call(self, method: str, path: str, payload: Any = None, **_: Any) -> Any:
        self._count(path)
        answer = self._response
        if path == "/orders/status/batch":
            count = bytes(payload).count(b'{"id":') if isinstance(payload, (bytes, bytearray)) else len(
                (payload or {}).get("orders") or [])
            return answer(202, {}, {"batchId": next(self._ids), "count": count})
        if path == "/contacts/batch":
            return answer(204, {}, None)
        if path == "/contacts/import":
            return answer(202, {}, {"processId": next(self._ids)})
        if path.startswith("/processes/"):
            return answer(200, {}, {"id": int(path.rsplit("/", 1)[1]), "status": "completed", "info": {}})
        if path == "/contacts" and method == "POST":
            return answer(201, {}, {"id": next(self._ids)})
        if path == "/contacts/attributes":
            return answer(200, {}, self._attributes)
        if path.startswith("/contacts/lists") and method == "GET":
            return answer(200, {}, self._lists)
        return answer(202 if method == "POST" else 204, {}, None)  # /events/batch, /events, PUT /contacts/...

    async def send_once(self, method: str, path: str, payload: Any = None, **kwargs: Any) -> Any:
        return await self.call(method, path, payload, **kwargs)


class _Timed:
    """Wraps an instance's coroutine method, summing the seconds its callers waited on it."""

    def __init__(self, owner: Any, name: str) -> None:
        self.inner = getattr(owner, name)
        self.calls = 0
        self.seconds = 0.0
        setattr(owner, name, self)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.inner(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - started


async def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from amplitude_brevo.app import queue_size
    from amplitude_brevo.clients.amplitude import AmplitudeClient
    from amplitude_brevo.clients.http import make_session
    from amplitude_brevo.config import parse_config
    from amplitude_brevo.logs import configure_logging
    from amplitude_brevo.metrics import Metrics
    from amplitude_brevo.pipeline.acks import Acknowledger
    from amplitude_brevo.pipeline.dedupe import DedupeRecord
    from amplitude_brevo.pipeline.queue import BatchQueue
    from amplitude_brevo.pipeline.remap import (
        CONTACTS_SINK,
        EVENTS_SINK,
        ORDERS_SINK,
        PROFILES_SINK,
        enabled_sinks,
    )
    from amplitude_brevo.sinks.brevo_events import BrevoEventsSink
    from amplitude_brevo.sources.amplitude_export import ExportSource
    from amplitude_brevo.state import StateStore

    contacts_on = not args.events_only
    # With contacts, the sample data's bad values (SMS without a country code, unparseable dates) are warned
    # about by design (counted and printed below instead).
    configure_logging("error" if contacts_on else "warning", "json", stream=sys.stderr)
    work = tempfile.mkdtemp(prefix="amplitude-brevo-bench-")
    cfg = parse_config(bench_config(args.url, work, args.queue_capacity, args.max_wait, args.readers,
                                    contacts=contacts_on), env=bench_env())
    amp, b = cfg.connectors.amplitude, cfg.batching
    state = await StateStore.open(cfg.state.path)
    session = make_session()
    metrics = Metrics()
    client = AmplitudeClient(session, api_url=amp.api_url, api_key=amp.api_key, secret_key=amp.secret_key,
                             metrics=metrics, temp_dir=work)
    queues: dict[str, BatchQueue[Any]] = {
        name: BatchQueue(name, max_wait=b.max_wait, **queue_size(name, b))  # as the daemon sizes them
        for name in (*enabled_sinks(cfg), *((CONTACTS_SINK,) if contacts_on else ()))
    }
    queue = queues[EVENTS_SINK]
    start = START
    end = START + timedelta(hours=args.hours - 1)
    far_future = datetime(2100, 1, 1, tzinfo=UTC)
    dedupe = DedupeRecord(state, cfg.state.dedupe_window)

    class DiscardingAcks(Acknowledger):
        async def settle(self, sink: str, items: Any, refused: Any = None) -> None:
            self.settle_dry(sink, items)  # a discarding sink: acknowledge in memory, record nothing

    acks = (Acknowledger if args.record else DiscardingAcks)(state, dedupe, metrics=metrics)
    source = ExportSource(cfg=cfg, client=client, queues={name: queues[name] for name in enabled_sinks(cfg)},
                          dedupe=dedupe, acks=acks, checkpoint_name="bench", start=start, end=end, metrics=metrics,
                          now=lambda: far_future)
    if args.diag_pause_without_profiles:
        # Diagnosis: the reader pool's pause policy (ReaderPool.in_process) looks at the fullest queue the
        # export feeds; here the profiles queue is left out of it.
        others = [q for name, q in source.queues.items() if name != PROFILES_SINK]
        source.reader.backlog = lambda: max(((len(q), q.capacity) for q in others),
                                            key=lambda lc: lc[0] / max(1, lc[1]), default=(0, 1))
    in_process = {"yes": 0, "asked": 0}
    asked = source.reader.in_process

    def counted_in_process() -> bool:
        answer = asked()
        in_process["asked"] += 1
        in_process["yes"] += answer
        return answer

    source.reader.in_process = counted_in_process  # type: ignore[method-assign]
    brevo = DiscardingBrevo()
    sink = BrevoEventsSink(queue=queue, client=brevo, acks=acks,  # type: ignore[arg-type]
                           batch_size=cfg.connectors.brevo.events_batch_size, metrics=metrics)
    consumers: list[Any] = [sink]
    producers: list[Any] = []  # besides the export: the contact outbox
    orders = folder = contacts = outbox = None
    if contacts_on:
        # What components.sink_components runs for this config (a backfill's: historical orders, the outbox
        # finishing once the export has folded its last hour), each sink on a discarding client of its own.
        from amplitude_brevo.contacts.folder import ProfileFolder
        from amplitude_brevo.contacts.outbox import ContactOutbox
        from amplitude_brevo.sinks.brevo_contacts import BrevoContactsSink
        from amplitude_brevo.sinks.brevo_orders import BrevoOrdersSink

        brevo_cfg = cfg.connectors.brevo
        orders = BrevoOrdersSink(queue=queues[ORDERS_SINK], client=brevo.share(), acks=acks, historical=True,
                                 batch_size=1000, metrics=metrics)
        outbox = ContactOutbox(queue=queues[CONTACTS_SINK], state=state, acks=acks, upstream=source.finished)
        folder = ProfileFolder(cfg=cfg, queue=queues[PROFILES_SINK], state=state, acks=acks, client=brevo.share(),
                               metrics=metrics, on_pending=outbox.wake)
        contacts = BrevoContactsSink(queue=queues[CONTACTS_SINK], client=brevo.share(), acks=acks,
                                     identified=state.contacts_identified, batch_size=brevo_cfg.contacts_batch_size,
                                     import_min=brevo_cfg.contacts_import_min,
                                     import_list_id=brevo_cfg.import_list_id, metrics=metrics)
        contacts.poll_first = 0.0  # the discarding client's imports complete at once: no poll delay to wait out
        await outbox.start()
        consumers += [orders, folder, contacts]
        producers.append(outbox)
    fold = _Timed(state, "fold_contacts") if contacts_on else None
    profile_items = {"n": 0}
    if folder is not None:
        fold_batch = folder._fold

        async def counted_fold(batch: list[Any]) -> None:
            profile_items["n"] += len(batch)
            await fold_batch(batch)

        folder._fold = counted_fold  # type: ignore[method-assign]
    download = _Timed(client, "download_export")
    reading = _Timed(source, "_read_window")
    unseen = _Timed(state, "unseen")
    commit = _Timed(state, "commit_delivery")
    if args.hold:
        take = queue.next_batch

        async def held_next_batch() -> Any:
            # A slow Brevo: take a batch only once the producer is blocked on a full queue (or done reading).
            while len(queue) < queue.capacity and not (source.read_cursor and source.read_cursor > end):
                await asyncio.sleep(0.002)
            return await take()

        queue.next_batch = held_next_batch  # type: ignore[method-assign]

    samples = {"rss_max": 0.0, "queue_max": 0, "queue_at_rss_max": 0, "pss_max": 0.0, "together_max": 0.0,
               "together_daemon": 0.0, "together_readers": 0.0, "queue_at_together_max": 0}
    # Every queue's highest depth (and the bytes of its bodies then), and every queue's depth and bytes when
    # the daemon's RSS was at its highest: what the daemon's peak holds in its queues.
    depths = {name: {"max": 0, "max_bytes": 0, "at_rss_max": 0, "bytes_at_rss_max": 0} for name in queues}
    traced = {"snapshot": None}
    if args.diag_tracemalloc:
        import tracemalloc

        tracemalloc.start(1)
    readers_hwm: dict[int, float] = {}  # reader child pid → its peak RSS
    resets = {"ok": True}

    def interval_peak(pid: int | str) -> float:
        """The process's peak RSS since the last call (VmHWM, then reset to the current RSS: clear_refs 5).
        Where the reset is refused, VmHWM stays the peak since the start: the sums are then upper bounds."""
        peak = proc_mib(pid, "VmHWM:")
        if not reset_peak(pid):
            resets["ok"] = False
        return peak

    def sample_once() -> None:
        # The daemon's and each reader's peak over the last interval, summed: at no moment of that interval
        # can they together have used more. Their peaks over the whole run need not coincide (in a backed-up
        # run the readers stop before the queue is full), so adding those would overstate the daemon.
        daemon = interval_peak("self")
        readers = {pid: interval_peak(pid) for pid in source.reader.pids}
        depth = len(queue)
        for name, q in queues.items():
            entry = depths[name]
            if len(q) > entry["max"]:
                entry["max"], entry["max_bytes"] = len(q), _queued_bytes(q)
        if daemon > samples["rss_max"]:
            samples["rss_max"], samples["queue_at_rss_max"] = daemon, depth
            for name, q in queues.items():
                depths[name]["at_rss_max"], depths[name]["bytes_at_rss_max"] = len(q), _queued_bytes(q)
            if args.diag_tracemalloc:
                traced["snapshot"] = tracemalloc.take_snapshot()
        for pid, peak in readers.items():
            readers_hwm[pid] = max(readers_hwm.get(pid, 0.0), peak)
        if daemon + sum(readers.values()) > samples["together_max"]:
            samples["together_max"] = daemon + sum(readers.values())
            samples["together_daemon"], samples["together_readers"] = daemon, sum(readers.values())
            samples["queue_at_together_max"] = depth
        samples["queue_max"] = max(samples["queue_max"], depth)

    async def sample() -> None:
        # Every 100 ms (the interval peaks miss nothing in between); PSS every 500 ms. These reads run in the
        # measured process's event loop and cost it CPU: PSS (the kernel walks the page tables) for three
        # processes every 20 ms cost ~1.3 s of CPU per 300,000-row run and ~15 % of the throughput.
        for tick in itertools.count():
            sample_once()
            if tick % 5 == 0:
                pss = proc_mib("self", "Pss:", "smaps_rollup")
                pss += sum(proc_mib(pid, "Pss:", "smaps_rollup") for pid in source.reader.pids)
                samples["pss_max"] = max(samples["pss_max"], pss)
            await asyncio.sleep(0.1)

    gc_time = {"seconds": 0.0, "collections": [0, 0, 0], "by_generation": [0.0, 0.0, 0.0], "started": 0.0}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_time["started"] = time.perf_counter()
        else:
            seconds = time.perf_counter() - gc_time["started"]
            gc_time["seconds"] += seconds
            gc_time["collections"][info["generation"]] += 1
            gc_time["by_generation"][info["generation"]] += seconds

    if not args.no_tune:
        from amplitude_brevo.tuning import tune_runtime

        tune_runtime()  # what the daemon does at startup
    gc.callbacks.append(on_gc)
    rss_start = current_rss_mib()
    sampler = asyncio.create_task(sample())
    cpu_self, cpu_children = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    consumer_tasks = [asyncio.create_task(c.run()) for c in consumers]
    source_task = asyncio.create_task(source.run())
    producer_tasks = [asyncio.create_task(p.run()) for p in producers]
    # The source ends once every hour is acknowledged by every sink fed by the export (events, orders, profiles
    # folded); the outbox once, after that, every pending contact write is answered. Then the queues close.
    for task in (source_task, *producer_tasks):
        await asyncio.wait([task, *consumer_tasks], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            for crashed in consumer_tasks:
                if crashed.done():
                    crashed.result()  # raises the consumer's error
            raise RuntimeError("a consumer stopped before the source finished")
        task.result()
    for q in queues.values():
        await q.close()
    for task in consumer_tasks:
        await task
    seconds = time.perf_counter() - started
    cpu_self = _cpu_seconds(resource.RUSAGE_SELF) - cpu_self
    sampler.cancel()
    await source.reader.close()  # already closed by the source; its children are reaped, so counted below
    cpu_children = _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_children
    await session.close()
    await state.close()
    sample_once()  # the daemon's last interval (its readers are gone)
    hwm, maxrss = samples["rss_max"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = source.stats
    return {
        "rows": s.rows, "mapped": s.mapped, "deduplicated": s.deduplicated, "skipped": s.skipped,
        "dead_lettered": s.dead_lettered + sink.stats.dead_lettered, "delivered": sink.stats.delivered,
        "windows": s.windows, "bytes": s.bytes, "brevo_requests": brevo.requests,
        "seconds": seconds, "rows_per_s": s.rows / seconds,
        "download_seconds": download.seconds, "download_calls": download.calls, "read_seconds": reading.seconds,
        "unseen_seconds": unseen.seconds, "unseen_calls": unseen.calls,
        "commit_seconds": commit.seconds, "commit_calls": commit.calls,
        "gc_seconds": gc_time["seconds"], "gc_collections": gc_time["collections"],
        "gc_seconds_by_generation": gc_time["by_generation"],
        "rss_start_mib": rss_start, "peak_rss_mib": hwm, "ru_maxrss_mib": maxrss,
        "queue_capacity": queue.capacity, "queue_max": samples["queue_max"],
        "queue_at_rss_max": samples["queue_at_rss_max"], "hold": args.hold, "record": args.record,
        "readers": len(readers_hwm), "readers_hwm_mib": sum(readers_hwm.values()), "pss_max_mib": samples["pss_max"],
        "together_mib": samples["together_max"], "together_daemon_mib": samples["together_daemon"],
        "together_readers_mib": samples["together_readers"], "queue_at_together_max": samples["queue_at_together_max"],
        "hwm_resets": resets["ok"],
        "cpu_daemon_s": cpu_self, "cpu_readers_s": cpu_children,
        "in_process": in_process, "queue_depths": depths,
        "tracemalloc_top": _tracemalloc_top(traced["snapshot"]) if traced["snapshot"] is not None else None,
        "contacts": contacts_on, "brevo_by_path": brevo.by_path, "profile_items": profile_items["n"],
        **(_contact_figures(orders, folder, contacts, outbox, fold, queues) if contacts_on else {}),
    }


def _contact_figures(orders: Any, folder: Any, contacts: Any, outbox: Any, fold: Any,
                     queues: dict[str, Any]) -> dict[str, Any]:
    t = folder.totals
    c = contacts.stats
    return {
        "orders_delivered": orders.stats.delivered, "orders_dead_lettered": orders.stats.dead_lettered,
        "folded_new": t.new, "folded_changed": t.changed, "folded_unchanged": t.unchanged,
        "revenue_counted": t.revenue_counted, "revenue_repeated": t.revenue_repeated,
        "dropped": dict(folder.dropped_total),
        "contacts_queued": outbox.queued, "contacts_delivered": c.delivered, "contacts_imported": c.imported,
        "contacts_created": c.created, "contacts_updated": c.updated, "contacts_dead_lettered": c.dead_lettered,
        "fold_seconds": fold.seconds, "fold_calls": fold.calls,
    }


def _queued_bytes(queue: Any) -> int:
    """The bytes of the bodies waiting in `queue` (its items, not their objects' overhead)."""
    return sum(len(item.body) for item in list(queue._items))


def _tracemalloc_top(snapshot: Any, limit: int = 25) -> list[str]:
    """The lines that held the most memory in a tracemalloc snapshot (--diag-tracemalloc)."""
    stats = snapshot.statistics("lineno")
    total = sum(stat.size for stat in stats)
    return [f"total {total / MIB:.1f} MiB in {sum(stat.count for stat in stats):,} blocks",
            *(f"{stat.size / MIB:7.2f} MiB {stat.count:>8,} {stat.traceback[0]}" for stat in stats[:limit])]


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def phase_pipeline(args: argparse.Namespace) -> None:
    if not args.profile:
        emit(asyncio.run(run_pipeline(args)))
        return
    import cProfile
    import pstats

    profile_path = CACHE / "pipeline.prof"
    profiler = cProfile.Profile()
    result = profiler.runcall(asyncio.run, run_pipeline(args))
    profiler.dump_stats(profile_path)
    stats = pstats.Stats(profiler, stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(30)
    print(f"profile written to {profile_path}", file=sys.stderr)
    emit(result)


# ---------------------------------------------------------------------------------------------------------
# orchestration (parent): cache, server, children, report


def make_static_export_app(zip_path: Path, start: datetime, end: datetime) -> Any:
    """`GET /api/2/export` answering the prebuilt zip for exactly start..end, with the simulator's auth."""
    from aiohttp import web

    from amplitude_brevo.sandbox.sample_data import parse_hour_key

    expected = "Basic " + base64.b64encode(f"{API_KEY}:{SECRET_KEY}".encode()).decode()

    async def export(request: web.Request) -> web.StreamResponse:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected.encode()):
            return web.Response(status=401, text="Invalid API key or secret key")
        try:
            asked = parse_hour_key(request.query.get("start", "")), parse_hour_key(request.query.get("end", ""))
        except ValueError:
            return web.Response(status=400, text="Invalid or missing start/end (expected YYYYMMDDTHH)")
        if asked != (start, end):
            return web.Response(status=404, text=f"bench serves only {start:%Y%m%dT%H}..{end:%Y%m%dT%H}")
        return web.FileResponse(zip_path, headers={"Content-Type": "application/zip"})

    app = web.Application()
    app.router.add_get("/api/2/export", export)
    return app


async def child(phase: str, *extra: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--phase", phase, *extra, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bench phase {phase!r} failed with exit code {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])


async def ensure_zip(rows: int, seed: int, members_per_hour: int) -> tuple[Path, dict[str, Any]]:
    hours, per_hour = layout(rows)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"export-v{CACHE_VERSION}-{hours}h-{per_hour}r-seed{seed}-m{members_per_hour}.zip"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    print(f"building {hours} h x {per_hour:,} rows into {path} (cached for later runs) ...", flush=True)
    meta = await child("build", "--zip", str(path), "--hours", str(hours), "--rows-per-hour", str(per_hour),
                       "--seed", str(seed), "--members-per-hour", str(members_per_hour))
    print(f"  built in {meta['build_seconds']:.1f} s", flush=True)
    return path, meta


async def orchestrate(args: argparse.Namespace) -> int:
    from aiohttp import web

    rows = args.rows or (BIG_ROWS if args.big else DEFAULT_ROWS)
    zip_path, meta = await ensure_zip(rows, args.seed, args.members_per_hour)
    hours = meta["hours"]
    start, end = START, START + timedelta(hours=hours - 1)
    runner = web.AppRunner(make_static_export_app(zip_path, start, end), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        common = ["--zip", str(zip_path)]
        pipe_args = ["--url", f"http://127.0.0.1:{port}", "--hours", str(hours),
                     "--queue-capacity", str(args.queue_capacity), "--max-wait", str(args.max_wait)]
        pipe_args += ["--hold"] if args.hold else []
        pipe_args += ["--profile"] if args.profile else []
        pipe_args += ["--no-tune"] if args.no_tune else []
        pipe_args += ["--diag-pause-without-profiles"] if args.diag_pause_without_profiles else []
        pipe_args += ["--diag-tracemalloc"] if args.diag_tracemalloc else []
        pipe_args += ["--readers", str(args.readers)] if args.readers is not None else []
        events_args = [*pipe_args, "--events-only"]
        gz_runs, isal_runs, events_runs, contacts_runs = [], [], [], []
        flavours = "pipeline (events only)" + ("" if args.events_only else ", pipeline (contacts and orders on)")
        for i in range(args.repeat):
            print(f"run {i + 1}/{args.repeat}: baselines (stdlib gzip, ISA-L), {flavours} ...", flush=True)
            gz_runs.append(await child("baseline", *common, "--codec", "gzip"))
            isal_runs.append(await child("baseline", *common, "--codec", "isal"))
            events_runs.append(await child("pipeline", *events_args))
            if not args.events_only:
                contacts_runs.append(await child("pipeline", *pipe_args))
        stages = None if args.no_stages else await child(
            "stages", *common, *(["--events-only"] if args.events_only else []))
        recorded = None if args.no_record else await child(
            "pipeline", *(events_args if args.events_only else pipe_args), "--record")
    finally:
        await runner.cleanup()
    return report(args, zip_path, meta, gz_runs, isal_runs, stages, events_runs, contacts_runs, recorded)


def _ratios(runs: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> list[float]:
    """Each pipeline run over the baseline run just before it."""
    return [p["rows_per_s"] / base["rows_per_s"] for base, p in zip(baselines, runs, strict=True)]


def _median_index(values: list[float]) -> int:
    """The index of the median value (the upper one for an even count)."""
    return sorted(range(len(values)), key=values.__getitem__)[len(values) // 2]


def _print_pipeline(title: str, runs: list[dict[str, Any]], isal_runs: list[dict[str, Any]],
                    gz_runs: list[dict[str, Any]], mb: Any) -> tuple[float, float, dict[str, Any]]:
    """One flavour's figures; (ratio against ISA-L, against stdlib gzip, the run shown in detail)."""
    ratios, gz_ratios = _ratios(runs, isal_runs), _ratios(runs, gz_runs)
    ratio, gz_ratio = statistics.median(ratios), statistics.median(gz_ratios)
    pipe = runs[_median_index(ratios)]
    print(f"{title}")
    print(f"pipeline        download + ExportSource + BatchQueue + discarding sink"
          f"{'s' if pipe['contacts'] else ''}: {pipe['rows_per_s']:,.0f} rows/s  ({pipe['seconds']:.2f} s); "
          f"runs {_runs(runs)}")
    print(f"                download {pipe['download_seconds']:.2f} s ({mb(pipe['bytes'])}); read + queue "
          f"{pipe['read_seconds']:.2f} s; last deliveries {pipe['seconds'] - pipe['download_seconds'] - pipe['read_seconds']:.2f} s")
    print(f"                dedupe lookups "
          f"{pipe['unseen_seconds']:.2f} s awaited over {pipe['unseen_calls']} calls; sink commits "
          f"{pipe['commit_seconds']:.2f} s over {pipe['commit_calls']} calls; garbage collector "
          f"{pipe['gc_seconds']:.2f} s (collections by generation {pipe['gc_collections']}; seconds "
          f"{', '.join(f'{s:.2f}' for s in pipe['gc_seconds_by_generation'])})")
    print(f"                CPU: daemon process {pipe['cpu_daemon_s']:.2f} s, reader children {pipe['cpu_readers_s']:.2f} s"
          f" ({(pipe['cpu_daemon_s'] + pipe['cpu_readers_s']) / pipe['seconds']:.2f} cores of {os.cpu_count()})")
    print(f"                rows {pipe['rows']:,}  mapped {pipe['mapped']:,}  events delivered {pipe['delivered']:,}  "
          f"deduplicated {pipe['deduplicated']:,}  skipped {pipe['skipped']}  dead-lettered {pipe['dead_lettered']}")
    if pipe["contacts"]:
        folded = pipe["folded_new"] + pipe["folded_changed"] + pipe["folded_unchanged"]
        print(f"                orders delivered {pipe['orders_delivered']:,} (dead-lettered "
              f"{pipe['orders_dead_lettered']}); revenue counted {pipe['revenue_counted']:,} (repeated "
              f"{pipe['revenue_repeated']})")
        print(f"                profiles folded {folded:,} in {pipe['fold_calls']} transactions "
              f"({pipe['fold_seconds']:.2f} s awaited): new {pipe['folded_new']:,}, changed "
              f"{pipe['folded_changed']:,}, unchanged {pipe['folded_unchanged']:,}; attribute values dropped "
              f"{sum(pipe['dropped'].values())} {pipe['dropped'] or ''}")
        print(f"                contact writes queued {pipe['contacts_queued']:,}, delivered "
              f"{pipe['contacts_delivered']:,} (imported {pipe['contacts_imported']:,}, created "
              f"{pipe['contacts_created']:,}, updated {pipe['contacts_updated']:,}; dead-lettered "
              f"{pipe['contacts_dead_lettered']})")
        print(f"                discarded requests {pipe['brevo_by_path']}")
    print(f"                reader pool: {pipe['in_process']['yes']} of {pipe['in_process']['asked']} answers 'map in "
          f"the daemon's process' (paused by a backed-up queue, READERS_PAUSE_AT)")
    print(f"                events queue capacity {pipe['queue_capacity']:,} "
          f"({'held full: slow sink' if pipe['hold'] else 'drained as fast as possible'}),"
          f" max depth seen {pipe['queue_max']:,}")
    print("                queues (max depth, its bodies; at the daemon's peak RSS): " + "; ".join(
        f"{name} {d['max']:,} ({d['max_bytes'] / MIB:.1f} MiB), {d['at_rss_max']:,} ({d['bytes_at_rss_max'] / MIB:.1f} MiB)"
        for name, d in pipe["queue_depths"].items()))
    if pipe.get("tracemalloc_top"):
        print("                tracemalloc at the daemon's peak RSS (--diag-tracemalloc: slower, figures skewed):")
        for line in pipe["tracemalloc_top"]:
            print(f"                  {line}")
    print(f"ratio           {ratio:.2f} of ISA-L + orjson   (median of the runs' ratios: "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"                {gz_ratio:.2f} of stdlib gzip + orjson   (the former baseline; runs "
          f"{', '.join(f'{r:.2f}' for r in gz_ratios)})")
    _print_memory(runs)
    return ratio, gz_ratio, pipe


def _print_memory(runs: list[dict[str, Any]]) -> None:
    # Memory: the highest, over the pipeline runs, of the daemon's and its reader children's RSS together:
    # every 100 ms each process's peak since the last sample (VmHWM, then reset), summed, so a peak between
    # two samples is not missed. Each process's own peak over the run is printed beside it; those need not
    # coincide (a backed-up queue stops the readers before it is full). (The record run is a slow sink, like
    # --hold: its queue fills, and its memory is printed on its own line.)
    peak = max(runs, key=lambda r: r["together_mib"])
    print(f"peak RSS        {peak['together_mib']:.1f} MiB: daemon process and reader children together, at their"
          f" highest (daemon {peak['together_daemon_mib']:.1f} + readers {peak['together_readers_mib']:.1f} MiB;"
          f" events queue depth {peak['queue_at_together_max']:,})")
    print(f"                each on its own: daemon {peak['peak_rss_mib']:.1f} MiB ({peak['rss_start_mib']:.1f} MiB before"
          f" the run; queue depth {peak['queue_at_rss_max']:,} at its peak), {peak['readers']} reader children"
          f" {peak['readers_hwm_mib']:.1f} MiB; summed PSS, sampled every 500 ms: peak"
          f" {max(r['pss_max_mib'] for r in runs):.1f} MiB"
          + ("" if all(r["hwm_resets"] for r in runs) else
             "\n                (peak RSS could not be reset here: the sum above is each process's peak since its start)"))


def report(args: argparse.Namespace, zip_path: Path, meta: dict[str, Any], gz_runs: list[dict[str, Any]],
           isal_runs: list[dict[str, Any]], stages: dict[str, Any] | None, events_runs: list[dict[str, Any]],
           contacts_runs: list[dict[str, Any]], recorded: dict[str, Any] | None) -> int:
    rows = meta["rows"]
    ratios = _ratios(events_runs, isal_runs)
    shown = _median_index(ratios)
    gz, isal = gz_runs[shown], isal_runs[shown]
    mb = lambda n: f"{n / 1e6:,.1f} MB"  # noqa: E731
    print()
    print(f"export          {zip_path}")
    print(f"                {rows:,} rows in {meta['members']} members over {meta['hours']} h; "
          f"{mb(meta['compressed_bytes'])} zip, {mb(gz['uncompressed_bytes'])} uncompressed "
          f"({gz['uncompressed_bytes'] / rows:,.0f} B/row)")
    print(f"baseline        ISA-L igzip + orjson.loads: {isal['rows_per_s']:>10,.0f} rows/s  ({isal['seconds']:.2f} s, "
          f"peak RSS {isal['peak_rss_mib']:.0f} MiB, one core); runs {_runs(isal_runs)}   (the target's)")
    print(f"  former        stdlib gzip + orjson.loads: {gz['rows_per_s']:>10,.0f} rows/s  ({gz['seconds']:.2f} s, "
          f"peak RSS {gz['peak_rss_mib']:.0f} MiB); runs {_runs(gz_runs)}; ISA-L is "
          f"{isal['rows_per_s'] / gz['rows_per_s']:.2f}x faster")
    if stages:
        labels = [("lines", "iter_lines"), ("decode", "+ row_decoder"), ("remap", "+ remap_event")]
        if "fanout" in stages:
            labels.append(("fanout", "+ orders, profile collector"))
        for name, label in labels:
            st = stages[name]
            print(f"  stage         {label:<28}{st['rows_per_s']:>10,.0f} rows/s  ({st['seconds']:.2f} s)")
    print()
    events_ratio, _, events_pipe = _print_pipeline("EVENTS ONLY (sync.events; the spine issue's figure)",
                                                   events_runs, isal_runs, gz_runs, mb)
    problems = []
    figures = [("events only", events_ratio, events_runs, events_pipe)]
    if contacts_runs:
        print()
        contacts_ratio, _, contacts_pipe = _print_pipeline(
            "CONTACTS AND ORDERS ON (sync: events, user_properties, revenue; Appendix A mapping; AMP_LTV/AMP_ORDERS)",
            contacts_runs, isal_runs, gz_runs, mb)
        figures.append(("contacts and orders on", contacts_ratio, contacts_runs, contacts_pipe))
        pair = _ratios(contacts_runs, events_runs)
        print(f"against events  {statistics.median(pair):.2f} of the events-only pipeline's rows/s (runs "
              f"{', '.join(f'{r:.2f}' for r in pair)}: each run over the events-only run just before it)")
    if recorded:
        print()
        print(f"with record     the real sinks' SQLite delivery record"
              f"{'' if args.events_only else ' (contacts and orders on)'}: {recorded['rows_per_s']:,.0f} rows/s "
              f"({recorded['rows_per_s'] / isal['rows_per_s']:.2f} of the ISA-L baseline above; commits "
              f"{recorded['commit_seconds']:.2f} s awaited over {recorded['commit_calls']} calls; queue up to "
              f"{recorded['queue_max']:,}, peak RSS {recorded['together_mib']:.1f} MiB)"
              f" — not a target")
    print()
    print("targets")
    for label, ratio, runs, pipe in figures:
        peak_mib = max(r["together_mib"] for r in runs)
        peak_mb = peak_mib * MIB / 1e6
        if pipe["rows"] != rows or (pipe["delivered"] + pipe.get("orders_delivered", 0)
                                   + pipe["profile_items"] != pipe["mapped"] - pipe["deduplicated"]):
            problems.append(f"{label}: the pipeline did not read and deliver every row")
        if pipe["contacts"]:
            target, target_text = events_ratio, f"≥ the events-only ratio {events_ratio:.2f} of this run"
        else:
            target, target_text = RATIO_TARGET, f"≥ {RATIO_TARGET}"
        ratio_met = ratio >= target
        rss_met = peak_mb <= RSS_TARGET_MB
        print(f"  {label:<24} ratio {ratio:.2f} of ISA-L + orjson (target {target_text}: "
              f"{'met' if ratio_met else 'MISSED'}); {pipe['rows_per_s']:,.0f} rows/s; peak RSS {peak_mb:.0f} MB "
              f"(target ≤ {RSS_TARGET_MB:.0f} MB: {'met' if rss_met else 'MISSED'})")
        if not ratio_met:
            problems.append(f"{label}: ratio {ratio:.2f} of ISA-L + orjson < {target:.2f}")
        if not rss_met:
            problems.append(f"{label}: peak RSS {peak_mb:.0f} MB > {RSS_TARGET_MB:.0f} MB")
        if pipe["contacts"] and (pipe["contacts_delivered"] != pipe["contacts_queued"]
                                 or pipe["orders_dead_lettered"] or pipe["contacts_dead_lettered"]):
            problems.append(f"{label}: not every contact write or order was delivered")
    if args.big and gz["uncompressed_bytes"] < 1e9:
        problems.append("--big export is under 1 GB uncompressed")
    print("result          " + ("all targets met" if not problems else "; ".join(problems)))
    return 1 if problems and args.check else 0


def _runs(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['rows_per_s']:,.0f}" for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help=f"export rows (default {DEFAULT_ROWS:,}; "
                        f"--big: {BIG_ROWS:,}, over 1 GB uncompressed)")
    parser.add_argument("--big", action="store_true", help="a ≥ 1 GB uncompressed export")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--members-per-hour", type=int, default=2)
    parser.add_argument("--queue-capacity", type=int, default=50_000, help="batching.queue_capacity (default 50000)")
    parser.add_argument("--max-wait", type=float, default=0.1,
                        help="batching.max_wait in seconds (default 0.1, not the daemon's 2 s: with one window, the "
                        "last partial batch would wait that long once, which is latency, not throughput)")
    parser.add_argument("--events-only", action="store_true",
                        help="only the events sink (the spine issue's figure); default: that and, run for run, "
                        "contacts and orders switched on as well")
    parser.add_argument("--hold", action="store_true", help="slow sink: keep the queue full (worst-case memory)")
    parser.add_argument("--repeat", type=int, default=3, help="baselines and pipeline runs, alternately (default 3)")
    parser.add_argument("--readers", type=int, default=None,
                        help="export.readers for the pipeline (default: the config default, 2)")
    parser.add_argument("--no-record", action="store_true",
                        help="skip the extra pipeline run with the real sink's SQLite delivery record")
    parser.add_argument("--record", action="store_true", help=argparse.SUPPRESS)  # internal: that run
    parser.add_argument("--profile", action="store_true", help="run the pipeline under cProfile (slower)")
    parser.add_argument("--no-tune", action="store_true",
                        help="diagnosis: skip tuning.tune_runtime() (switch interval, gc.freeze)")
    parser.add_argument("--diag-pause-without-profiles", action="store_true",
                        help="diagnosis: the reader pool's pause policy ignores the profiles queue")
    parser.add_argument("--diag-tracemalloc", action="store_true",
                        help="diagnosis: trace the pipeline's allocations and print where they were at its peak RSS")
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage reference timings")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    # internal: one phase in a child process
    parser.add_argument("--phase", choices=("build", "baseline", "stages", "pipeline"), help=argparse.SUPPRESS)
    parser.add_argument("--zip", help=argparse.SUPPRESS)
    parser.add_argument("--codec", choices=("gzip", "isal"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--hours", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rows-per-hour", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    phases = {"build": phase_build, "baseline": phase_baseline, "stages": phase_stages, "pipeline": phase_pipeline}
    if args.phase:
        phases[args.phase](args)
        return 0
    return asyncio.run(orchestrate(args))


if __name__ == "__main__":
    raise SystemExit(main())
