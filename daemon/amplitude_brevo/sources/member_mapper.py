"""The reader child: reads, decodes and remaps export members for the daemon (see `export_reader`).

Run as `python -m amplitude_brevo.sources.member_mapper`; it imports only what mapping needs (no asyncio,
no aiohttp), so each child stays small. Frames in both directions: a 4-byte big-endian length, then a
pickle (both ends are this package). A member's chunks come back one frame each, then its end frame:
`END`, followed by the pickled tail chunk when the child has one (what its collectors gathered over the
member, see `map_member`). It exits at the end of its stdin, and with a broken pipe if the daemon is gone.
"""

from __future__ import annotations

import pickle
import queue
import struct
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import msgspec

from ..pipeline.remap import MappingRules, SinkOutput, collectors_for, finish_collectors, row_mapper
from .export_files import LINE_PREFIX_BYTES, Member, OverlongLine, TruncatedMember, is_blank, iter_text_steps

FRAME = struct.Struct("!I")
END = b"E"  # starts a member's end frame (a chunk's frame starts with pickle's PROTO opcode, 0x80)
_END = object()


__all__ = ["END", "FRAME", "MappedChunk", "SinkOutput", "map_member", "rules_args"]


@dataclass(slots=True)
class MappedChunk:
    """What one decompressed step of a member became: for each sink in `rules.sinks`, its outputs."""

    rows: int = 0
    outputs: dict[str, SinkOutput] = field(default_factory=dict)  # by sink name, e.g. "brevo_events"
    # (log event, line number or None, item, reason): bad lines, rejected rows, a truncated member
    letters: list[tuple[str, int | None, dict[str, Any], str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    # The member's tail: what the collecting consumers gathered over every step this reader mapped (no rows).
    tail: bool = False

    def to_wire(self) -> tuple[Any, ...]:
        """Plain lists and dicts for the pipe (cheaper to pickle than the objects); `from_wire` undoes it."""
        outputs = {name: (out.keys, out.bodies) for name, out in self.outputs.items()}
        return self.rows, outputs, self.letters, self.skipped

    @classmethod
    def from_wire(cls, wire: tuple[Any, ...], *, tail: bool = False) -> MappedChunk:
        rows, outputs, letters, skipped = wire
        return cls(rows, {name: SinkOutput(keys, bodies) for name, (keys, bodies) in outputs.items()},
                   letters, skipped, tail)


def rules_args(rules: MappingRules) -> dict[str, Any]:
    """What rebuilds `rules` in the child (the derived fields are computed there)."""
    return {"event_mapping": dict(rules.event_mapping), "property_mapping": dict(rules.property_mapping),
            "ext_id_field": rules.ext_id_field, "email_property": rules.email_property,
            "anonymous": rules.anonymous, "sinks": tuple(rules.sinks), "count_revenue": rules.count_revenue}


def map_member(archive: zipfile.ZipFile, member: Member, rules: MappingRules, *, stride: int = 1,
               offset: int = 0, skip: int = 0, max_line: int | None = None) -> Iterator[MappedChunk]:
    """Read, decode and remap one member: a chunk per decompressed step. Never raises for bad data: a line
    that is not JSON or longer than `max_line` (see `iter_text_steps`), a row remapping refuses or fails
    on, a damaged gzip stream all become dead letters.

    With `stride` n, only the steps whose index is `offset` modulo n are decoded and yielded: n readers
    each inflate the whole member (the steps are the same for all) and map a share of it. The first `skip`
    steps are inflated only (someone else mapped them); line numbers count them all the same.

    Collecting consumers (the profile collector) gather over all the steps this reader maps, and write
    their outputs into one more chunk after the member's last (`tail` set, no rows): one profile snapshot per
    user, reader and member, not per step. Every other chunk is yielded as soon as it is made: none is held
    back waiting to learn whether it is the last. Whoever maps a member from step `skip` on (the reader
    pool, when the children stop mid-member) has not received what the children had collected of the steps
    before: those steps' rows are decoded again here, for the collectors only (what they count and
    dead-letter was counted already).
    """
    decode = rules.row_decoder.decode
    sinks = rules.sinks
    collectors = collectors_for(rules)  # carried over the member: see above
    line_no = 0  # physical lines before this step, blank ones included (what `sed -n Np` would show)
    for index, step in enumerate(_prefetched(iter_text_steps(archive, member, max_line))):
        mine = index >= skip and index % stride == offset
        if type(step) is not bytes:
            if isinstance(step, TruncatedMember):
                if mine:
                    yield MappedChunk(letters=[(
                        "export.member.truncated", None, {"member": member.name, "lines_read": line_no},
                        f"truncated or corrupt gzip member after {line_no} lines: {step}")])
                break
            assert isinstance(step, OverlongLine)
            line_no += 1
            if mine:
                item = {**_line_item(member, line_no, step.prefix), "bytes": step.length}
                yield MappedChunk(rows=1, letters=[(
                    "export.line.too_long", line_no, item,
                    f"line longer than {step.limit} bytes ({step.length} bytes, skipped)")])
            continue
        if not mine:
            # Another reader's step: only counted, never split (unless collected again, see above).
            if index < skip and collectors:
                _collect_again(step, decode, collectors)
            line_no += step.count(b"\n") + (step[-1] != 10)
            continue
        chunk = MappedChunk(outputs={name: SinkOutput() for name in sinks})
        letters = chunk.letters
        # every consumer, on the row decoded once
        map_row = row_mapper(rules, chunk.outputs, chunk.skipped, collectors)
        lines = step.split(b"\n")
        if not lines[-1]:
            lines.pop()  # what follows the step's last newline
        rows = 0
        for line in lines:
            line_no += 1
            if not line or (line[0] <= 32 and is_blank(line)):
                continue
            rows += 1
            try:
                rejected = map_row(decode(line))
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                letters.append(("export.line.malformed", line_no, _line_item(member, line_no, line),
                                f"malformed JSON line: {exc}"))
                continue
            except Exception as exc:  # a bug or a case remapping does not know: that line only
                letters.append(("export.line.failed", line_no, _line_item(member, line_no, line),
                                f"cannot map the line: {type(exc).__name__}: {exc}"))
                continue
            if rejected is not None:
                letters.append(("export.row.rejected", line_no, {**rejected.item, "member": member.name},
                                rejected.reason))
        map_row.finish()
        chunk.rows = rows
        yield chunk
    if any(map(len, collectors.values())):
        tail = MappedChunk(tail=True)
        finish_collectors(collectors, tail.outputs)
        yield tail


def _collect_again(step: bytes, decode: Any, collectors: dict[str, Any]) -> None:
    """Add a step's rows to the collectors only (see `map_member`): what the rows make or fail on otherwise
    was counted by the reader that mapped them."""
    adders = [collector.add for collector in collectors.values()]
    for line in step.split(b"\n"):
        if not line or (line[0] <= 32 and is_blank(line)):
            continue
        try:
            row = decode(line)
            for add in adders:
                add(row)
        except Exception:  # noqa: BLE001, S112 - dead-lettered by the reader that mapped the step
            continue


def _line_item(member: Member, line_no: int, line: bytes) -> dict[str, Any]:
    return {"member": member.name, "line": line_no, "text": line[:LINE_PREFIX_BYTES].decode("utf-8", "replace")}


def _prefetched(steps: Iterator[bytes | OverlongLine]) -> Iterator[bytes | OverlongLine | TruncatedMember]:
    """`steps`, computed one ahead in a thread: isal inflates without the GIL while this thread remaps. A
    TruncatedMember is yielded (after the good lines), not raised. Left early, the thread is stopped."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for step in steps:
                if not hand_over(step):
                    return
        except TruncatedMember as exc:
            hand_over(exc)
        except BaseException as exc:  # noqa: BLE001 - handed over to be raised in the consumer
            hand_over(_Failed(exc))
        hand_over(_END)

    thread = threading.Thread(target=produce, name="export-inflate", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
            if isinstance(item, TruncatedMember):
                break
    finally:
        stop.set()
        thread.join()
        close = getattr(steps, "close", None)
        if close is not None:
            close()


@dataclass(slots=True)
class _Failed:
    error: BaseException


# ---------------------------------------------------------------------------------------------------------
# the child process


def _read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(FRAME.size)
    if len(header) < FRAME.size:
        return None
    (size,) = FRAME.unpack(header)
    return stream.read(size)


def _write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(FRAME.pack(len(data)))
    stream.write(data)


def child_main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    rules_cache: dict[bytes, MappingRules] = {}
    try:
        while (frame := _read_frame(stdin)) is not None:
            path, name, hour, partition, args, stride, offset, max_line = pickle.loads(frame)
            key = pickle.dumps(args)
            rules = rules_cache.get(key)
            if rules is None:
                rules_cache.clear()
                rules = rules_cache[key] = MappingRules(**args)
            with zipfile.ZipFile(path) as archive:
                chunks = map_member(archive, Member(name, hour, partition), rules, stride=stride, offset=offset,
                                    max_line=max_line)
                tail = b""
                for chunk in chunks:
                    wire = pickle.dumps(chunk.to_wire(), protocol=pickle.HIGHEST_PROTOCOL)
                    if chunk.tail:
                        tail = wire  # the member's last chunk: it travels in the end frame
                    else:
                        _write_frame(stdout, wire)
            _write_frame(stdout, END + tail)
            stdout.flush()
    except BrokenPipeError:
        return 0  # the parent is gone
    return 0



if __name__ == "__main__":
    raise SystemExit(child_main())
