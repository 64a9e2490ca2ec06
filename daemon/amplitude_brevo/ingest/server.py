"""The ingest endpoint: an aiohttp application answering like Amplitude's HTTP V2, Batch, Identify and Group
Identify APIs, whose 200 means "committed to the spool" (SPEC §6, issue 9 items 1-2).

Per request: the caller's connection address is checked against ``allow_from`` (403 otherwise, logged); the
body is read within 20 MiB, inflating gzip within the same bound (413 over it); :mod:`~.protocol` validates
it and the key (400/413 with Amplitude's bodies); a full spool answers 429 in Amplitude's throttle shape;
otherwise the validated items, the caller's address and the receive time are appended through the
:class:`~amplitude_brevo.state.spool.SpoolWriter` (group commit) and the 200 is sent only once that commit
is durable. A commit that fails answers 503, which every Amplitude SDK retries.

API keys are compared in constant time (:class:`~.api_keys.KeyRing`) and never logged: a log line names a
key by its 8-hex fingerprint at most.

Metrics (:class:`IngestMeters`): every answer of the four endpoints by endpoint and status, each refusal by
reason, events by outcome (counted with the request's item count, never per event), the latency of each 200;
the spool's size at each scrape (:meth:`IngestService.collect_metrics`, from the writer's in-memory totals).

The daemon runs it as the `ingest_listener` component (`ingest/listener.py`); forwarding to Amplitude
(`ingest/forwarder.py`) and feeding Brevo (`sources/ingest_spool.py`) read the spool.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
import structlog
from aiohttp import web

from amplitude_brevo.config.service import Ingest
from amplitude_brevo.ingest import protocol
from amplitude_brevo.ingest.api_keys import KeyRing
from amplitude_brevo.ingest.bodies import BadBody, BodyTooLarge, read_body
from amplitude_brevo.ingest.callers import CallerPolicy
from amplitude_brevo.ingest.entries import encode_entry
from amplitude_brevo.ingest.protocol import Accepted, Answer
from amplitude_brevo.metrics import Metrics
from amplitude_brevo.state.base import StateError
from amplitude_brevo.state.spool import IngestSpool, SpoolEntry, SpoolLimits, SpoolWriter

log = structlog.get_logger("amplitude_brevo.ingest")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ENDPOINTS = {"/2/httpapi": "httpapi", "/batch": "batch", "/identify": "identify", "/groupidentify": "groupidentify"}
# Why a request was refused (amplitude_brevo_ingest_refused_requests_total{reason}).
REFUSALS = ("forbidden", "too_large", "malformed", "missing_field", "invalid_api_key", "invalid_events",
            "spool_full", "spool_error")
# What became of the events of a request (amplitude_brevo_ingest_events_total{outcome}): the event-level
# 400's categories count the events it names, each once, in this order.
_EVENT_PROBLEMS = (("events_with_invalid_fields", "invalid"), ("events_with_missing_fields", "missing_field"),
                   ("events_with_invalid_id_lengths", "invalid_id_length"))
OUTCOMES = ("accepted", *(outcome for _, outcome in _EVENT_PROBLEMS), "spool_full", "spool_error")


class IngestMeters:
    """The endpoint's metrics, their label children made once: each request costs a few dict lookups and
    increments by its item count, whatever its size (the hot path is ~200 requests/s of 100 events)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._answers: dict[tuple[str, int], Any] = {}
        self._refused = {reason: metrics.ingest_refused.labels(reason=reason) for reason in REFUSALS}
        self._events = {outcome: metrics.ingest_events.labels(outcome=outcome) for outcome in OUTCOMES}

    def answered(self, endpoint: str, status: int, seconds: float) -> None:
        child = self._answers.get((endpoint, status))
        if child is None:
            child = self._answers[endpoint, status] = self.metrics.ingest_requests.labels(endpoint, str(status))
        child.inc()
        if status == 200:
            self.metrics.ingest_latency.observe(seconds)

    def events(self, outcome: str, count: int) -> None:
        self._events[outcome].inc(count)

    def spool_refused(self, reason: str, items: int) -> None:
        """A valid request the spool could not take (``spool_full``, ``spool_error``), with its items."""
        self._refused[reason].inc()
        self._events[reason].inc(items)

    def refused(self, answer: Answer) -> None:
        """Count a refusal by its reason, read from the answer; an event-level 400 also counts the events it
        names (an SDK drops those and resends the rest, which are counted when they come back)."""
        body = answer.body if isinstance(answer.body, dict) else {}
        if answer.status == 403:
            reason = "forbidden"
        elif answer.status == 413:
            reason = "too_large"
        elif "missing_field" in body:
            reason = "missing_field"
        elif str(body.get("error", "")).startswith(protocol.INVALID_API_KEY):
            reason = "invalid_api_key"
        elif any(name in body for name, _ in _EVENT_PROBLEMS):
            reason = "invalid_events"
            counted: set[int] = set()
            for name, outcome in _EVENT_PROBLEMS:
                named = set().union(*body.get(name, {}).values()) - counted
                if named:
                    self._events[outcome].inc(len(named))
                    counted |= named
        else:
            reason = "malformed"
        self._refused[reason].inc()


