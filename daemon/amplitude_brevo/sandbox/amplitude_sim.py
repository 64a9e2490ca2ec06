"""Loopback simulator of Amplitude's Export API (streamed zip of hourly gzip members) with fault injection."""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, BinaryIO, NamedTuple

import orjson
from aiohttp import web
from isal import isal_zlib

from .sample_data import DatasetSpec, hour_key, parse_hour_key, rows_for_hour

__all__ = [
    "AMPLITUDE_EXPORT_STATE",
    "HTML_404_BODY",
    "ExportFaults",
    "ExportSimState",
    "ExportStats",
    "build_export_zip",
    "export_member_name",
    "make_amplitude_app",
    "setup_export_routes",
]

# What nginx answers for a path it does not route: a 404 that says nothing about Amplitude's data.
HTML_404_BODY = (b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1>"
                 b"</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
MALFORMED_LINE = b'{"uuid": "sandbox-malformed-row", "event_type": "Page View", "event_properties": {"page titl'
_MAX_RANGE_HOURS = 365 * 24
_ROWS_PER_BATCH = 256
_CHUNK = 256 * 1024
_QUEUE_CHUNKS = 4


@dataclass
class ExportFaults:
    """Faults of the export endpoint; mutable at runtime (directly or via ``POST /_sandbox/amplitude/faults``).

    Hour keys are ``YYYYMMDDTHH``; a fault applies when any hour of the requested range matches.
    """

    status_for_hours: dict[str, int] = field(default_factory=dict)  # hour -> respond with this status
    once: bool = True  # status_for_hours fires only once per hour key, then the hour is served normally
    not_zip_once: set[str] = field(default_factory=set)  # 200 with a non-zip body, once per hour key
    truncate_member: set[str] = field(default_factory=set)  # last gzip member of the hour is cut mid-stream
    malformed_line: set[str] = field(default_factory=set)  # one non-JSON line in the hour's first member
    oversize_event: set[str] = field(default_factory=set)  # one mapped event with ~60 KB of event_properties
    max_hours_per_request: int | None = None  # more hours -> 400 "file size too large" (the 4 GB limit)
    latency: float = 0.0  # seconds before answering
    # A proxy or a wrong path in front of the API: a bare HTML 404 (not Amplitude's "no data" text) for the
    # next `html_404_requests` export requests, and for every request during `html_404_seconds` from when it
    # was set (through `update`, or `html_404_for()`).
    html_404_requests: int = 0
    html_404_seconds: float = 0.0
    # What `html_404_seconds` is measured on; a test passes a fake one and advances it instead of sleeping.
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    _fired: set[str] = field(default_factory=set, repr=False)
    _html_404_until: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.html_404_seconds > 0:
            self.html_404_for(self.html_404_seconds)

    def html_404_for(self, seconds: float) -> None:
        """Answer every export request with a bare HTML 404 for `seconds` from now (0 stops it)."""
        self.html_404_seconds = float(seconds)
        self._html_404_until = self.clock() + self.html_404_seconds if seconds > 0 else 0.0

    def take_html_404(self) -> bool:
        """Whether this request is answered with the HTML 404 (counts it against `html_404_requests`)."""
        if self.html_404_requests > 0:
            self.html_404_requests -= 1
            return True
        return self.clock() < self._html_404_until

    def update(self, data: dict[str, Any]) -> None:
        """Apply a JSON-ish mapping of field values (lists become sets). Unknown keys raise ValueError."""
        names = {f.name for f in fields(self) if not f.name.startswith("_") and f.name != "clock"}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        for key, value in data.items():
            if key == "status_for_hours":
                value = {_check_key(k): int(v) for k, v in (value or {}).items()}
                self._fired.clear()
            elif key in ("not_zip_once", "truncate_member", "malformed_line", "oversize_event"):
                value = {_check_key(k) for k in (value or ())}
            elif key == "once":
                value = bool(value)
            elif key == "max_hours_per_request":
                value = None if value is None else int(value)
            elif key == "latency":
                value = float(value or 0.0)
            elif key == "html_404_requests":
                value = max(0, int(value or 0))
            elif key == "html_404_seconds":
                self.html_404_for(max(0.0, float(value or 0.0)))
                continue
            setattr(self, key, value)

    def reset(self) -> None:
        """Back to no faults at all (on the same clock)."""
        fresh = ExportFaults(clock=self.clock)
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))

    def to_json(self) -> dict[str, Any]:
        return {
            "status_for_hours": dict(self.status_for_hours),
            "once": self.once,
            "not_zip_once": sorted(self.not_zip_once),
            "truncate_member": sorted(self.truncate_member),
            "malformed_line": sorted(self.malformed_line),
            "oversize_event": sorted(self.oversize_event),
            "max_hours_per_request": self.max_hours_per_request,
            "latency": self.latency,
            "html_404_requests": self.html_404_requests,
            "html_404_seconds": self.html_404_seconds,
            "html_404_remaining_seconds": round(max(0.0, self._html_404_until - self.clock()), 3),
        }


