"""Export tail → Brevo events, end to end: sandbox and daemon as separate processes (issue 3 acceptance)."""

import asyncio
import collections
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

from .conftest import (
    SANDBOX_ENV,
    DaemonProcess,
    SandboxProcess,
    checkpoint,
    expected_events,
    free_port,
    sandbox_config,
    write_config,
)


def _ids(events: list[dict]) -> collections.Counter:
    return collections.Counter(e["event_properties"]["amplitude_insert_id"] for e in events)


def _ts(line):
    from datetime import datetime

    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def _recorded(db) -> set[str]:
    """The dedupe record's keys."""
    with sqlite3.connect(db) as conn:
        return {key for (key,) in conn.execute("SELECT key FROM dedupe")}


async def _wait_for_checkpoint(daemon, db, value="20261101T06", timeout=150):
    """Until the export checkpoint in `db` reaches `value` (by default: past the sample data's last hour);
    fails at once if the daemon exits meanwhile."""
    async with asyncio.timeout(timeout):
        while (checkpoint(db) or "") < value:
            assert daemon.proc.returncode is None, daemon.all_output()[-3000:]
            await asyncio.sleep(0.25)


async def _sigterm(daemon, timeout=30):
    """SIGTERM, after which the daemon exits 0."""
    if daemon.proc.returncode is None:
        daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.wait(timeout) == 0, daemon.all_output()[-3000:]


async def _backfill(cfg_path, *extra, timeout=120):
    proc = await DaemonProcess.start("backfill", "-c", str(cfg_path), "--start", "2026-11-01T00",
                                     "--end", "2026-11-01T05", *extra, env=SANDBOX_ENV)
    code = await proc.wait(timeout)
    return proc, code


async def test_backfill_delivers_every_mapped_row_once_and_a_rerun_sends_nothing(tmp_path, sandbox):
    expected = expected_events()
    cfg_path = write_config(tmp_path / "config.yaml", sandbox_config(tmp_path, sandbox))

    proc, code = await _backfill(cfg_path, "--start", "20261101T00")  # both hour formats accepted
    assert code == 0, proc.all_output()[-3000:]
    summary = proc.events("backfill.summary")[-1]
    assert summary["complete"] is True and summary["rows_read"] == 12000
    output = proc.all_output()
    assert all(key not in output for key in SANDBOX_ENV.values()), "API keys never appear in logs"

    received = await sandbox.received()
    counts = _ids(received["events"])
    assert set(counts) == set(expected), "every mapped row with a user id arrives"
    assert max(counts.values()) == 1, "and arrives once"
    by_id = {e["event_properties"]["amplitude_insert_id"]: e for e in received["events"]}
    for key, payload in expected.items():
        got = by_id[key]
        assert got["event_name"] == payload["event_name"]
        assert got["event_date"] == payload["event_date"] and got["event_date"].endswith("Z")
        assert got["identifiers"] == payload["identifiers"]
        assert got["event_properties"] == payload["event_properties"]
        assert got.get("contact_properties") == payload.get("contact_properties")

    # The same backfill again: resumes from its finished checkpoint and sends nothing.
    proc, code = await _backfill(cfg_path)
    assert code == 0
    assert (await sandbox.counts())["events"] == len(received["events"])

    # Even with the checkpoint gone, the dedupe record stops every re-read row.
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("DELETE FROM checkpoints")
    proc, code = await _backfill(cfg_path)
    assert code == 0
    summary = proc.events("backfill.summary")[-1]
    assert summary["deduplicated"] == len(expected) and summary["delivered"] == 0
    assert (await sandbox.counts())["events"] == len(received["events"])


