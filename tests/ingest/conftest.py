"""An ingest server on 127.0.0.1 (a real socket, aiohttp's test server) over a real state file in tmp_path."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from amplitude_brevo.config.service import Ingest
from amplitude_brevo.ingest.entries import SpooledRequest, decode_entry
from amplitude_brevo.ingest.server import SERVICE, IngestService, make_ingest_app
from amplitude_brevo.state import StateStore
from amplitude_brevo.state.spool import SpoolLimits

KEY = "amp-key-ingest-0001"


@dataclass
class Ingestion:
    client: TestClient
    state: StateStore
    path: Path

    @property
    def service(self) -> IngestService:
        return self.client.server.app[SERVICE]

    @property
    def url(self) -> str:
        return str(self.client.make_url("/"))

    def spooled(self) -> list[tuple[str, SpooledRequest]]:
        """Every spooled row as (kind, decoded entry), read on a connection of its own: committed rows only."""
        with closing(sqlite3.connect(self.path)) as conn:
            rows = conn.execute("SELECT kind, body FROM ingest_spool ORDER BY id").fetchall()
        return [(kind, decode_entry(body)) for kind, body in rows]


IngestFactory = Callable[..., AbstractAsyncContextManager[Ingestion]]


@pytest.fixture
def ingest_server(tmp_path: Path) -> IngestFactory:
    """``async with ingest_server(allow_from=[...], limits=SpoolLimits(...)) as ingestion:`` — the app on a free
    loopback port, keys ``[KEY]`` unless ``api_keys`` is given; ``server`` passes options to aiohttp's server."""

    @asynccontextmanager
    async def start(
        *, limits: SpoolLimits | None = None, server: dict[str, Any] | None = None, **cfg: Any
    ) -> AsyncIterator[Ingestion]:
        path = tmp_path / "state.db"
        settings = Ingest(**{"api_keys": [KEY], "listen": "127.0.0.1:0", **cfg})
        async with await StateStore.open(path) as state:
            app = make_ingest_app(settings, state, limits=limits)
            test_server = TestServer(app, host="127.0.0.1", port=0)
            # Started here: TestServer() drops server options, only start_server() passes them on.
            await test_server.start_server(**(server or {}))
            async with TestClient(test_server) as client:
                yield Ingestion(client, state, path)

    return start
