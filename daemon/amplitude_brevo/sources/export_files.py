"""Reading an Export API zip from disk: member by member, line by line, with isal's gzip."""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from isal import isal_zlib

# `<app>/<app>_<YYYY-MM-DD>_<H>#<n>.json.gz` (reference/amplitude-api.md §1): H is not reliably padded.
MEMBER_NAME = re.compile(r"(\d+)_(\d{4}-\d{2}-\d{2})_(\d{1,2})#(\d+)\.json\.gz$")
_READ_SIZE = 1 << 19  # 512 KiB of text per step: a reader child holds a few steps at a time (see bench/)
_GZIP_WBITS = 16 + 15  # a gzip container around a deflate stream
# No row comes near this (a row is ~2 KB; Brevo refuses event properties over 50 KB): a line this long is
# damage (a member missing its newlines), and is skipped rather than held in memory whole.
MAX_LINE_BYTES = 64 << 20
LINE_PREFIX_BYTES = 4096  # what a dead letter keeps of a bad line


@dataclass(frozen=True)
class Member:
    name: str
    hour: datetime | None  # the server-upload hour from the name, when it parses
    partition: int


class TruncatedMember(Exception):
    """A gzip member ended early or is corrupt; the lines before the damage were still yielded."""


@dataclass(slots=True)
class OverlongLine:
    """A step of `iter_text_steps` standing for one line over the limit: its start and its length, newline
    excluded. The line's bytes were skipped, never held."""

    prefix: bytes  # its first LINE_PREFIX_BYTES bytes
    length: int
    limit: int  # the limit it broke


def list_members(archive: zipfile.ZipFile) -> list[Member]:
    """Every `.json.gz` entry, ordered by hour then partition; directories and marker files are ignored."""
    members = []
    for info in archive.infolist():
        if info.is_dir() or not info.filename.endswith(".json.gz"):
            continue
        match = MEMBER_NAME.search(info.filename)
        hour, partition = None, 0
        if match:
            day = datetime.strptime(match.group(2), "%Y-%m-%d").replace(tzinfo=UTC)
            hour = day.replace(hour=int(match.group(3)))
            partition = int(match.group(4))
        members.append(Member(info.filename, hour, partition))
    far = datetime.max.replace(tzinfo=UTC)
    members.sort(key=lambda m: (m.hour or far, m.partition, m.name))
    return members


def iter_lines(archive: zipfile.ZipFile, member: Member) -> Iterator[bytes]:
    """The non-empty lines of one member. Raises TruncatedMember after the last good line on damage."""
    for lines in iter_line_chunks(archive, member):
        yield from lines


def iter_line_chunks(archive: zipfile.ZipFile, member: Member) -> Iterator[list[bytes]]:
    """The non-empty lines of one member, in lists (one per step of `iter_text_steps`): iterating a list is
    cheaper than resuming a generator for every line. Blank (whitespace-only) lines are dropped; others are
    passed as they are, and a line over MAX_LINE_BYTES as its prefix (cut: a decoder refuses it). Raises
    TruncatedMember after the last good line."""
    for step in iter_text_steps(archive, member):
        if type(step) is OverlongLine:
            yield [step.prefix]
            continue
        lines = [line for line in step.split(b"\n") if line and not is_blank(line)]
        if lines:
            yield lines


def is_blank(line: bytes) -> bool:
    """A non-empty line holding only whitespace (a JSON row starts with `{`: the first byte decides)."""
    return line[0] <= 32 and not line.strip()


def iter_text_steps(archive: zipfile.ZipFile, member: Member,
                    max_line: int | None = None) -> Iterator[bytes | OverlongLine]:
    """One member's text in steps of whole lines, about `_READ_SIZE` bytes each: every step ends with a
    newline but the last, which may lack it. A line longer than `max_line` (default MAX_LINE_BYTES) is not
    accumulated: it is skipped to its end and stands as an `OverlongLine` step of its own (one physical
    line). Raises TruncatedMember after the last good step.

    Decompressed with a streaming decompressor, not `IGzipFile`: isal's gzip reader raises EOFError on a
    truncated stream without handing over the data it decoded before the damage, so every good line of
    the member would be lost with it. Output per step is bounded (`_READ_SIZE`) whatever the ratio, and
    concatenated gzip members inside one entry are read one after another. The steps are the same on
    every read of a member: striped reader children count on it.

    Lines shorter than a step are never measured (that would cost every row a length check): with
    `max_line` below `_READ_SIZE` (tests) a line within one decompressed block is passed whatever its size.
    """
    limit = MAX_LINE_BYTES if max_line is None else max_line
    try:
        with archive.open(member.name) as raw:
            decompressor = isal_zlib.decompressobj(_GZIP_WBITS)
            fed = False  # the current gzip stream has received input
            pending: list[bytes] = []  # the start of a line no block has ended yet, in pieces
            pending_size = 0
            skipping: OverlongLine | None = None  # the line over the limit being skipped to its end
            while True:
                data = raw.read(_READ_SIZE)
                if not data:
                    break
                while data:
                    fed = True
                    chunk = decompressor.decompress(data, _READ_SIZE)
                    if decompressor.eof:
                        # One gzip stream ended; whatever follows is the next one (or trailing padding).
                        data = decompressor.unused_data
                        decompressor = isal_zlib.decompressobj(_GZIP_WBITS)
                        fed = False
                        if data and not data.strip(b"\x00"):
                            data = b""
                    else:
                        data = decompressor.unconsumed_tail
                    if not chunk:
                        continue
                    if skipping is not None or pending:
                        end = chunk.find(b"\n")
                        if skipping is None and pending_size + (len(chunk) if end < 0 else end) > limit:
                            start = chunk[:LINE_PREFIX_BYTES if end < 0 else min(end, LINE_PREFIX_BYTES)]
                            skipping = OverlongLine(_head([*pending, start]), pending_size, limit)
                            pending, pending_size = [], 0
                        if skipping is not None:
                            if end < 0:
                                skipping.length += len(chunk)
                                continue
                            skipping.length += end
                            yield skipping
                            skipping = None
                            chunk = chunk[end + 1:]
                            if not chunk:
                                continue
                    cut = chunk.rfind(b"\n") + 1
                    if not cut:
                        pending.append(chunk)  # no line ends in it: a line longer than a step
                        pending_size += len(chunk)
                        continue
                    step = chunk if cut == len(chunk) else chunk[:cut]
                    if pending:
                        pending.append(step)
                        step = b"".join(pending)
                    yield step
                    pending = [chunk[cut:]] if cut < len(chunk) else []
                    pending_size = len(chunk) - cut
            if fed:
                raise EOFError("compressed stream ended before its end-of-stream marker")
            if skipping is not None:
                yield skipping
            elif pending:
                yield b"".join(pending)
    except (EOFError, OSError, zlib.error, isal_zlib.error, zipfile.BadZipFile) as exc:
        raise TruncatedMember(f"{member.name}: {type(exc).__name__}: {exc}") from exc


def _head(pieces: list[bytes]) -> bytes:
    """The first LINE_PREFIX_BYTES bytes of the pieces joined, without joining them all."""
    head = b""
    for piece in pieces:
        head += piece[:LINE_PREFIX_BYTES - len(head)]
        if len(head) >= LINE_PREFIX_BYTES:
            break
    return head


def open_export(path: str | Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)

