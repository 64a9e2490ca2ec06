"""State start-up benchmark: time to open a ~1 GB state file, and for the whole daemon to reach READY=1.

The target (issue 7): start-up must not grow with the state file — at most 2 s to READY with a 1 GB file.

What it does (`python bench/state_startup.py [--size-mb 1024] [--repeat 3] [--src DIR]`):

1. Builds a state file of about `--size-mb` once and caches it under /tmp/amplitude-brevo-bench/: the schema
   by `StateStore.open`, then bulk inserts on a plain connection in big transactions (journal off while
   building, WAL switched on at the end, as the daemon leaves it): dedupe rows with realistic 40-byte keys
   (`events:` + 33 random hex digits) in delivery-time order, and one dead letter (a ~1.5 KB event) per
   50 of them. Prints how long building took.
2. (a) `StateStore.open` + `close` in this process, `--repeat` times, warm (file in the page cache) and
   cold (its pages dropped first with posix_fadvise(DONTNEED), as after a reboot or on a busy host).
3. (b) the whole process, `python -m amplitude_brevo run -c <config>`, from spawn to the READY=1 datagram
   on a unix socket given as NOTIFY_SOCKET, then SIGTERM and its exit: with the big file (warm and cold) and,
   for reference, with a new empty state file (interpreter, imports, config: what no state file can save).
   The config has `connectors.amplitude.enabled: false` and ingest off, admin on 127.0.0.1:0, dummy keys.
4. For reference: what a full `PRAGMA quick_check` of the file costs (the old open-time check), and
   `StateStore.dedupe_count()`.

`--src DIR` imports amplitude_brevo from another checkout's `daemon/` (e.g. to compare before and after a
change); the daemon child gets the same `PYTHONPATH`. `--check` exits 1 when the 2 s target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "amplitude-brevo-bench"
CACHE_VERSION = 1  # bump when the generated data changes shape
TARGET_S = 2.0
MB = 1_000_000
CHUNK = 200_000  # dedupe rows per transaction while building
LETTER_EVERY = 50
SECRETS = {
    "AMPLITUDE_API_KEY": "bench-amplitude-key",
    "AMPLITUDE_SECRET_KEY": "bench-amplitude-secret",
    "BREVO_API_KEY": "xkeysib-bench-0000",
}


def quiet_logs() -> None:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# ---------------------------------------------------------------------------------------------------------
# building the file


def build(path: Path, size_mb: int) -> float:
    """Build the state file at `path` (via a temp name, so an interrupted build is never reused)."""
    import orjson

    from amplitude_brevo.state import StateStore

    tmp = path.with_name(path.name + ".building")
    for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}.lock")):
        stale.unlink(missing_ok=True)
    started = time.monotonic()

    async def create() -> None:
        store = await StateStore.open(tmp)
        await store.close()

    asyncio.run(create())
    Path(f"{tmp}.lock").unlink(missing_ok=True)

    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")  # one writer, rebuilt from scratch if interrupted
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    properties = {f"prop_{i}": "x" * 24 for i in range(40)}
    delivered_at = 1_700_000_000.0
    n = 0
    while conn.execute("PRAGMA page_count").fetchone()[0] * page_size < size_mb * MB:
        conn.execute("BEGIN")
        rows = []
        for _ in range(CHUNK):
            rows.append((f"events:{os.urandom(17).hex()[:33]}", "brevo_events", delivered_at + n * 0.01))
            n += 1
        conn.executemany("INSERT INTO dedupe (key, sink, delivered_at) VALUES (?, ?, ?)", rows)
        letters = [
            (
                "export",
                "brevo_events",
                orjson.dumps({"event_type": "Purchase", "insert_id": key, "event_properties": properties}),
                "400 invalid_parameter: identifiers.email_id is not a valid email",
                at,
            )
            for key, _, at in rows[::LETTER_EVERY]
        ]
        conn.executemany(
            "INSERT INTO dead_letters (source, sink, item, reason, created_at) VALUES (?, ?, ?, ?, ?)", letters
        )
        conn.execute(
            "INSERT INTO checkpoints (name, value, updated_at) VALUES ('export.next_hour', '20261101T06', 0) "
            "ON CONFLICT (name) DO NOTHING"
        )
        conn.execute("COMMIT")
        if sys.stdout.isatty():
            print(f"  {n:,} dedupe rows, {os.path.getsize(tmp) / MB:,.0f} MB", end="\r", flush=True)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    seconds = time.monotonic() - started
    if sys.stdout.isatty():
        print(" " * 60, end="\r")
    return seconds


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages only: flushed first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------
# (a) StateStore.open + close


def time_open_close(path: Path, cold: bool) -> float:
    from amplitude_brevo.state import StateStore

    async def once() -> float:
        started = time.perf_counter()
        store = await StateStore.open(path)
        await store.close()
        return time.perf_counter() - started

    if cold:
        evict(path)
    return asyncio.run(once())


# ---------------------------------------------------------------------------------------------------------
# (b) the whole daemon process to READY=1


def write_config(directory: Path, state_path: Path) -> Path:
    import yaml

    cfg = {
        "connectors": {
            "amplitude": {"enabled": False, "api_key": "${AMPLITUDE_API_KEY}", "secret_key": "${AMPLITUDE_SECRET_KEY}"},
            "brevo": {"api_key": "${BREVO_API_KEY}", "api_url": "http://127.0.0.1:9/v3"},
        },
        "ingest": {"enabled": False},
        "admin": {"listen": "127.0.0.1:0"},
        "state": {"path": str(state_path)},
        "shutdown_timeout": "5s",
        "logging": {"level": "info", "format": "json"},
    }
    path = directory / f"config-{state_path.stem}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


async def time_daemon(config: Path, src: Path, work: Path, cold_file: Path | None) -> tuple[float, float]:
    """(seconds from spawn to READY=1, seconds from SIGTERM to exit)."""
    sock_path = work / "notify.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    env = {**os.environ, **SECRETS, "NOTIFY_SOCKET": str(sock_path), "PYTHONPATH": str(src)}
    env.pop("WATCHDOG_USEC", None)
    loop = asyncio.get_running_loop()
    if cold_file is not None:
        evict(cold_file)
    log = work / f"daemon-{config.stem}.log"
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "amplitude_brevo", "run", "-c", str(config), stdout=out, stderr=out, env=env
        )
        try:
            async with asyncio.timeout(60):
                while True:
                    receive = asyncio.ensure_future(loop.sock_recv(sock, 65536))
                    exited = asyncio.ensure_future(proc.wait())
                    done, _ = await asyncio.wait({receive, exited}, return_when=asyncio.FIRST_COMPLETED)
                    if receive not in done:
                        receive.cancel()
                        raise RuntimeError(f"daemon exited with {proc.returncode} before READY=1; see {log}")
                    exited.cancel()
                    if "READY=1" in receive.result().decode().split("\n"):
                        ready = time.perf_counter() - started
                        break
            stopping = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
            stopped = time.perf_counter() - stopping
            if code != 0:
                raise RuntimeError(f"daemon exited with {code} after SIGTERM; see {log}")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            sock.close()
    return ready, stopped


# ---------------------------------------------------------------------------------------------------------
# reference figures


def time_full_quick_check(path: Path) -> tuple[float, str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        started = time.perf_counter()
        result = conn.execute("PRAGMA quick_check(5)").fetchone()[0]
        return time.perf_counter() - started, result
    finally:
        conn.close()


def time_dedupe_count(path: Path, cold: bool) -> tuple[float, int] | None:
    from amplitude_brevo.state import StateStore

    if not hasattr(StateStore, "dedupe_count"):
        return None

    async def go() -> tuple[float, int]:
        async with await StateStore.open(path) as store:
            if cold:
                evict(path)
            started = time.perf_counter()
            count = await store.dedupe_count()
            return time.perf_counter() - started, count

    return asyncio.run(go())


# ---------------------------------------------------------------------------------------------------------


def figures(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} s, max {max(values):.3f} s  ({', '.join(f'{v:.3f}' for v in values)})"


def verdict(values: list[float]) -> str:
    return "within" if max(values) <= TARGET_S else "OVER"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="state file size to build (default 1024 MB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--src", type=Path, default=ROOT / "daemon",
                        help="import amplitude_brevo from this directory (default: this checkout's daemon/)")
    parser.add_argument("--rebuild", action="store_true", help="build the state file again")
    parser.add_argument("--check", action="store_true", help="exit 1 if the 2 s target is missed")
    args = parser.parse_args(argv)
    src = args.src.resolve()
    sys.path.insert(0, str(src))
    quiet_logs()
    import amplitude_brevo

    CACHE.mkdir(parents=True, exist_ok=True)
    state = CACHE / f"state-{args.size_mb}mb-v{CACHE_VERSION}.db"
    if args.rebuild or not state.exists():
        print(f"building a {args.size_mb:,} MB state file at {state} (cached for later runs) ...", flush=True)
        print(f"  built in {build(state, args.size_mb):.1f} s", flush=True)
    size = state.stat().st_size
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    dedupe_rows = conn.execute("SELECT max(rowid) FROM dead_letters").fetchone()[0] * LETTER_EVERY
    conn.close()

    print(f"code            amplitude_brevo from {Path(amplitude_brevo.__file__).parent}")
    print(f"state file      {state}: {size / MB:,.0f} MB (~{dedupe_rows:,} dedupe rows, "
          f"{dedupe_rows // LETTER_EVERY:,} dead letters)")

    warm = [time_open_close(state, cold=False) for _ in range(args.repeat)]
    cold = [time_open_close(state, cold=True) for _ in range(args.repeat)]
    print(f"(a) open+close  warm: {figures(warm)}")
    print(f"                cold: {figures(cold)}")

    work = Path(tempfile.mkdtemp(prefix="state-startup-", dir=CACHE))
    empty_state = work / "empty.db"
    big_config = write_config(work, state)
    empty_config = write_config(work, empty_state)

    async def processes() -> dict[str, list[tuple[float, float]]]:
        runs: dict[str, list[tuple[float, float]]] = {"empty": [], "warm": [], "cold": []}
        for _ in range(args.repeat):
            runs["empty"].append(await time_daemon(empty_config, src, work, None))
            runs["warm"].append(await time_daemon(big_config, src, work, None))
            runs["cold"].append(await time_daemon(big_config, src, work, state))
        return runs

    runs = asyncio.run(processes())
    shutil.rmtree(work)  # kept only when a run failed: the daemon's log is in it
    ready = {name: [r for r, _ in values] for name, values in runs.items()}
    stop = {name: [s for _, s in values] for name, values in runs.items()}
    print(f"(b) to READY=1  1 GB warm: {figures(ready['warm'])}")
    print(f"                1 GB cold: {figures(ready['cold'])}")
    print(f"                new empty state file: {figures(ready['empty'])}")
    print(f"    SIGTERM->exit  1 GB warm {statistics.median(stop['warm']):.3f} s, "
          f"cold {statistics.median(stop['cold']):.3f} s, empty {statistics.median(stop['empty']):.3f} s (medians)")

    evict(state)
    check_cold, result = time_full_quick_check(state)
    check_warm, _ = time_full_quick_check(state)
    print(f"reference       full PRAGMA quick_check(5) (the old open-time check): cold {check_cold:.2f} s, "
          f"warm {check_warm:.2f} s ({result})")
    counted_cold, counted_warm = time_dedupe_count(state, cold=True), time_dedupe_count(state, cold=False)
    if counted_cold is not None and counted_warm is not None:
        print(f"                StateStore.dedupe_count(): {counted_warm[1]:,} keys in {counted_cold[0]:.3f} s cold, "
              f"{counted_warm[0]:.3f} s warm")

    worst = max(ready["warm"] + ready["cold"])
    print(f"target          READY=1 within {TARGET_S:.0f} s with a {size / MB:,.0f} MB state file: "
          f"{verdict(ready['warm'] + ready['cold'])} (worst {worst:.3f} s; "
          f"open+close worst {max(warm + cold):.3f} s)")
    return 1 if args.check and worst > TARGET_S else 0


if __name__ == "__main__":
    sys.exit(main())
