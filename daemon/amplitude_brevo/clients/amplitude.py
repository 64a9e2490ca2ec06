"""Amplitude REST client: Basic auth, regional base URL, the Export API streamed to a file on disk."""

from __future__ import annotations

import base64
import enum
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp

from ..durations import hour_key
from ..metrics import Metrics
from ..secrets import Secret

_CHUNK = 1 << 20  # 1 MiB: the export is written as it arrives, never held in memory
_ERROR_BODY = 2048  # bytes of an error answer read: enough to recognise it and quote its start
# What Amplitude's 404 says when the range has no data ("Raw data files were not found."), and phrasings
# close to it. Any other 404 (a proxy's HTML page, a wrong path) says nothing about the data.
_NO_DATA = re.compile(
    rb"raw\s+data\s+files?\s+(?:were|was|are|is)\s+not\s+found"
    rb"|no\s+(?:raw\s+)?data\s+(?:files?\s+)?(?:was\s+|were\s+)?(?:found|available|exists?)",
    re.IGNORECASE,
)
UNAVAILABLE_HINT = "check connectors.amplitude.api_url / data_center"
EXPORT_FILE_PREFIX = "amplitude-export-"  # + random + ".zip": a downloaded window (see remove_stale_exports)


class ExportStatus(enum.Enum):
    OK = "ok"  # a zip on disk
    EMPTY = "empty"  # 404 saying the range has no data
    TOO_LARGE = "too_large"  # 400 / 504: shorten the range
    RETRY = "retry"  # 429, 5xx, a 200 that is not a zip, transport errors
    UNAVAILABLE = "unavailable"  # any other 404: not the Export API answering (wrong host or path); retry
    FATAL = "fatal"  # 401/403 (keys or region), other 4xx


@dataclass
class ExportResult:
    status: ExportStatus
    http_status: int | None
    path: Path | None = None
    size: int = 0
    reason: str = ""


def validate_export_status(status: int, body: bytes = b"") -> ExportStatus:
    """What an Export API answer means (reference/amplitude-api.md §1, Errors), from its status and the start
    of its body.

    A 404 is an empty window only when its body says no data exists: a proxy or a wrong `api_url` answering
    404 for a path it does not know must not make the daemon skip hours that hold data. Such a 404 is
    UNAVAILABLE, retried with backoff like a 5xx.
    """
    if status == 200:
        return ExportStatus.OK
    if status == 404:
        return ExportStatus.EMPTY if _NO_DATA.search(body) else ExportStatus.UNAVAILABLE
    if status in (400, 504):
        return ExportStatus.TOO_LARGE
    if status in (408, 429) or status >= 500:
        return ExportStatus.RETRY
    return ExportStatus.FATAL


def export_temp_dir(state_path: str | os.PathLike[str]) -> Path:
    """Where downloaded export windows are written: `<state file>.export-tmp/` beside the state file, created
    0700 (made 0700 if it exists).

    Not /tmp: a window can be gigabytes, and systemd's PrivateTmp /tmp is often RAM. Beside the state file,
    named after it, so the directory belongs to one daemon (one writer per state file) and
    `remove_stale_exports` never removes another daemon's download. A state kept in memory (`:memory:`,
    tests) gets a new private directory under the system's temporary directory.
    """
    text = os.fspath(state_path)
    if not text or text == ":memory:" or text.startswith("file::memory:"):
        return Path(tempfile.mkdtemp(prefix="amplitude-brevo-export-"))
    state = Path(text).absolute()
    path = state.with_name(state.name + ".export-tmp")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.is_dir() or path.is_symlink():
        raise NotADirectoryError(f"{path} is not a directory")
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)  # windows hold user data: nobody else reads them
    return path