async def test_sustained_throughput_under_a_10_rps_events_budget(tmp_path):
    sb = await SandboxProcess.start(hours=1, rows_per_hour=140)
    try:
        await sb.post(sb.control + "/limits", {"events": {"requests": 10, "per": 1}})
        expected = expected_events(hours=1, rows_per_hour=140)
        cfg = sandbox_config(tmp_path, sb, rate_limits={"brevo_events": {"requests": 10, "per": "1s"}})
        cfg["connectors"]["brevo"]["events_batch_size"] = 1  # every event through POST /events
        cfg_path = write_config(tmp_path / "config.yaml", cfg)
        proc = await DaemonProcess.start("backfill", "-c", str(cfg_path), "--start", "2026-11-01T00",
                                         "--end", "2026-11-01T00", env=SANDBOX_ENV)
        assert await proc.wait(120) == 0, proc.all_output()[-2000:]
        received = await sb.received()
    finally:
        await sb.stop()
    assert set(_ids(received["events"])) == set(expected)
    sent = [line for line in proc.lines if line.get("event") == "brevo.batch.sent"]
    assert sent
    requests = received["requests"]["events"]
    rate_limited = received["rate_limited"]
    assert rate_limited <= 0.01 * requests, f"{rate_limited} 429s for {requests} requests"
    # Throughput over the sending period: from the export window being queued to the last batch acknowledged.
    queued = _ts(proc.events("export.window.done")[0])
    last = _ts(sent[-1])
    per_second = len(expected) / (last - queued)
    print(f"throughput {per_second:.2f} events/s, {rate_limited} 429s in {requests} requests")
    assert per_second >= 9.0, f"{per_second:.2f} events/s against a budget of 10/s"


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path, sandbox):
    expected = expected_events()
    await sandbox.post(sandbox.control + "/faults", {"latency": 0.3})
    # Two reader children (the default; base_config maps in the daemon's process), which the kills must find.
    cfg = sandbox_config(tmp_path, sandbox, export={"start": "2026-11-01T00", "lag": "0s", "max_window": "2h",
                                                    "readers": 2})
    cfg["connectors"]["brevo"]["events_batch_size"] = 100
    # Room for the whole backlog: the queue never backs up to where the reader children pause (10 % full),
    # so they are at work when the kills come.
    cfg["batching"]["queue_capacity"] = 200_000
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    rng = random.Random(1234)
    readers: list[int] = []  # reader children of the killed daemons
    # Events Brevo accepted that the killed daemon had not recorded: Brevo has no idempotency key, so a kill
    # between Brevo's answer and the SQLite commit (a few milliseconds per request) is the one way to send
    # an event twice (README, "Limits"). Anything else sent twice is a bug.
    unrecorded: set[str] = set()
    for kill in range(3):
        daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
        await daemon.wait_for_log("daemon.started")
        if kill == 0:
            # The first kill lands while the reader children are at work (reading 6 hours takes about a
            # second, and a fast sink leaves little to re-read later); the others at random moments.
            async with asyncio.timeout(30):
                while not _children(daemon.proc.pid):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(rng.uniform(0, 0.2))
        else:
            await asyncio.sleep(rng.uniform(0.5, 3.0))
        readers.extend(_children(daemon.proc.pid))
        daemon.proc.send_signal(signal.SIGKILL)
        await daemon.wait(10)
        await asyncio.sleep(1.0)  # a request already sent still lands after the simulator's 0.3 s latency
        in_brevo = set(_ids((await sandbox.received())["events"]))
        unrecorded |= {k for k in in_brevo if "events:" + k not in _recorded(tmp_path / "state.db")}
    assert (await sandbox.counts())["events"] < len(expected), "the kills happened mid-backlog"
    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    try:
        await _wait_for_checkpoint(daemon, tmp_path / "state.db")
    finally:
        await _sigterm(daemon)
    counts = _ids((await sandbox.received())["events"])
    assert set(counts) == set(expected), "nothing is missing"
    duplicated = {k for k, n in counts.items() if n > 1}
    print(f"{len(unrecorded)} events accepted but unrecorded at a kill, {len(duplicated)} sent twice")
    assert duplicated <= unrecorded, f"{len(duplicated - unrecorded)} events reached Brevo twice"
    assert max(counts.values()) <= 2
    # SPEC §7: at most the in-flight batches are re-sent: two sink workers × batching.max_items per kill.
    assert len(unrecorded) <= 3 * 2 * cfg["batching"]["max_items"]
    # The reader children of the killed daemons noticed (end of stdin, broken pipe) and exited.
    assert readers, "the kills found reader children at work"
    alive = readers
    try:
        async with asyncio.timeout(10):
            while alive := [pid for pid in alive if Path(f"/proc/{pid}").exists()]:
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"reader children {alive} of the killed daemons still run after 10 s") from None


