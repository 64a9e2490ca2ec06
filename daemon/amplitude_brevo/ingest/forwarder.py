"""Forwarding the spool to Amplitude (`ingest.forward_to_amplitude`, issue 9 item 3).

Reads the spool in order from its own checkpoint (`ingest.forwarded`), so an Amplitude outage delays nothing
on the Brevo side and the other way round. Events go to `connectors.amplitude.ingest_url` + `/batch` (up to
2,000 events and ~16 MB a request: Amplitude's limits are 2,000 and 20 MB) with the project's API key,
unchanged but for `ip`: where an event has none or `"$remote"` it gets the caller's address stored with the
request (Amplitude geolocates from the request's address, which would otherwise be the daemon's). Identify
and Group Identify requests go to `/identify` and `/groupidentify`, one spooled request at a time.

Amplitude's answers are obeyed as `ingest/upstream_answers.py` says; events that wait (a throttled user or
device) hold the checkpoint back until they are delivered, so a restart sends them again: they carry their
`insert_id`, and Amplitude keeps one of each. The checkpoint moves past a spooled request once each of its
events is delivered or dead-lettered.

Metrics: `amplitude_brevo_ingest_forwarded_total{outcome}` (delivered, dead_lettered, throttled: events held
back by a 429, at each 429), Amplitude's answers in `amplitude_brevo_http_responses_total{api="amplitude_ingest"}`,
and the dead letters in `amplitude_brevo_dlq_size` (written here, not through the acknowledger that moves it).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from ..logs import get_logger
from ..metrics import Metrics
from ..retry import Backoff
from ..secrets import Secret
from ..sources.ingest_spool import spool_readers
from ..state.checkpoints import number_key, number_of
from ..state.dead_letters import DeadLetter
from ..state.spool import FORWARDED_CHECKPOINT
from .entries import EVENT_KINDS, decode_entry
from .upstream_answers import judge

log = get_logger("ingest")

CHECKPOINT = FORWARDED_CHECKPOINT
SOURCE = "ingest"
SINK = "amplitude"
MAX_EVENTS = 2000
MAX_BYTES = 16 * 1024 * 1024  # under Amplitude's 20 MB, with room for the envelope
THROTTLE_PAUSE = 30.0  # seconds a throttled user or device waits (reference §2)
READ_AHEAD = 5000  # events read from the spool ahead of what is sent


@dataclass(slots=True)
class _Event:
    spool_id: int
    body: bytes  # the event as it is sent (ip filled in)
    user: Any
    device: Any


class AmplitudeForwarder:
    role = "consumer"
    name = "amplitude_forward"

    def __init__(self, *, state: Any, session: aiohttp.ClientSession, ingest_url: str, api_key: Any,
                 backoff: Backoff | None = None, throttle_pause: float = THROTTLE_PAUSE, poll: float = 0.5,
                 max_events: int = MAX_EVENTS, clock: Callable[[], float] = time.monotonic,
                 release: Sequence[str] = (), bell: Any = None, metrics: Metrics | None = None) -> None:
        self.state = state
        # A registry of its own when the caller has none: counting never needs an `if`.
        self.metrics = metrics = metrics or Metrics()
        self._forwarded = {o: metrics.ingest_forwarded.labels(outcome=o) for o in ("delivered", "dead_lettered",
                                                                                   "throttled")}
        self._answers: dict[int, Any] = {}
        self.release = tuple(release)  # the checkpoints a spool row must be past to be deleted (this one's too)
        self.bell = bell  # ingest/bell.py: rung on each commit of the ingest server
        self.session = session
        self.base_url = ingest_url.rstrip("/")
        self._api_key = api_key  # a Secret: revealed only into the request body
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.throttle_pause = throttle_pause
        self.poll = poll
        self.max_events = max_events
        self.clock = clock
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._pending: deque[_Event] = deque()  # read, not delivered or dead-lettered yet, in spool order
        self._left: dict[int, int] = {}  # spool id → its events still pending
        self._read_through = 0  # the last spool id read
        self._paused: dict[tuple[str, str], float] = {}  # ("user"|"device", id) → clock time it may send again
        self._limit = max_events  # events per request now: halved by a 413, doubled back by each success
        self._written = 0  # the checkpoint as last written
        self.delivered = 0
        self.dead_lettered = 0
        self.requests = 0

    def wake(self) -> None:
        """New entries were spooled."""
        self._wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def _key(self) -> str:
        key = self._api_key
        return key.reveal() if isinstance(key, Secret) else str(key)

    def reload(self, cfg: Any) -> None:
        amp = cfg.connectors.amplitude
        self.base_url = amp.ingest_url.rstrip("/")
        self._api_key = amp.api_key
        if self.release:
            self.release = tuple(spool_readers(cfg))

    async def run(self) -> None:
        if self.bell is not None:
            self.bell.subscribe(self._wake)
        try:
            await self._run()
        finally:
            if self.bell is not None:
                self.bell.unsubscribe(self._wake)
            log.info("ingest.forward.stopped", delivered=self.delivered, dead_lettered=self.dead_lettered,
                     requests=self.requests, checkpoint=self._written)

    async def _run(self) -> None:
        stored = await self.state.get_checkpoint(CHECKPOINT)
        self._read_through = self._written = number_of(stored)
        attempt = 0
        while not self.stopping.is_set():
            await self._read_more()
            batch = self._next_batch()
            if not batch:
                await self._idle()
                continue
            ok = await self._send(batch)
            attempt = 0 if ok else attempt + 1
            if attempt and not await self.backoff.sleep(attempt, stop=self.stopping):
                return

    async def _idle(self) -> None:
        """Wait for new entries, a throttle pause to end, or the poll interval."""
        now = self.clock()
        waits = [until - now for until in self._paused.values() if until > now]
        timeout = min([self.poll, *waits]) if waits else self.poll
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.01, timeout))
        except TimeoutError:
            pass

    async def _read_more(self) -> None:
        """Read spooled requests past what was read, while fewer than READ_AHEAD events are pending."""
        while len(self._pending) < READ_AHEAD and not self.stopping.is_set():
            rows = await self.state.spool_read(self._read_through, 100)
            if not rows:
                return
            for spool_id, _kind, body in rows:
                await self._take(spool_id, body)
                self._read_through = spool_id
            await self._checkpoint()

    async def _take(self, spool_id: int, body: bytes) -> None:
        try:
            entry = decode_entry(body)
        except (ValueError, KeyError, TypeError) as exc:
            await self._dead([(body, f"spool entry {spool_id} cannot be read: {exc}")])
            return
        if entry.kind not in EVENT_KINDS:
            await self._identify(spool_id, entry.kind, entry.items)
            return
        for event in entry.items:
            if event.get("ip") in (None, "$remote"):
                event = {**event, "ip": entry.caller}
            self._pending.append(_Event(spool_id, orjson.dumps(event), event.get("user_id"), event.get("device_id")))
        if entry.items:
            self._left[spool_id] = len(entry.items)

    async def _identify(self, spool_id: int, kind: str, items: list[dict[str, Any]]) -> None:
        """Send one spooled Identify or Group Identify request, retrying until Amplitude takes or refuses it."""
        form = urlencode({"api_key": self._key(), "identification": orjson.dumps(items).decode()})
        attempt = 0
        while not self.stopping.is_set():
            status, body = await self._post(f"/{kind}", form.encode(), "application/x-www-form-urlencoded")
            if status == 200:
                self.delivered += len(items)
                self._forwarded["delivered"].inc(len(items))
                return
            if status in (400, 403, 413):
                reason = f"Amplitude refused the {kind} request: {status} {str(body)[:300]}"
                await self._dead([({"kind": kind, "identification": items, "spool_id": spool_id}, reason)])
                return
            attempt += 1
            if not await self.backoff.sleep(attempt, stop=self.stopping):
                return

    def _next_batch(self) -> list[_Event]:
        """The oldest pending events whose user and device may send, within the request limits."""
        now = self.clock()
        self._paused = {k: until for k, until in self._paused.items() if until > now}
        batch: list[_Event] = []
        size = 0
        for event in self._pending:
            if self._paused and (("user", event.user) in self._paused or ("device", event.device) in self._paused):
                continue
            if len(batch) >= self._limit or size + len(event.body) > MAX_BYTES:
                break
            batch.append(event)
            size += len(event.body) + 1
        return batch

    async def _send(self, batch: list[_Event]) -> bool:
        """Send `batch` and act on the answer; False when it must be retried after a backoff."""
        body = b"".join((b'{"api_key":', orjson.dumps(self._key()), b',"events":[',
                         b",".join(e.body for e in batch), b"]}"))
        status, answer = await self._post("/batch", body, "application/json")
        verdict = judge(batch, [(e.user, e.device) for e in batch], status, answer)
        if verdict.fatal:
            log.error("ingest.forward.refused", error=verdict.fatal)
            return False
        if verdict.backoff:
            if status != 429:
                log.warning("ingest.forward.retry", status=status, events=len(batch))
            return False
        until = self.clock() + self.throttle_pause
        for user in verdict.paused_users:
            self._paused[("user", user)] = until
        for device in verdict.paused_devices:
            self._paused[("device", device)] = until
        for event in verdict.throttled:
            if not self._paused_for(event):
                self._paused[("user", event.user) if event.user else ("device", event.device)] = until
        if verdict.throttled:
            self._forwarded["throttled"].inc(len(verdict.throttled))
            log.info("ingest.forward.throttled", events=len(verdict.throttled), users=len(verdict.paused_users),
                     devices=len(verdict.paused_devices), pause_seconds=self.throttle_pause)
        if verdict.split:
            self._limit = max(1, len(batch) // 2)
            log.info("ingest.forward.split", events=len(batch), now=self._limit)
            for part in verdict.split:
                if not await self._send(part):
                    return False
            return True
        if verdict.delivered:
            self._limit = min(self.max_events, self._limit * 2)
        self.delivered += len(verdict.delivered)
        self._forwarded["delivered"].inc(len(verdict.delivered))
        if verdict.dead:
            await self._dead([(orjson.loads(e.body), reason) for e, reason in verdict.dead])
        self._finish([*verdict.delivered, *(e for e, _ in verdict.dead)])
        await self._checkpoint()
        return True

    def _paused_for(self, event: _Event) -> bool:
        return ("user", event.user) in self._paused or ("device", event.device) in self._paused

    def _finish(self, events: list[_Event]) -> None:
        done = {id(e) for e in events}
        if not done:
            return
        for event in events:
            left = self._left.get(event.spool_id, 0) - 1
            if left <= 0:
                self._left.pop(event.spool_id, None)
            else:
                self._left[event.spool_id] = left
        self._pending = deque(e for e in self._pending if id(e) not in done)

    async def _checkpoint(self) -> None:
        """Move `ingest.forwarded` to the last spool id before the oldest one with events still pending."""
        through = min(self._left) - 1 if self._left else self._read_through
        if through > self._written:
            await self.state.set_checkpoint(CHECKPOINT, number_key(through))
            self._written = through
            if self.release:
                try:
                    await self.state.spool_release(list(self.release))
                except Exception as exc:  # noqa: BLE001 - retried at the next move
                    log.warning("ingest.spool.release_failed", error=str(exc))

    async def _dead(self, letters: list[tuple[Any, str]]) -> None:
        await self.state.add_dead_letters([DeadLetter(source=SOURCE, sink=SINK, item=item, reason=reason)
                                           for item, reason in letters])
        self.dead_lettered += len(letters)
        self._forwarded["dead_lettered"].inc(len(letters))
        self.metrics.dlq_size.inc(len(letters))
        for _, reason in letters[:1]:
            log.warning("ingest.forward.dead_lettered", count=len(letters), first_reason=reason)

    async def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
        self.requests += 1
        try:
            async with self.session.post(self.base_url + path, data=body,
                                         headers={"Content-Type": content_type}) as resp:
                raw = await resp.read()
                self._answered(resp.status)
                try:
                    return resp.status, orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return resp.status, raw.decode("utf-8", "replace")[:300]
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("ingest.forward.unreachable", error=f"{type(exc).__name__}: {exc}"[:300])
            self._answered(0)
            return 0, None

    def _answered(self, status: int) -> None:
        child = self._answers.get(status)
        if child is None:
            child = self._answers[status] = self.metrics.http_responses.labels(
                api="amplitude_ingest", status=str(status) if status else "error")
        child.inc()
