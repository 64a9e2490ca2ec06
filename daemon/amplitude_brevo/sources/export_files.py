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
_READ_SIZE = 1 << 20
_GZIP_WBITS = 16 + 15  # a gzip container around a deflate stream


@dataclass(frozen=True)
class Member:
    name: str
    hour: datetime | None  # the server-upload hour from the name, when it parses
    partition: int


class TruncatedMember(Exception):
    """A gzip member ended early or is corrupt; the lines before the damage were still yielded."""


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
    passed as they are. Raises TruncatedMember after the last good line."""
    for step in iter_text_steps(archive, member):
        lines = [line for line in step.split(b"\n") if line and not is_blank(line)]
        if lines:
            yield lines


def is_blank(line: bytes) -> bool:
    """A non-empty line holding only whitespace (a JSON row starts with `{`: the first byte decides)."""
    return line[0] <= 32 and not line.strip()


def iter_text_steps(archive: zipfile.ZipFile, member: Member) -> Iterator[bytes]:
    """One member's text in steps of whole lines, about `_READ_SIZE` bytes each: every step ends with a
    newline but the last, which may lack it. Raises TruncatedMember after the last good step.

    Decompressed with a streaming decompressor, not `IGzipFile`: isal's gzip reader raises EOFError on a
    truncated stream without handing over the data it decoded before the damage, so every good line of
    the member would be lost with it. Output per step is bounded (`_READ_SIZE`) whatever the ratio, and
    concatenated gzip members inside one entry are read one after another. The steps are the same on
    every read of a member: striped reader children count on it.
    """
    try:
        with archive.open(member.name) as raw:
            decompressor = isal_zlib.decompressobj(_GZIP_WBITS)
            fed = False  # the current gzip stream has received input
            pending = b""
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
                    if chunk:
                        cut = chunk.rfind(b"\n") + 1
                        if not cut:
                            pending += chunk  # no line ends in it: a line longer than a step
                            continue
                        step = chunk if cut == len(chunk) else chunk[:cut]
                        yield pending + step if pending else step
                        pending = chunk[cut:]
            if fed:
                raise EOFError("compressed stream ended before its end-of-stream marker")
            if pending:
                yield pending
    except (EOFError, OSError, zlib.error, isal_zlib.error, zipfile.BadZipFile) as exc:
        raise TruncatedMember(f"{member.name}: {type(exc).__name__}: {exc}") from exc


def open_export(path: str | Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)