def _children(pid: int) -> list[int]:
    """Pids of the processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def test_bad_data_is_dead_lettered_and_everything_else_arrives(tmp_path, make_sandbox):
    sandbox = await make_sandbox(rows_per_hour=1000)
    expected = expected_events(**sandbox.data)
    blocked_user = "user-00007"
    await sandbox.post(sandbox.amplitude_control + "/faults", {
        "malformed_line": ["20261101T00"], "truncate_member": ["20261101T01"],
        "not_zip_once": ["20261101T02"], "oversize_event": ["20261101T03"],
    })
    await sandbox.post(sandbox.control + "/faults", {"reject_ext_ids": [blocked_user]})
    cfg = sandbox_config(tmp_path, sandbox, export={"max_window": "1h"})
    cfg_path = write_config(tmp_path / "config.yaml", cfg)

    proc, code = await _backfill(cfg_path)
    assert code == 0, proc.all_output()[-3000:]
    counts = _ids((await sandbox.received())["events"])
    assert max(counts.values()) == 1
    blocked = {k for k, p in expected.items() if p["identifiers"]["ext_id"] == blocked_user}
    assert blocked, "the blocked user has events in the sample"
    assert not (set(counts) & blocked)
    assert set(counts) <= set(expected)
    missing = set(expected) - set(counts) - blocked
    # Only rows after the cut, half-way into hour 01's truncated (last) member, may be missing.
    truncated_hour = set(expected_events(**sandbox.data, only_hour=1))
    assert missing <= truncated_hour
    assert len(missing) < len(truncated_hour) / 2

    listing = await DaemonProcess.start("dlq", "list", "-c", str(cfg_path), env=SANDBOX_ENV)
    assert await listing.wait(30) == 0
    text = "".join(listing.raw)
    assert "malformed JSON line" in text
    assert "truncated or corrupt gzip member" in text
    assert "over Brevo's 50 KB limit" in text
    assert f"contact {blocked_user} cannot receive events" in text
    # Every refused event is listed once (those cut off with hour 01's truncated member were never read).
    assert len(blocked - truncated_hour) <= text.count("cannot receive events") <= len(blocked)
    assert proc.events("export.window.retry"), "the non-zip 200 was retried"

    # Once Brevo accepts the contact again, `dlq replay` delivers its events; bad source data stays listed.
    await sandbox.post(sandbox.control + "/faults", {"reject_ext_ids": []})
    replay = await DaemonProcess.start("dlq", "replay", "--all", "-c", str(cfg_path), env=SANDBOX_ENV)
    assert await replay.wait(60) == 0, replay.all_output()[-2000:]
    out = "".join(replay.raw)
    summary = out.splitlines()[-1]  # "replayed N, refused N, not replayable N"
    listed = text.count("cannot receive events")
    assert summary == f"replayed {listed}, refused 0, not replayable 3", out[-2000:]
    assert out.count("not replayable: ") == 3, "the malformed line, the truncated member, the oversize event"
    counts = _ids((await sandbox.received())["events"])
    replayed = blocked & set(counts)
    assert replayed and max(counts.values()) == 1
    assert len(replayed) == listed
    again = await DaemonProcess.start("dlq", "list", "-c", str(cfg_path), env=SANDBOX_ENV)
    assert await again.wait(30) == 0
    assert "cannot receive events" not in "".join(again.raw), "replayed letters leave the default listing"


async def test_dry_run_sends_nothing_and_records_nothing(tmp_path, sandbox):
    cfg_path = write_config(tmp_path / "config.yaml", sandbox_config(tmp_path, sandbox))
    proc = await DaemonProcess.start("backfill", "-c", str(cfg_path), "--start", "2026-11-01T00",
                                     "--end", "2026-11-01T00", "--dry-run", env=SANDBOX_ENV)
    assert await proc.wait(60) == 0, proc.all_output()[-2000:]
    would = proc.events("brevo.dry_run.event")
    assert len(would) == len(expected_events(only_hour=0))
    assert would[0]["would_send"]["event_name"]
    assert (await sandbox.counts())["events"] == 0
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("SELECT count(*) FROM dedupe").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 0


async def test_reload_renames_later_events_and_sigterm_resumes_without_loss(tmp_path, make_sandbox):
    sandbox = await make_sandbox(rows_per_hour=1000)
    expected = expected_events(**sandbox.data)
    await sandbox.post(sandbox.control + "/faults", {"latency": 0.2})
    cfg = sandbox_config(tmp_path, sandbox, export={"start": "2026-11-01T00", "lag": "0s", "max_window": "1h"},
                         shutdown_timeout="5s")
    cfg["connectors"]["brevo"]["events_batch_size"] = 50
    cfg["batching"] = {"max_items": 100, "max_wait": "100ms", "queue_capacity": 200}
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    await daemon.wait_for_log("brevo.batch.sent", timeout=30)

    renamed = {**cfg["event_mapping"], "Page View": "page_viewed_v2"}
    write_config(cfg_path, {**cfg, "event_mapping": renamed})
    daemon.proc.send_signal(signal.SIGHUP)
    await daemon.wait_for_log("config.reloaded")
    async with asyncio.timeout(60):
        while "page_viewed_v2" not in (await sandbox.counts())["event_names"]:
            await asyncio.sleep(0.3)

    before = (await sandbox.counts())["events"]
    assert before < len(expected), "still mid-backlog"
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.wait(15) == 0
    assert time.monotonic() - started < 5 + 1

    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    try:
        await _wait_for_checkpoint(daemon, tmp_path / "state.db")
    finally:
        await _sigterm(daemon)
    events = (await sandbox.received())["events"]
    counts = _ids(events)
    assert set(counts) == set(expected) and max(counts.values()) == 1
    names = collections.Counter(e["event_name"] for e in events)
    assert names["page_viewed_v2"] > 0 and names["page_viewed"] > 0
    first_v2 = next(i for i, e in enumerate(events) if e["event_name"] == "page_viewed_v2")
    later = events[first_v2 + 200:]
    assert any(e["event_name"] == "page_viewed_v2" for e in later), "page views arrived well after the reload"
    assert all(e["event_name"] != "page_viewed" for e in later), "and they use the new name"


async def test_a_row_fanned_out_to_two_sinks_reaches_both_once_through_kills(tmp_path, make_sandbox):
    """One source, two sinks: the checkpoint never passes an hour until both sinks have every item of it, and
    SIGKILLs at random moments then a restart leave each sink with every item, once (but for the in-flight
    window at a kill, README "Limits")."""
    sandbox = await make_sandbox(rows_per_hour=1000)
    expected = expected_events(**sandbox.data)
    hour_of = {}
    for h in range(6):
        for key in expected_events(**sandbox.data, only_hour=h):
            hour_of[key] = f"20261101T{h:02d}"
    await sandbox.post(sandbox.control + "/faults", {"latency": 0.2})
    cfg = sandbox_config(tmp_path, sandbox, export={"start": "2026-11-01T00", "lag": "0s", "max_window": "2h",
                                                    "readers": 0})
    cfg["connectors"]["brevo"]["events_batch_size"] = 100
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    db = tmp_path / "state.db"
    env = {**os.environ, **SANDBOX_ENV}
    root = str(Path(__file__).resolve().parents[2])

    async def start() -> DaemonProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.e2e.fanout_daemon", str(cfg_path), cwd=root, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return DaemonProcess(proc)

    def split(events):
        originals = _ids([e for e in events if not e["event_name"].startswith("copy_")])
        copies = _ids([e for e in events if e["event_name"].startswith("copy_")])
        return originals, copies

    rng = random.Random(99)
    unrecorded: set[str] = set()
    checkpoints = []
    for kill in range(3):
        daemon = await start()
        await daemon.wait_for_log("daemon.started")
        if kill:  # the later kills come once one more hour is recorded: there is a checkpoint to check below
            async with asyncio.timeout(60):
                while (checkpoint(db) or "") <= (checkpoints[-1] or ""):
                    await asyncio.sleep(0.05)
        await asyncio.sleep(rng.uniform(0.5, 2.5))
        daemon.proc.send_signal(signal.SIGKILL)
        await daemon.wait(10)
        await asyncio.sleep(0.8)  # a request already sent still lands after the simulator's latency
        originals, copies = split((await sandbox.received())["events"])
        recorded = _recorded(db)
        unrecorded |= {"events:" + k for k in originals if "events:" + k not in recorded}
        unrecorded |= {"copy:" + k for k in copies if "copy:" + k not in recorded}
        reached = checkpoint(db)
        checkpoints.append(reached)
        before = {k for k, h in hour_of.items() if h < (reached or "")}
        assert before <= set(originals) and before <= set(copies), \
            f"checkpoint {reached} passed items one of the two sinks had not received"
    originals, copies = split((await sandbox.received())["events"])
    assert len(originals) < len(expected) or len(copies) < len(expected), "the kills happened mid-backlog"
    daemon = await start()
    try:
        await _wait_for_checkpoint(daemon, db)
    finally:
        await _sigterm(daemon)
    originals, copies = split((await sandbox.received())["events"])
    assert set(originals) == set(expected) and set(copies) == set(expected), "both sinks got every item"
    duplicated = {"events:" + k for k, n in originals.items() if n > 1} | {"copy:" + k for k, n in copies.items() if n > 1}
    print(f"checkpoints at the kills {checkpoints}; {len(unrecorded)} accepted but unrecorded, "
          f"{len(duplicated)} sent twice")
    assert duplicated <= unrecorded, f"{len(duplicated - unrecorded)} items reached a sink twice"
    assert max([*originals.values(), *copies.values()]) <= 2
    # SPEC §7: only the requests in flight at a kill: 2 sinks × 2 workers × batching.max_items, per kill.
    assert len(unrecorded) <= 3 * 2 * 2 * cfg["batching"]["max_items"]


async def _queue_depth(port: int) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith('amplitude_brevo_queue_depth{sink="brevo_events"}'):
                return int(float(line.split()[-1]))
    return 0


async def _readyz(port: int) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
        return r.status


async def test_an_export_host_answering_bare_404s_skips_no_hour(tmp_path, sandbox):
    """A proxy or wrong host answering HTML 404s for a while: retried as an outage (readyz failing), never
    taken as empty hours; once it answers properly every hour is read and delivered."""
    expected = expected_events()
    # Its first three export requests (not a number of seconds, part of which the daemon's start would use
    # up): each retried after the source's backoff, 1 s doubling with full jitter, 3.5 s on average in all.
    await sandbox.post(sandbox.amplitude_control + "/faults", {"html_404_requests": 3})
    port = free_port()
    cfg = sandbox_config(tmp_path, sandbox, export={"start": "2026-11-01T00", "lag": "0s"},
                         admin={"listen": f"127.0.0.1:{port}"})
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
    try:
        failed = await daemon.wait_for_log("export.window.failed", timeout=30)
        assert "404" in failed["reason"] and failed["hint"]
        assert await _readyz(port) == 503
        await _wait_for_checkpoint(daemon, tmp_path / "state.db", timeout=90)
        assert await _readyz(port) == 200, "recovered"
        assert len(daemon.events("export.window.failed")) == 3, "each 404 page was retried"
        empty = [e for e in daemon.events("export.window.empty") if e["start"] <= "20261101T05"]
        assert not empty, "no hour with data was taken as empty"
    finally:
        await _sigterm(daemon)
    counts = _ids((await sandbox.received())["events"])
    assert set(counts) == set(expected) and max(counts.values()) == 1


async def test_sigterm_with_a_full_queue_behind_a_slow_brevo_exits_at_once_and_loses_nothing(tmp_path):
    """50,000 events queued behind a 10 request/s Brevo: SIGTERM stops the sink after its requests in flight,
    leaves the queue unacknowledged and exits 0 within 2 s; the next start delivers the rest, once each."""
    sb = await SandboxProcess.start(hours=6, rows_per_hour=12_000)
    try:
        await sb.post(sb.control + "/limits", {"events": {"requests": 10, "per": 1}, "events_batch": {"requests": 10, "per": 1}})
        port = free_port()
        cfg = sandbox_config(tmp_path, sb, export={"start": "2026-11-01T00", "lag": "0s"},
                             admin={"listen": f"127.0.0.1:{port}"}, shutdown_timeout="20s",
                             rate_limits={"brevo_events": {"requests": 10, "per": "1s"},
                                          "brevo_events_batch": {"requests": 10, "per": "1s"}})
        cfg["batching"] = {"max_items": 1000, "max_wait": "200ms", "queue_capacity": 50_000}
        cfg["connectors"]["brevo"]["events_batch_size"] = 1  # single /events: 10 events/s
        cfg_path = write_config(tmp_path / "config.yaml", cfg)
        daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
        await daemon.wait_for_log("daemon.started", timeout=30)
        async with asyncio.timeout(90):
            while await _queue_depth(port) < 49_000:
                assert daemon.proc.returncode is None, daemon.all_output()[-3000:]
                await asyncio.sleep(0.5)
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = await daemon.wait(10)
        took = time.monotonic() - started
        queued = [e.get("queued_items") for e in daemon.events("daemon.stopping")]
        print(f"SIGTERM with {queued} items queued: exit {code} in {took:.2f} s")
        assert code == 0, daemon.all_output()[-3000:]
        assert took < 2, f"exit took {took:.1f} s"
        assert not daemon.events("daemon.shutdown.incomplete"), "nothing was cut off mid-request"
        assert daemon.events("daemon.stopping")[0]["queued_items"] >= 49_000
        first = _ids((await sb.received())["events"])
        assert len(first) < 1000 and max(first.values()) == 1

        await sb.post(sb.control + "/limits", {"events": {"requests": 1000, "per": 1},
                                               "events_batch": {"requests": 1000, "per": 1}})
        cfg["rate_limits"] = {"brevo_events": {"requests": 1000, "per": "1s"},
                              "brevo_events_batch": {"requests": 1000, "per": "1s"}}
        cfg["connectors"]["brevo"]["events_batch_size"] = 500
        write_config(cfg_path, cfg)
        expected = expected_events(rows_per_hour=12_000)
        daemon = await DaemonProcess.start("run", "-c", str(cfg_path), env=SANDBOX_ENV)
        try:
            await _wait_for_checkpoint(daemon, tmp_path / "state.db", timeout=120)
        finally:
            await _sigterm(daemon)
        counts = _ids((await sb.received())["events"])
        assert set(counts) == set(expected), "nothing is missing"
        assert max(counts.values()) == 1, "no event reached Brevo twice"
    finally:
        await sb.stop()
