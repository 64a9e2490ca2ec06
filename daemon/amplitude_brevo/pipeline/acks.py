"""End-to-end acknowledgements: per-source offset trackers and the one writer that records deliveries.

The path of an acknowledgement (STYLE.md, "The delivery spine"):

    source ──Item(token = source position)──► queue per sink ──► sink ──► Acknowledger.settle()
                                                                           ├─ dead letters
                                                                           ├─ OffsetTracker.done()  (every source)
                                                                           └─ one SQLite transaction:
                                                                              dedupe keys + checkpoints moved

A source knows how to read and where it is; a sink knows how to write and what Brevo said; the tracker
alone decides when a position is done — sealed by its source and every item read there resolved in every
sink it fanned out to — and the Acknowledger is the only code that writes checkpoints. The SQL refuses to
move a checkpoint back (state/checkpoints), so however commits interleave, a checkpoint only goes forward.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..state import DeadLetter, StateStore
from .items import AckToken, Item


class _Position:
    __slots__ = ("token", "outstanding", "sealed")

    def __init__(self, token: AckToken) -> None:
        self.token = token
        self.outstanding = 0
        self.sealed = False


class OffsetTracker:
    """The positions of one source still open, in the order the source read them.

    A position is complete when its source has read all of it (`seal`) and every item it produced has
    been resolved in whichever sink it went to (`done`). `advance()` drops complete positions from the
    head and returns the checkpoint value after the last one dropped (`checkpoint_of(position)`: for an
    export hour, the next hour to read), so a checkpoint never passes an unresolved item even when later
    positions finish first. With `record=False` (dry runs) checkpoints move in memory only.
    """

    def __init__(self, name: str, source: str, checkpoint_of: Callable[[Any], str], *, record: bool = True) -> None:
        self.name = name  # the checkpoint's name in the state file, e.g. "export.next_hour"
        self.source = source  # what dead letters name as their source, e.g. "export"
        self.checkpoint_of = checkpoint_of
        self.record = record
        self.closed = False
        self.last_value: str | None = None  # the last checkpoint value advance() returned
        self.on_advance: Callable[[Any], None] | None = None  # called with the last position dropped
        self._positions: OrderedDict[Any, _Position] = OrderedDict()
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"OffsetTracker({self.name!r}, open={len(self._positions)}, outstanding={self.outstanding})"

    def token(self, position: Any) -> AckToken:
        """The token of `position`, opening it (positions must be opened in read order)."""
        entry = self._positions.get(position)
        if entry is None:
            entry = self._positions[position] = _Position(AckToken(self, position))
        return entry.token

    def open(self, position: Any) -> AckToken:
        return self.token(position)

    def add(self, position: Any, count: int = 1) -> None:
        self._entry(position).outstanding += count
        self._outstanding += count
        if count:
            self._idle.clear()

    def seal(self, position: Any) -> None:
        self._entry(position).sealed = True

    def done(self, position: Any, count: int = 1) -> None:
        entry = self._positions.get(position)
        if entry is None or entry.outstanding < count:
            raise AssertionError(f"more acknowledgements than items at {self.name} {position!r}")
        entry.outstanding -= count
        self._outstanding -= count
        if not self._outstanding:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until no item of this source is on its way in any sink."""
        await self._idle.wait()

    def close(self) -> None:
        """The source is gone (its path was switched off): its checkpoint no longer moves."""
        self.closed = True

    @property
    def outstanding(self) -> int:
        return self._outstanding

    @property
    def head(self) -> Any | None:
        """The oldest position still open (the one holding the checkpoint back), if any."""
        return next(iter(self._positions), None)

    def advance(self) -> str | None:
        """Drop complete positions from the head; the new checkpoint value, or None if it did not move."""
        if self.closed:
            return None
        last = None
        positions = self._positions
        while positions:
            position, entry = next(iter(positions.items()))
            if not entry.sealed or entry.outstanding:
                break
            positions.popitem(last=False)
            last = position
        if last is None:
            return None
        self.last_value = self.checkpoint_of(last)
        if self.on_advance is not None:
            self.on_advance(last)
        return self.last_value

    def _entry(self, position: Any) -> _Position:
        entry = self._positions.get(position)
        if entry is None:
            self.token(position)
            entry = self._positions[position]
        return entry