def _check_key(key: str) -> str:
    parse_hour_key(key)
    return key


class ExportStats(NamedTuple):
    members: int
    rows: int
    hours: int  # hours that contributed members


def export_member_name(app_id: int, hour: datetime, partition: int) -> str:
    """``<app>/<app>_<YYYY-MM-DD>_<H>#<n>.json.gz`` (H not zero-padded), as Amplitude names them."""
    return f"{app_id}/{app_id}_{hour:%Y-%m-%d}_{hour.hour}#{partition}.json.gz"


def _hour_range(start_hour: datetime, end_hour: datetime) -> Iterator[datetime]:
    h = start_hour
    while h <= end_hour:
        yield h
        h += timedelta(hours=1)


def _data_hours(
    spec: DatasetSpec, start_hour: datetime, end_hour: datetime, empty_hours: Iterable[str]
) -> list[datetime]:
    empty = set(empty_hours)
    lo = max(start_hour, spec.start)
    hi = min(end_hour, spec.end - timedelta(hours=1))
    if spec.rows_per_hour <= 0:
        return []
    return [h for h in _hour_range(lo, hi) if hour_key(h) not in empty]


def _split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class _CutWriter:
    """Passes bytes to a zip entry until ``cut`` is set, then swallows everything (a truncated member)."""

    def __init__(self, dst: BinaryIO) -> None:
        self.dst = dst
        self.cut = False

    def write(self, data: bytes) -> None:
        if not self.cut and data:
            self.dst.write(data)


def oversize_row(hour: datetime) -> dict[str, Any]:
    """A well-formed, mapped "Purchase" whose event_properties exceed Brevo's 50 KB limit."""
    ts = hour.strftime("%Y-%m-%d %H:05:00.000000")
    return {
        "uuid": f"sandbox-oversize-{hour_key(hour)}", "$insert_id": f"sandbox-oversize-{hour_key(hour)}",
        "event_type": "Purchase", "user_id": "user-oversize", "device_id": "device-oversize",
        "event_time": ts, "server_upload_time": ts, "client_event_time": ts,
        "event_properties": {"notes": "x" * 60_000}, "user_properties": {},
    }


def _write_member(
    dst: BinaryIO, rows: Iterator[dict[str, Any]], count: int, *, malformed: bool, truncate: bool,
    oversize: dict[str, Any] | None = None,
) -> int:
    """Write ``count`` rows as one gzip of NDJSON to ``dst``; returns the number of rows consumed."""
    out = _CutWriter(dst)
    comp = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 31)  # gzip container
    dumps = orjson.dumps
    written = 0
    cut_after = count // 2 if truncate else -1
    buf = bytearray()
    while written < count:
        # orjson's result objects are over-allocated (~8 KiB each), so never hold a list of them: append
        # each line to one buffer and drop it at once.
        for row in islice(rows, min(_ROWS_PER_BATCH, count - written)):
            buf += dumps(row)
            buf += b"\n"
            if malformed and written == 0:
                buf += MALFORMED_LINE + b"\n"
                malformed = False
            if oversize is not None and written == 0:
                buf += dumps(oversize) + b"\n"
                oversize = None
            written += 1
        if not buf:
            break
        out.write(comp.compress(buf))
        buf.clear()
        if truncate and not out.cut and written >= cut_after:
            tail = comp.flush(isal_zlib.Z_SYNC_FLUSH)
            out.write(tail[: max(0, len(tail) - 7)])  # cut inside the deflate stream, no gzip trailer
            out.cut = True
    if not out.cut:
        out.write(comp.flush())
    return written