class IngestService:
    """What the handlers share: the keys, the caller policy, the spool writer, the clock."""

    def __init__(
        self,
        cfg: Ingest,
        spool: IngestSpool,
        *,
        limits: SpoolLimits | None = None,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.spool_store = spool
        # A registry of its own when the caller has none: counting never needs an `if`.
        self.meters = IngestMeters(metrics or Metrics())
        self.keys = KeyRing(cfg.api_keys)
        self.callers = CallerPolicy(cfg.allow_from, cfg.trusted_proxies)
        self.writer = SpoolWriter(spool, limits)
        self.clock = clock
        self.on_commit = on_commit  # the spool's readers' wake-up (ingest/bell.py)
        self._full = False  # the spool was full at the last check: log the change, not every refusal
        self.refused_full_total = 0

    async def spool(self, request: web.Request, accepted: Accepted, received_at: float) -> Answer:
        try:
            return await self._spool(request, accepted, received_at)
        except StateError as exc:
            log.error("ingest.spool.append_failed", endpoint=accepted.kind, error=str(exc))
            self.meters.spool_refused("spool_error", len(accepted.items))
            return protocol.unavailable()

    async def _spool(self, request: web.Request, accepted: Accepted, received_at: float) -> Answer:
        if await self.writer.full():
            self.refused_full_total += 1
            self.meters.spool_refused("spool_full", len(accepted.items))
            if not self._full:
                self._full = True
                log.warning("ingest.spool.full", endpoint=accepted.kind, limits=_limits(self.writer.limits))
            log.info("ingest.request.throttled", endpoint=accepted.kind, items=len(accepted.items),
                     refused_total=self.refused_full_total)
            return protocol.throttled(len(accepted.items))
        if self._full:
            self._full = False
            log.info("ingest.spool.has_room", refused_total=self.refused_full_total)
        caller = self.callers.caller(request.remote, request.headers.get("X-Forwarded-For"))
        body = encode_entry(accepted, caller=caller, received_at_ms=int(received_at * 1000))
        await self.writer.append(SpoolEntry(accepted.kind, body, received_at))
        self.meters.events("accepted", len(accepted.items))
        if self.on_commit is not None:
            self.on_commit()
        return protocol.success(accepted, int(self.clock() * 1000))

    def collect_metrics(self) -> None:
        """At each /metrics scrape: the spool's size as the last commit or release left it (no SQL)."""
        size = self.spool_store.spool_size_known()
        if size is not None:
            self.meters.metrics.ingest_spool_rows.set(size.rows)
            self.meters.metrics.ingest_spool_bytes.set(size.bytes)

    def reload(self, cfg: Ingest, limits: SpoolLimits | None = None) -> None:
        """Keys rotate and `allow_from` / `trusted_proxies` change with a reload (the listen address does not)."""
        self.keys = KeyRing(cfg.api_keys)
        self.callers = CallerPolicy(cfg.allow_from, cfg.trusted_proxies)
        if limits is not None:
            self.writer.limits = limits


SERVICE = web.AppKey("ingest_service", IngestService)


def make_ingest_app(
    cfg: Ingest,
    spool: IngestSpool,
    *,
    limits: SpoolLimits | None = None,
    clock: Callable[[], float] = time.time,
    on_commit: Callable[[], None] | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """The ingest application over ``spool`` (a :class:`~amplitude_brevo.state.StateStore`).

    ``limits`` bounds the spool (429 beyond it). On cleanup the spool writer finishes the commits it has
    queued; the store itself is the caller's to close, after the application. ``metrics``: the daemon's
    (a registry of the application's own without).
    """
    service = IngestService(cfg, spool, limits=limits, clock=clock, on_commit=on_commit, metrics=metrics)
    # client_max_size bounds request.post() (multipart Identify); other bodies are read by read_body().
    app = web.Application(middlewares=[_count, _allow_from], client_max_size=protocol.MAX_BODY_BYTES + 1)
    app[SERVICE] = service
    app.router.add_post("/2/httpapi", _events("httpapi"))
    app.router.add_post("/batch", _events("batch"))
    for path, group in (("/identify", False), ("/groupidentify", True)):
        app.router.add_post(path, _identify(group))
        app.router.add_get(path, _identify(group))
    app.router.add_get("/healthz", _healthz)

    async def finish_commits(_: web.Application) -> None:
        await service.writer.close()

    app.on_cleanup.append(finish_commits)
    return app


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the answer of each request to an ingest endpoint, and time its 200."""
    endpoint = ENDPOINTS.get(request.path)
    if endpoint is None:
        return await handler(request)
    meters = request.app[SERVICE].meters
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # aiohttp's own answers: 405, a multipart body over client_max_size ...
        meters.answered(endpoint, exc.status, 0.0)
        raise
    except Exception:  # aiohttp answers 500
        meters.answered(endpoint, 500, 0.0)
        raise
    meters.answered(endpoint, response.status, time.perf_counter() - started)
    return response


@web.middleware
async def _allow_from(request: web.Request, handler: Handler) -> web.StreamResponse:
    service = request.app[SERVICE]
    if not service.callers.allowed(request.remote):
        log.warning("ingest.caller.refused", peer=request.remote, path=request.path)
        answer = protocol.forbidden()
        if request.path in ENDPOINTS:
            service.meters.refused(answer)
        return _respond(answer)
    return await handler(request)


def _events(kind: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        service = request.app[SERVICE]
        received_at = service.clock()
        try:
            body = await read_body(request, protocol.MAX_BODY_BYTES)
        except BodyTooLarge:
            return _refused(request, kind, protocol.too_large())
        except BadBody as exc:
            log.info("ingest.body.unreadable", endpoint=kind, peer=request.remote, error=str(exc))
            return _unreadable(request, protocol.bad_request(protocol.INVALID_JSON))
        result = protocol.parse_events(body, service.keys, kind=kind)
        if isinstance(result, Answer):
            return _refused(request, kind, result)
        return _respond(await service.spool(request, result, received_at))

    return handle


def _identify(group: bool) -> Handler:
    kind = "groupidentify" if group else "identify"
    limit = protocol.MAX_GROUP_BODY_BYTES if group else protocol.MAX_BODY_BYTES

    async def handle(request: web.Request) -> web.StreamResponse:
        service = request.app[SERVICE]
        received_at = service.clock()
        try:
            fields, size = await _form_fields(request, limit)
        except BodyTooLarge:
            return _refused(request, kind, protocol.too_large())
        except BadBody as exc:
            log.info("ingest.body.unreadable", endpoint=kind, peer=request.remote, error=str(exc))
            return _unreadable(request, protocol.bad_request(protocol.MISSING_EVENT))
        result = protocol.parse_identify(fields, service.keys, payload_size_bytes=size, group=group)
        if isinstance(result, Answer):
            return _refused(request, kind, result)
        return _respond(await service.spool(request, result, received_at))

    return handle


async def _form_fields(request: web.Request, limit: int) -> tuple[dict[str, str], int]:
    """``api_key`` and ``identification`` from the query (GET, or a POST that puts them there) and the form
    body (url-encoded, possibly gzip'd, or multipart); body fields win. Returns them and the body size."""
    fields = dict(request.query)
    if request.method != "POST":
        return fields, len(request.query_string)
    if request.content_type == "multipart/form-data":
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge as exc:
            raise BodyTooLarge from exc
        except ValueError as exc:
            raise BadBody(str(exc)) from exc
        fields.update({k: v for k, v in form.items() if isinstance(v, str)})
        return fields, request.content_length or 0
    body = await read_body(request, limit)
    try:
        fields.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError as exc:
        raise BadBody("form body is not UTF-8") from exc
    return fields, len(body)


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"}, dumps=lambda v: orjson.dumps(v).decode())


def _unreadable(request: web.Request, answer: Answer) -> web.StreamResponse:
    request.app[SERVICE].meters.refused(answer)
    return _respond(answer)


def _refused(request: web.Request, endpoint: str, answer: Answer) -> web.StreamResponse:
    request.app[SERVICE].meters.refused(answer)
    body = answer.body if isinstance(answer.body, dict) else {}
    # The error text only: an `Invalid API key` answer names the key by fingerprint, never by value.
    log.info("ingest.request.refused", endpoint=endpoint, peer=request.remote, status=answer.status,
             error=body.get("error"), missing_field=body.get("missing_field"))
    return _respond(answer)


def _respond(answer: Answer) -> web.Response:
    if isinstance(answer.body, str):
        return web.Response(status=answer.status, text=answer.body)
    return web.Response(status=answer.status, body=orjson.dumps(answer.body), content_type="application/json")


def _limits(limits: SpoolLimits) -> dict[str, Any]:
    return {"max_rows": limits.max_rows, "max_bytes": limits.max_bytes}