class Acknowledger:
    """The one writer of deliveries and checkpoints, shared by every sink and source of a daemon.

    `dedupe` is the daemon's DedupeRecord (pipeline/dedupe.py): keys recorded here leave its in-flight set
    once their commit is in SQLite, and lookups running meanwhile learn about them.
    """

    def __init__(self, state: StateStore, dedupe: Any, *, metrics: Any = None) -> None:
        self.state = state
        self.dedupe = dedupe
        self.metrics = metrics
        self.dead_letters_total = 0  # recorded by this process (the dlq_size gauge adds it to the start count)
        self.on_dead_letters: Callable[[int], None] | None = None

    async def settle(self, sink: str, items: Sequence[Item], refused: Mapping[int, str] | None = None) -> None:
        """Brevo has answered for `items`: those whose index is in `refused` are dead-lettered with that
        reason, the others delivered. Call it once per item.

        Dead letters are written first: if the process dies between the two writes the items are sent
        again, never lost. Then, with no await in between (commits reach the store's one writer thread in
        the order checkpoints moved), the trackers are told and the dedupe keys and every checkpoint that
        moved are committed in one transaction.
        """
        if refused:
            await self.dead_letter(
                [DeadLetter(source=items[i].token.source, sink=sink, item=items[i].body, reason=reason)
                 for i, reason in sorted(refused.items())]
            )
        keys = [item.key for item in items if item.key is not None]
        moves = self._resolve(items)
        await self.state.commit_delivery(keys, sink=sink, checkpoints=moves)
        self.dedupe.committed(keys)

    def settle_dry(self, sink: str, items: Sequence[Item]) -> None:
        """A dry run's "delivery": in memory only — nothing is recorded, the next real run sends it all."""
        self._resolve(items)
        self.release(items)

    def release(self, items: Sequence[Item]) -> None:
        """Items a sink took but never sent (it stopped first): unacknowledged, and no longer in flight, so
        the next read of their position queues them again."""
        self.dedupe.released([item.key for item in items if item.key is not None])

    async def dead_letter(self, letters: Sequence[DeadLetter], tracker: OffsetTracker | None = None) -> None:
        """Store dead letters (bad source data, refused items) with the checkpoint `tracker` can now move,
        in one transaction: a position whose items are all dead letters is done once they are stored."""
        value = tracker.advance() if tracker is not None else None
        moves = [(tracker.name, value)] if tracker is not None and value is not None and tracker.record else []
        if letters:
            await self.state.add_dead_letters(letters, checkpoints=moves)
            self.dead_letters_total += len(letters)
            if self.on_dead_letters is not None:
                self.on_dead_letters(len(letters))
        elif moves:
            await self.state.set_checkpoint(*moves[0])

    async def checkpoint(self, tracker: OffsetTracker) -> str | None:
        """Move `tracker`'s checkpoint past positions that completed without items (empty or sealed hours);
        the new value, or None if it did not move."""
        value = tracker.advance()
        if value is not None and tracker.record:
            await self.state.set_checkpoint(tracker.name, value)
        return value

    def _resolve(self, items: Iterable[Item]) -> list[tuple[str, str]]:
        """Tell the trackers; the checkpoints that moved (of recording trackers)."""
        touched: dict[int, OffsetTracker] = {}
        # Items come in runs of one position: count a run at once, not item by item.
        run: AckToken | None = None
        count = 0
        for item in items:
            token = item.token
            if token is not run:
                if run is not None:
                    run.tracker.done(run.position, count)
                run, count = token, 0
                touched[id(token.tracker)] = token.tracker
            count += 1
        if run is not None:
            run.tracker.done(run.position, count)
        return self._moves(touched.values())

    @staticmethod
    def _moves(trackers: Iterable[OffsetTracker]) -> list[tuple[str, str]]:
        moves = []
        for tracker in trackers:
            value = tracker.advance()
            if value is not None and tracker.record:
                moves.append((tracker.name, value))
        return moves