def build_export_zip(
    spec: DatasetSpec,
    start_hour: datetime,
    end_hour: datetime,
    fp: Any,
    *,
    members_per_hour: int = 2,
    faults: ExportFaults | None = None,
    empty_hours: Iterable[str] = frozenset(),
) -> ExportStats:
    """Write the export zip for ``start_hour``..``end_hour`` (inclusive) to ``fp`` progressively.

    ``fp`` needs only ``write`` (and optionally ``flush``); a non-seekable writer gets entries with data
    descriptors, so nothing is buffered beyond one batch of rows. Members are stored (not deflated): each is
    already a gzip of newline-delimited JSON.
    """
    start_hour = start_hour.astimezone(UTC) if start_hour.tzinfo else start_hour.replace(tzinfo=UTC)
    end_hour = end_hour.astimezone(UTC) if end_hour.tzinfo else end_hour.replace(tzinfo=UTC)
    data_hours = _data_hours(spec, start_hour, end_hour, empty_hours)
    members = rows_total = 0
    app = spec.app_id
    with zipfile.ZipFile(fp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        if data_hours:
            folder = zipfile.ZipInfo(f"{app}/", date_time=data_hours[0].timetuple()[:6])
            folder.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(folder, b"")
        for hour in data_hours:
            key = hour_key(hour)
            n = spec.rows_per_hour
            parts = _split(n, max(1, min(members_per_hour, n)))
            rows = rows_for_hour(spec, hour)
            for j, count in enumerate(parts):
                info = zipfile.ZipInfo(export_member_name(app, hour, j), date_time=hour.timetuple()[:6])
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=count * 1000 > zipfile.ZIP64_LIMIT) as dst:
                    rows_total += _write_member(
                        dst,
                        rows,
                        count,
                        malformed=faults is not None and j == 0 and key in faults.malformed_line,
                        truncate=faults is not None and j == len(parts) - 1 and key in faults.truncate_member,
                        oversize=oversize_row(hour) if faults and j == 0 and key in faults.oversize_event else None,
                    )
                members += 1
    return ExportStats(members=members, rows=rows_total, hours=len(data_hours))


# ---------------------------------------------------------------------------------------------------------
# HTTP


class _Aborted(Exception):
    pass


_DONE = object()


