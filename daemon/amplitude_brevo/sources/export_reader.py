"""Read, decode and remap export members in child processes, so the daemon's process keeps only dedupe,
queueing and delivery.

Decoding and remapping every line is CPU work for one thread, and in the daemon's process it shares the GIL
with everything else. Reader children (`member_mapper`) do it on the other cores: the daemon sends each one
the member to read (the window's temp file, the member, the mapping rules) on its stdin and reads back
`MappedChunk`s — for each sink, dedupe keys and Brevo bodies; dead letters, counts — one per decompressed
half-megabyte, then an end frame (carrying what the child's collectors gathered over the member). The pipes are the backpressure: a child whose output is not read blocks on its next write.

A member the children fail on (one crashed, was killed) is read again by new children: chunks queued the
first time are then filtered by the dedupe record and the in-flight set.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import zipfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from ..logs import get_logger
from ..pipeline.remap import MappingRules
from . import export_files, member_mapper
from .export_files import Member
from .member_mapper import END, FRAME, MappedChunk, rules_args

log = get_logger("amplitude_export")

# What a reader child is given of the daemon's environment: what the interpreter and the C libraries read,
# nothing else. The daemon's environment holds secrets (API keys expanded into the config, tokens); a child
# reads files and writes pipes, and needs none of them. Every CPython setting is listed by name rather than
# passed as `PYTHON*`, so a variable that merely starts with PYTHON (PYTHON_API_TOKEN) stays behind.
# PYTHONPATH is not among them: it is computed (this package first, then the daemon's).
CHILD_ENVIRONMENT = frozenset({
    "PATH", "HOME", "TZ", "TMPDIR", "LANG", "LANGUAGE",
    "LD_LIBRARY_PATH", "GLIBC_TUNABLES",  # finding libpython / isal's library; allocator tunables
    "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONPLATLIBDIR", "PYTHONNOUSERSITE", "PYTHONUSERBASE",
    "PYTHONOPTIMIZE", "PYTHONDEBUG", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONHASHSEED",
    "PYTHONINTMAXSTRDIGITS", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONCOERCECLOCALE", "PYTHONUNBUFFERED",
    "PYTHONWARNINGS", "PYTHONFAULTHANDLER", "PYTHONTRACEMALLOC", "PYTHONPROFILEIMPORTTIME", "PYTHONMALLOC",
    "PYTHONMALLOCSTATS", "PYTHONDEVMODE", "PYTHONWARNDEFAULTENCODING", "PYTHONNODEBUGRANGES",
    "PYTHONPERFSUPPORT", "PYTHONVERBOSE", "PYTHONCASEOK", "PYTHONEXECUTABLE",
    "PYTHON_CPU_COUNT", "PYTHON_GIL", "PYTHON_FROZEN_MODULES", "PYTHON_PERF_JIT_SUPPORT",
})
CHILD_ENVIRONMENT_PREFIXES = ("LC_", "MALLOC_")  # locale categories; glibc malloc tuning (MALLOC_ARENA_MAX)


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a reader child: the variables of `environ` (default `os.environ`) named in
    CHILD_ENVIRONMENT or starting with a CHILD_ENVIRONMENT_PREFIXES entry, and PYTHONPATH with this package
    first (the child imports `amplitude_brevo` from where the daemon did)."""
    environ = os.environ if environ is None else environ
    env = {name: value for name, value in environ.items()
           if name in CHILD_ENVIRONMENT or name.startswith(CHILD_ENVIRONMENT_PREFIXES)}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, environ.get("PYTHONPATH")) if p)
    return env


# How much of a child's output this process buffers before it stops reading that pipe: a frame (a few hundred
# KiB) arrives whole in a few reads, where asyncio's 64 KiB default paused and resumed the pipe
# several times per frame; at most about twice this waits here per child.
PIPE_BUFFER_LIMIT = 1 << 20


class ReaderFailed(Exception):
    """The reader child ended in the middle of a member (crashed, killed)."""


# The queue being fed this full means Brevo, not reading, is the bottleneck: the children's cores buy nothing,
# so members are mapped in the daemon's process and the children stop (~28 MiB each) until it drains to the
# second threshold. The gap between the two keeps the pool from starting and stopping children at every chunk.
READERS_PAUSE_AT = 0.1
READERS_RESUME_AT = 0.02


