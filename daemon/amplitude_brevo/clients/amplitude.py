"""Amplitude REST client: Basic auth, regional base URL, the Export API streamed to a file on disk."""

from __future__ import annotations

import base64
import enum
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp

from ..durations import hour_key
from ..metrics import Metrics
from ..secrets import Secret

_CHUNK = 1 << 20  # 1 MiB: the export is written as it arrives, never held in memory


class ExportStatus(enum.Enum):
    OK = "ok"  # a zip on disk
    EMPTY = "empty"  # 404: no data in the range
    TOO_LARGE = "too_large"  # 400 / 504: shorten the range
    RETRY = "retry"  # 429, 5xx, a 200 that is not a zip, transport errors
    FATAL = "fatal"  # 401/403 (keys or region), other 4xx


@dataclass
class ExportResult:
    status: ExportStatus
    http_status: int | None
    path: Path | None = None
    size: int = 0
    reason: str = ""


def validate_export_status(status: int) -> ExportStatus:
    """What an Export API status means (reference/amplitude-api.md §1, Errors)."""
    if status == 200:
        return ExportStatus.OK
    if status == 404:
        return ExportStatus.EMPTY
    if status in (400, 504):
        return ExportStatus.TOO_LARGE
    if status in (408, 429) or status >= 500:
        return ExportStatus.RETRY
    return ExportStatus.FATAL


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
        fd, name = tempfile.mkstemp(prefix="amplitude-export-", suffix=".zip", dir=self.temp_dir)
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
                    outcome = validate_export_status(status)
                    if outcome is not ExportStatus.OK:
                        text = (await resp.content.read(500)).decode("utf-8", "replace")
                        return ExportResult(outcome, status, reason=f"HTTP {status}: {text.strip()[:200]}")
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