class _QueuePusher:
    """File-like sink used by the zip builder thread: hands ~256 KiB chunks to the event loop (bounded)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], abort: threading.Event):
        self._loop = loop
        self._queue = queue
        self._abort = abort
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= _CHUNK:
            self._push(bytes(self._buf))
            self._buf.clear()
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self, final: Any) -> None:
        if self._buf:
            self._push(bytes(self._buf))
            self._buf.clear()
        self._push(final)

    def _push(self, item: Any) -> None:
        if self._abort.is_set():
            raise _Aborted
        fut = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        while True:
            try:
                fut.result(timeout=0.2)
                return
            except concurrent.futures.TimeoutError:
                if self._abort.is_set():
                    fut.cancel()
                    raise _Aborted from None


@dataclass
class ExportSimState:
    """Everything the export simulator knows; reachable as ``app[AMPLITUDE_EXPORT_STATE]``."""

    spec: DatasetSpec
    api_key: str
    secret_key: str
    faults: ExportFaults
    members_per_hour: int = 2
    empty_hours: set[str] = field(default_factory=set)
    requests: list[dict[str, Any]] = field(default_factory=list)


AMPLITUDE_EXPORT_STATE = web.AppKey("amplitude_export_state", ExportSimState)


def _text(status: int, body: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=body, headers=headers or None)


def _authorized(request: web.Request, state: ExportSimState) -> bool:
    scheme, _, encoded = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):
        return False
    login, sep, password = decoded.partition(":")
    ok_user = hmac.compare_digest(login.encode(), state.api_key.encode())
    ok_pass = hmac.compare_digest(password.encode(), state.secret_key.encode())
    return bool(sep) and ok_user and ok_pass


async def _export(request: web.Request) -> web.StreamResponse:
    state = request.app[AMPLITUDE_EXPORT_STATE]
    faults = state.faults
    start_s, end_s = request.query.get("start", ""), request.query.get("end", "")
    entry: dict[str, Any] = {"start": start_s, "end": end_s, "status": None, "at": time.time()}
    state.requests.append(entry)

    def done(resp: web.StreamResponse) -> web.StreamResponse:
        entry["status"] = resp.status
        return resp

    if faults.take_html_404():  # before authentication: the proxy answers, Amplitude never sees the request
        return done(web.Response(status=404, body=HTML_404_BODY, content_type="text/html"))
    if not _authorized(request, state):
        return done(_text(401, "Invalid API key or secret key"))
    try:
        start_hour, end_hour = parse_hour_key(start_s), parse_hour_key(end_s)
    except ValueError:
        return done(_text(400, "Invalid or missing start/end (expected YYYYMMDDTHH)"))
    if start_hour > end_hour:
        return done(_text(400, "start must not be after end"))
    n_hours = int((end_hour - start_hour) / timedelta(hours=1)) + 1
    if n_hours > _MAX_RANGE_HOURS:
        return done(_text(400, "Date range cannot exceed 365 days"))
    if faults.latency > 0:
        await asyncio.sleep(faults.latency)
    if faults.max_hours_per_request is not None and n_hours > faults.max_hours_per_request:
        return done(_text(400, "file size too large, shorten the range"))
    keys = [hour_key(h) for h in _hour_range(start_hour, end_hour)]
    for key in keys:
        status = faults.status_for_hours.get(key)
        if status is None or (faults.once and key in faults._fired):
            continue
        faults._fired.add(key)
        return done(_text(status, f"sandbox fault {status} for hour {key}"))
    data_hours = _data_hours(state.spec, start_hour, end_hour, state.empty_hours)
    if not data_hours:
        return done(_text(404, "Raw data files were not found."))
    for key in keys:
        if key in faults.not_zip_once:
            faults.not_zip_once.discard(key)
            body = b"<html><body><h1>502 Bad Gateway</h1>upstream hiccup</body></html>\n"
            return done(web.Response(status=200, body=body, content_type="application/zip"))

    resp = web.StreamResponse(status=200)
    resp.content_type = "application/zip"
    resp.headers["Content-Disposition"] = f'attachment; filename="{state.spec.app_id}_export.zip"'
    done(resp)
    await resp.prepare(request)

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
    abort = threading.Event()
    pusher = _QueuePusher(loop, queue, abort)
    faults_snapshot = ExportFaults(
        truncate_member=set(faults.truncate_member), malformed_line=set(faults.malformed_line),
        oversize_event=set(faults.oversize_event),
    )

    def produce() -> ExportStats | None:
        try:
            stats = build_export_zip(
                state.spec,
                start_hour,
                end_hour,
                pusher,
                members_per_hour=state.members_per_hour,
                faults=faults_snapshot,
                empty_hours=state.empty_hours,
            )
        except _Aborted:
            return None
        except Exception as exc:  # surfaces in the handler, which aborts the connection
            try:
                pusher.finish(exc)
            except _Aborted:
                pass
            return None
        try:
            pusher.finish(_DONE)
        except _Aborted:
            return None
        return stats

    producer = loop.run_in_executor(None, produce)
    sent = 0
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            await resp.write(item)
            sent += len(item)
        await resp.write_eof()
    except ConnectionResetError:
        entry["client_aborted"] = True
    finally:
        abort.set()
        stats = await producer
        entry["bytes"] = sent
        if stats is not None:
            entry["rows"] = stats.rows
            entry["members"] = stats.members
        entry["completed"] = stats is not None
    return resp


async def _get_requests(request: web.Request) -> web.Response:
    state = request.app[AMPLITUDE_EXPORT_STATE]
    return web.json_response(state.requests, dumps=lambda o: orjson.dumps(o).decode())


async def _clear_requests(request: web.Request) -> web.Response:
    state = request.app[AMPLITUDE_EXPORT_STATE]
    state.requests.clear()
    return web.json_response([])


async def _get_faults(request: web.Request) -> web.Response:
    state = request.app[AMPLITUDE_EXPORT_STATE]
    return web.json_response({**state.faults.to_json(), "empty_hours": sorted(state.empty_hours)})


async def _post_faults(request: web.Request) -> web.Response:
    state = request.app[AMPLITUDE_EXPORT_STATE]
    try:
        data = await request.json(loads=orjson.loads)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        data = dict(data)
        if data.pop("reset", False):
            state.faults.reset()
        if "empty_hours" in data:
            state.empty_hours = {_check_key(k) for k in data.pop("empty_hours") or ()}
        state.faults.update(data)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({**state.faults.to_json(), "empty_hours": sorted(state.empty_hours)})


def setup_export_routes(
    app: web.Application,
    spec: DatasetSpec,
    *,
    api_key: str,
    secret_key: str,
    faults: ExportFaults | None = None,
    members_per_hour: int = 2,
    empty_hours: Iterable[str] = frozenset(),
) -> ExportSimState:
    """Mount the export endpoint and its ``/_sandbox/amplitude/...`` control routes on ``app``."""
    state = ExportSimState(
        spec=spec,
        api_key=api_key,
        secret_key=secret_key,
        faults=faults if faults is not None else ExportFaults(),
        members_per_hour=members_per_hour,
        empty_hours={_check_key(k) for k in empty_hours},
    )
    app[AMPLITUDE_EXPORT_STATE] = state
    app.router.add_get("/api/2/export", _export)
    app.router.add_get("/_sandbox/amplitude/requests", _get_requests)
    app.router.add_delete("/_sandbox/amplitude/requests", _clear_requests)
    app.router.add_get("/_sandbox/amplitude/faults", _get_faults)
    app.router.add_post("/_sandbox/amplitude/faults", _post_faults)
    return state


def make_amplitude_app(
    spec: DatasetSpec,
    *,
    api_key: str,
    secret_key: str,
    faults: ExportFaults | None = None,
    members_per_hour: int = 2,
    empty_hours: Iterable[str] = frozenset(),
) -> web.Application:
    """An aiohttp app serving ``GET /api/2/export`` from ``spec`` (see module docstring) and Amplitude's ingest
    APIs (``sandbox/amplitude_ingest.py``)."""
    from .amplitude_ingest import setup_ingest_routes

    app = web.Application()
    setup_export_routes(
        app,
        spec,
        api_key=api_key,
        secret_key=secret_key,
        faults=faults,
        members_per_hour=members_per_hour,
        empty_hours=empty_hours,
    )
    setup_ingest_routes(app, api_key=api_key)
    return app