class ReaderPool:
    """The daemon's `workers` reader children, started on first use and again after a failure, and the
    policy deciding when members are mapped in this process instead.

    Each member is striped over the children: child k maps the decompressed steps k, k + n, k + 2n, …
    and the parent reads their frames in turn, so chunks arrive in member order, streaming, with no
    buffering beyond the pipes.

    `backlog()` returns (items queued, capacity) of the queue the chunks feed. Once it holds READERS_PAUSE_AT
    of its capacity the pool pauses: the children are stopped and members are mapped here, until it is
    down to READERS_RESUME_AT (asked before each member and after each chunk). `workers` may be changed at
    any time (a reload); it applies from the next member.
    """

    def __init__(self, workers: int = 1, backlog: Callable[[], tuple[int, int]] | None = None) -> None:
        self.workers = workers  # 0: map in this process, with no child (slower: it shares the GIL)
        self.backlog = backlog
        self._paused = False
        self._procs: list[asyncio.subprocess.Process] = []

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    @property
    def paused(self) -> bool:
        """The queue is backed up: members are mapped in this process, the children are stopped."""
        return self._paused

    def in_process(self) -> bool:
        """Whether to map the next step in this process: no workers, or paused by the backlog (which this
        updates, logging `export.readers.paused` and `export.readers.resumed`)."""
        if not self.workers:
            return True
        if self.backlog is None:
            return False
        queued, capacity = self.backlog()
        if not self._paused and queued >= capacity * READERS_PAUSE_AT:
            self._paused = True
            log.info("export.readers.paused", queued=queued, capacity=capacity,
                     reason="the queue is backed up: Brevo is the bottleneck, reading in the daemon's process")
        elif self._paused and queued <= capacity * READERS_RESUME_AT:
            self._paused = False
            log.info("export.readers.resumed", queued=queued, capacity=capacity, readers=self.workers)
        return self._paused

    async def _started(self) -> list[asyncio.subprocess.Process]:
        if len(self._procs) != self.workers or any(proc.returncode is not None for proc in self._procs):
            await self.close()
            env = child_environment()
            for _ in range(self.workers):
                self._procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", member_mapper.__name__, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, env=env, limit=PIPE_BUFFER_LIMIT,
                ))
        return self._procs

    async def map_member(self, path: str | os.PathLike[str], member: Member,
                         rules: MappingRules) -> AsyncIterator[MappedChunk]:
        """The member's chunks, in order. Use with `contextlib.aclosing`: a member left before its end stops
        the children (their remaining frames would be read as the next member's).

        `in_process()` is asked before the member and after each chunk: once it answers True the rest of
        the member is mapped in this process and the children are stopped (started again for a later member
        it answers False).
        """
        procs = []
        if not self.in_process():
            try:
                procs = await self._started()
            except OSError as exc:
                # No child can be started here (a sandbox forbidding exec, …): map in this process, slower.
                log.error("export.reader.unavailable", error=str(exc), fallback="export.readers: 0")
                self.workers = 0
        if not procs:
            await self.close()
            async for chunk in _map_here(path, member, rules):
                yield chunk
            return
        n = len(procs)
        args = rules_args(rules)
        complete = False
        index = 0  # chunks received: the member's steps 0 … index - 1
        try:
            try:
                for k, proc in enumerate(procs):
                    assert proc.stdin is not None
                    job = pickle.dumps((os.fspath(path), member.name, member.hour, member.partition, args, n, k,
                                        export_files.MAX_LINE_BYTES))
                    proc.stdin.write(FRAME.pack(len(job)) + job)
                    await proc.stdin.drain()
                while (tail := _end_frame(data := await _next_frame(procs[index % n]))) is None:
                    yield MappedChunk.from_wire(pickle.loads(data))
                    index += 1
                    if self.in_process():
                        break
                else:
                    # The child whose turn it was has ended; every other one ends now too. Their end frames
                    # carry what each collected over the member (`MappedChunk.tail`).
                    tails = [tail]
                    for k in range(1, n):
                        tail = _end_frame(await _next_frame(procs[(index + k) % n]))
                        if tail is None:
                            raise ReaderFailed(f"export readers disagree on where {member.name} ends")
                        tails.append(tail)
                    complete = True
                    for tail in tails:
                        if tail:
                            yield MappedChunk.from_wire(pickle.loads(tail), tail=True)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                codes = [proc.returncode for proc in procs]
                raise ReaderFailed(f"an export reader (pids {[p.pid for p in procs]}, exit codes {codes}) ended "
                                   f"while reading {member.name}") from exc
        finally:
            if not complete:
                await self.close()
        if not complete:
            async for chunk in _map_here(path, member, rules, skip=index):
                yield chunk

    async def close(self) -> None:
        """Stop the children (idempotent)."""
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        for proc in procs:
            # Reading its stdout to the end (whatever it had sent is dropped) lets asyncio close the pipes.
            await asyncio.shield(proc.communicate())


async def _map_here(path: str | os.PathLike[str], member: Member, rules: MappingRules,
                    skip: int = 0) -> AsyncIterator[MappedChunk]:
    """Map the member (from step `skip`) in the event loop's thread, one chunk between two awaits."""
    with zipfile.ZipFile(path) as archive:
        chunks = member_mapper.map_member(archive, member, rules, skip=skip)
        try:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0)
        finally:
            chunks.close()


async def _next_frame(proc: asyncio.subprocess.Process) -> bytes:
    """The next frame's payload: a chunk, or the member's end frame (see `_end_frame`)."""
    assert proc.stdout is not None
    (size,) = FRAME.unpack(await proc.stdout.readexactly(FRAME.size))
    return await proc.stdout.readexactly(size)


def _end_frame(data: bytes) -> memoryview | None:
    """None for a chunk's frame; for the member's end frame, the pickled tail chunk it carries (empty when
    the child collected nothing)."""
    return memoryview(data)[len(END):] if data[:len(END)] == END else None


