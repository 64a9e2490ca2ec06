"""Read, decode and remap export members in child processes, so the daemon's process keeps only dedupe,
queueing and delivery.

Decoding and remapping every line is CPU work for one thread, and in the daemon's process it shares the GIL
with everything else. Reader children (`member_mapper`) do it on the other cores: the daemon sends each one
the member to read (the window's temp file, the member, the mapping rules) on its stdin and reads back
`MappedChunk`s — dedupe keys and Brevo bodies, dead letters, counts — one per decompressed megabyte, then an
empty frame. The pipes are the backpressure: a child whose output is not read blocks on its next write.

A member the children fail on (one crashed, was killed) is read again by new children: chunks queued the
first time are then filtered by the dedupe record and the in-flight set.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ..logs import get_logger
from ..pipeline.remap import MappingRules
from . import member_mapper
from .export_files import Member
from .member_mapper import FRAME, MappedChunk, SinkOutput, rules_args

log = get_logger("amplitude_export")


class ReaderFailed(Exception):
    """The reader child ended in the middle of a member (crashed, killed)."""


# The queue this full means Brevo, not reading, is the bottleneck: the children's cores buy nothing, so
# members are mapped in the daemon's process and the children stop (~30 MiB each) until it drains to the second.
READERS_PAUSE_AT = 0.1
READERS_RESUME_AT = 0.02


class ReaderPool:
    """The parent's handle on `workers` reader children, started on first use and again after a failure.

    Each member is striped over the children: child k maps the decompressed steps k, k + n, k + 2n, …
    and the parent reads their frames in turn, so chunks arrive in member order, streaming, with no
    buffering beyond the pipes. `backlog()` gives (items queued, capacity) of the queue being fed: while it
    is backed up the pool pauses its children (see READERS_PAUSE_AT) and maps in this process.
    """

    def __init__(self, workers: int = 1, backlog: Callable[[], tuple[int, int]] | None = None) -> None:
        self.workers = workers  # 0: map in this process, with no child (slower: it shares the GIL)
        self.backlog = backlog
        self.paused = False
        self._procs: list[asyncio.subprocess.Process] = []

    def _map_in_process(self) -> bool:
        """Whether to map in this process rather than in the children: while the queue is backed up."""
        if not self.workers:
            return True
        if self.backlog is None:
            return False
        depth, capacity = self.backlog()
        if not self.paused and depth >= capacity * READERS_PAUSE_AT:
            self.paused = True
            log.info("export.readers.paused", queued=depth, capacity=capacity,
                     reason="the queue is backed up: Brevo is the bottleneck, reading in the daemon's process")
        elif self.paused and depth <= capacity * READERS_RESUME_AT:
            self.paused = False
            log.info("export.readers.resumed", queued=depth, capacity=capacity, readers=self.workers)
        return self.paused

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    async def _started(self) -> list[asyncio.subprocess.Process]:
        if len(self._procs) != self.workers or any(proc.returncode is not None for proc in self._procs):
            await self.close()
            package_root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
            for _ in range(self.workers):
                self._procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", member_mapper.__name__, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, env=env,
                ))
        return self._procs

    async def map_member(self, path: str | os.PathLike[str], member: Member,
                         rules: MappingRules) -> AsyncIterator[MappedChunk]:
        """The member's chunks, in order. Use with `contextlib.aclosing`: a member left before its end stops
        the children (their remaining frames would be read as the next member's).

        The pause policy is asked before the member and after each chunk: paused, the rest of the member is
        mapped in this process and the children stop (they are started again for a later member).
        """
        in_process = self._map_in_process
        procs = []
        if self.workers and not in_process():
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
                    job = pickle.dumps((os.fspath(path), member.name, member.hour, member.partition, args, n, k))
                    proc.stdin.write(FRAME.pack(len(job)) + job)
                    await proc.stdin.drain()
                while (data := await _next_frame(procs[index % n])) is not None:
                    rows, outputs, letters, skipped = pickle.loads(data)
                    yield MappedChunk(rows, {sink: SinkOutput(*out) for sink, out in outputs.items()}, letters, skipped)
                    index += 1
                    if in_process():
                        break
                else:
                    # The child whose turn it was has ended; every other one ends now too.
                    for k in range(1, n):
                        if await _next_frame(procs[(index + k) % n]) is not None:
                            raise ReaderFailed(f"export readers disagree on where {member.name} ends")
                    complete = True
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


async def _next_frame(proc: asyncio.subprocess.Process) -> bytes | None:
    """The next frame's payload, or None for the end-of-member frame."""
    assert proc.stdout is not None
    (size,) = FRAME.unpack(await proc.stdout.readexactly(FRAME.size))
    return await proc.stdout.readexactly(size) if size else None


