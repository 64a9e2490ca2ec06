"""One writer per state file: the flock on ``<state path>.lock``, against real second processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import amplitude_brevo
from amplitude_brevo.state import DeadLetter, StateError, StateLocked, StateStore, schema

# A second amplitude-brevo process: opens the store (lock=True), writes, says "ready", then waits on stdin.
HOLDER = """
import asyncio, sys
from amplitude_brevo.state import StateStore

async def main():
    async with await StateStore.open(sys.argv[1]) as st:
        await st.set_checkpoint("export.next_hour", "20261101T06")
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print("closed", flush=True)

asyncio.run(main())
"""

Holder = Callable[[Path], Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def holder() -> AsyncIterator[Holder]:
    started: list[asyncio.subprocess.Process] = []
    package_root = str(Path(amplitude_brevo.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}

    async def start(path: Path) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDER, str(path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        started.append(proc)
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while (line := await proc.stdout.readline()) != b"ready\n":  # its own log lines come first
                assert line, f"holder exited with {await proc.wait()} before it was ready"
        return proc

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def finish(proc: asyncio.subprocess.Process) -> bytes:
    """Let the holder close its store and exit; returns the rest of its output."""
    out, _ = await asyncio.wait_for(proc.communicate(b"\n"), 30)
    assert proc.returncode == 0
    return out


def lock_text(path: Path) -> str:
    return Path(f"{path}.lock").read_text()


def file_state(path: Path) -> tuple[bytes, float]:
    return path.read_bytes(), path.stat().st_mtime


async def test_a_second_process_is_refused_naming_the_holder(db_path: Path, holder: Holder) -> None:
    proc = await holder(db_path)
    before = file_state(db_path)

    with pytest.raises(StateLocked) as info:
        await StateStore.open(db_path)
    assert str(info.value) == (
        f"state file {db_path} is in use by another amplitude-brevo process (pid {proc.pid}); "
        f"stop it first, or point state.path elsewhere"
    )
    assert isinstance(info.value, StateError)
    assert (info.value.pid, info.value.path) == (proc.pid, db_path)
    assert file_state(db_path) == before, "the state file is untouched"

    assert b"closed" in await finish(proc)
    async with await StateStore.open(db_path) as st:
        assert await st.get_checkpoint("export.next_hour") == "20261101T06"


async def test_the_lock_is_released_when_the_holder_is_killed(db_path: Path, holder: Holder) -> None:
    proc = await holder(db_path)
    with pytest.raises(StateLocked):
        await StateStore.open(db_path)

    proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL
    assert lock_text(db_path).startswith(f"{proc.pid}\n"), "kill -9 left the content, but not the lock"

    async with await StateStore.open(db_path) as st:
        assert await st.get_checkpoint("export.next_hour") == "20261101T06", "committed before the kill"
        assert lock_text(db_path).startswith(f"{os.getpid()}\n")


async def test_lock_false_reads_and_purges_while_the_holder_runs(db_path: Path, holder: Holder) -> None:
    async with await StateStore.open(db_path) as st:
        await st.add_dead_letters([DeadLetter("export", "brevo_events", b"x", "400 bad")] * 2)
    proc = await holder(db_path)
    held = lock_text(db_path)

    async with await StateStore.open(db_path, lock=False) as st:
        assert await st.checkpoints() == {"export.next_hour": "20261101T06"}
        assert await st.dead_letter_counts() == {"export": 2}
        assert await st.purge_dead_letters(ids=[1]) == 1
    assert lock_text(db_path) == held, "lock=False neither took nor touched the holder's lock"

    await finish(proc)
    async with await StateStore.open(db_path) as st:
        assert await st.dead_letter_counts() == {"export": 1}


async def test_lock_false_does_not_migrate_behind_the_holder(db_path: Path, holder: Holder, monkeypatch) -> None:
    proc = await holder(db_path)
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, ["CREATE TABLE later (x)"]])

    with pytest.raises(StateLocked) as info:
        await StateStore.open(db_path, lock=False)
    assert str(info.value) == (
        f"state file {db_path} needs migrating from schema version 2 to 3, which only its writer may do, "
        f"but it is in use by another amplitude-brevo process (pid {proc.pid}); "
        f"stop it first, or point state.path elsewhere"
    )
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()

    await finish(proc)
    # With nobody holding it, lock=False takes the lock for the migration only.
    async with await StateStore.open(db_path, lock=False) as st:
        assert st.schema_version == 3
        async with await StateStore.open(db_path) as writer:
            assert writer.schema_version == 3


async def test_lock_file_is_private_names_the_holder_and_is_emptied_on_close(db_path: Path) -> None:
    lock = Path(f"{db_path}.lock")
    async with await StateStore.open(db_path):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        pid, description = lock_text(db_path).splitlines()
        assert int(pid) == os.getpid()
        assert description.startswith(f"amplitude-brevo {amplitude_brevo.__version__}, since ")

        # A second writer in the same process is refused too (flock is per open file, not per process).
        with pytest.raises(StateLocked, match=rf"already open for writing in this process \(pid {os.getpid()}\)"):
            await StateStore.open(db_path)
    assert lock_text(db_path) == ""
    assert lock.exists(), "never deleted: another process may have it open"


async def test_a_refused_open_creates_no_state_file(tmp_path: Path, holder: Holder) -> None:
    db_path = tmp_path / "state.db"
    proc = await holder(db_path)
    other = tmp_path / "other.db"
    os.link(f"{db_path}.lock", f"{other}.lock")  # same lock file, no state file yet
    with pytest.raises(StateLocked, match=f"pid {proc.pid}"):
        await StateStore.open(other)
    assert not other.exists()