def remove_stale_exports(temp_dir: str | os.PathLike[str]) -> tuple[int, int]:
    """Remove the downloaded windows a killed daemon left in `temp_dir` (call at start, before any download);
    returns (files, bytes) removed. Only `amplitude-export-*.zip` files are touched."""
    files = size = 0
    for path in Path(temp_dir).glob(f"{EXPORT_FILE_PREFIX}*.zip"):
        try:
            if path.is_symlink() or not path.is_file():
                continue
            length = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        files += 1
        size += length
    return files, size


class AmplitudeClient:
    """One client per project; keys are read from the live config so a reload rotates them."""

    def __init__(
        self, session: aiohttp.ClientSession, *, api_url: str, api_key: Secret, secret_key: Secret,
        metrics: Metrics | None = None, temp_dir: str | None = None,
    ) -> None:
        self.session = session
        self.metrics = metrics
        self.temp_dir = temp_dir
        self.reconfigure(api_url=api_url, api_key=api_key, secret_key=secret_key)

    def reconfigure(self, *, api_url: str, api_key: Secret, secret_key: Secret) -> None:
        self.api_url = api_url.rstrip("/")
        self._api_key = api_key
        self._secret_key = secret_key

    def __repr__(self) -> str:
        return f"AmplitudeClient(api_url={self.api_url!r}, api_key='***', secret_key='***')"

    def _auth(self) -> str:
        token = base64.b64encode(f"{self._api_key.reveal()}:{self._secret_key.reveal()}".encode()).decode()
        return f"Basic {token}"

    async def download_export(self, start: datetime, end: datetime) -> ExportResult:
        """GET /api/2/export for hours start..end (inclusive), streamed to a temporary file.

        The caller owns the returned file and must unlink it. A 200 whose body does not start with the
        zip magic is reported as RETRY, never as an empty window.
        """
        params = {"start": hour_key(start), "end": hour_key(end)}
        fd, name = tempfile.mkstemp(prefix=EXPORT_FILE_PREFIX, suffix=".zip", dir=self.temp_dir)
        path = Path(name)
        keep = False
        try:
            try:
                async with self.session.get(
                    f"{self.api_url}/api/2/export", params=params, headers={"Authorization": self._auth()},
                    timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_read=300),
                ) as resp:
                    status = resp.status
                    if self.metrics:
                        self.metrics.http_responses.labels(api="amplitude_export", status=str(status)).inc()
                    if status != 200:
                        body = await _read_start(resp.content, _ERROR_BODY)
                        outcome = validate_export_status(status, body)
                        text = " ".join(body.decode("utf-8", "replace").split())[:200]
                        reason = f"HTTP {status}: {text}"
                        if outcome is ExportStatus.UNAVAILABLE:
                            reason = (f"HTTP {status} without the Export API's no-data message, so not taken as "
                                      f"an empty window: {text!r}; {UNAVAILABLE_HINT}")
                        return ExportResult(outcome, status, reason=reason)
                    size = 0
                    with os.fdopen(fd, "wb", closefd=False) as out:
                        async for chunk in resp.content.iter_chunked(_CHUNK):
                            out.write(chunk)
                            size += len(chunk)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                if self.metrics:
                    self.metrics.http_responses.labels(api="amplitude_export", status="error").inc()
                return ExportResult(ExportStatus.RETRY, None, reason=f"{type(exc).__name__}: {exc}")
            with open(path, "rb") as check:
                magic = check.read(4)
            if magic[:2] != b"PK":
                return ExportResult(ExportStatus.RETRY, 200, reason=f"HTTP 200 but the body is not a zip ({size} bytes)")
            keep = True
            return ExportResult(ExportStatus.OK, 200, path=path, size=size)
        finally:
            os.close(fd)
            if not keep:
                path.unlink(missing_ok=True)


async def _read_start(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to `limit` bytes of a body (`read(n)` returns what one network read brought, maybe less)."""
    parts: list[bytes] = []
    size = 0
    while size < limit and (data := await stream.read(limit - size)):
        parts.append(data)
        size += len(data)
    return b"".join(parts)
