"""The Amplitude client against the sandbox's Export API simulator: what each answer means, where files go."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from amplitude_brevo.clients.amplitude import (
    AmplitudeClient,
    ExportStatus,
    export_temp_dir,
    remove_stale_exports,
    validate_export_status,
)
from amplitude_brevo.sandbox.amplitude_sim import ExportFaults, make_amplitude_app
from amplitude_brevo.sandbox.sample_data import DatasetSpec
from amplitude_brevo.secrets import Secret

API_KEY, SECRET_KEY = "client-api-key", "client-secret-key"
START = datetime(2026, 11, 1, tzinfo=UTC)
SPEC = DatasetSpec(start=START, hours=2, rows_per_hour=20, users=5)
LATER = START + timedelta(hours=10)  # past the data: Amplitude's own 404


@pytest.fixture
async def sim(tmp_path, clock):
    faults = ExportFaults(clock=clock)
    app = make_amplitude_app(SPEC, api_key=API_KEY, secret_key=SECRET_KEY, faults=faults)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        client = AmplitudeClient(session, api_url=str(server.make_url("/")), api_key=Secret(API_KEY),
                                 secret_key=Secret(SECRET_KEY), temp_dir=str(tmp_path))
        yield client, faults


def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


async def test_a_window_with_data_is_a_zip_on_disk(sim, tmp_path):
    client, _ = sim
    result = await client.download_export(START, START)
    assert result.status is ExportStatus.OK and result.path is not None and result.path.parent == tmp_path
    assert result.path.read_bytes()[:2] == b"PK"


async def test_amplitudes_no_data_404_is_an_empty_window(sim, tmp_path):
    client, _ = sim
    result = await client.download_export(LATER, LATER)
    assert (result.status, result.http_status) == (ExportStatus.EMPTY, 404)
    assert "Raw data files were not found." in result.reason
    assert leftovers(tmp_path) == []


async def test_a_bare_html_404_is_unavailable_not_empty(sim, tmp_path):
    """A proxy (or a wrong api_url) answering 404: the window is retried, never skipped as empty."""
    client, faults = sim
    faults.html_404_requests = 2
    for when in (START, LATER):  # even for a range that holds no data: the answer is not Amplitude's
        result = await client.download_export(when, when)
        assert (result.status, result.http_status) == (ExportStatus.UNAVAILABLE, 404)
        assert "HTTP 404" in result.reason and "<html>" in result.reason and "404 Not Found" in result.reason
        assert "connectors.amplitude.api_url / data_center" in result.reason
    assert (await client.download_export(START, START)).status is ExportStatus.OK, "the fault is spent"
    assert (await client.download_export(LATER, LATER)).status is ExportStatus.EMPTY
    assert len(leftovers(tmp_path)) == 1  # the zip; nothing left by the 404s


async def test_html_404s_for_a_duration(sim, clock):
    client, faults = sim
    faults.update({"html_404_seconds": 3600})
    assert (await client.download_export(START, START)).status is ExportStatus.UNAVAILABLE
    clock.advance(3599)
    assert (await client.download_export(START, START)).status is ExportStatus.UNAVAILABLE
    clock.advance(1)
    assert (await client.download_export(START, START)).status is ExportStatus.OK, "the hour is over"
    faults.update({"html_404_seconds": 3600})
    assert (await client.download_export(START, START)).status is ExportStatus.UNAVAILABLE
    faults.update({"html_404_seconds": 0})
    assert (await client.download_export(START, START)).status is ExportStatus.OK


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, b"", ExportStatus.OK),
    (404, b"Raw data files were not found.", ExportStatus.EMPTY),
    (404, b"raw data files were NOT found", ExportStatus.EMPTY),
    (404, b'{"error": "Raw data file was not found."}', ExportStatus.EMPTY),
    (404, b"No data found for the requested range", ExportStatus.EMPTY),
    (404, b"no  raw data\navailable", ExportStatus.EMPTY),
    (404, b"", ExportStatus.UNAVAILABLE),
    (404, b"<html><body><h1>404 Not Found</h1></body></html>", ExportStatus.UNAVAILABLE),
    (404, b'{"error": "Not Found"}', ExportStatus.UNAVAILABLE),
    (400, b"file size too large", ExportStatus.TOO_LARGE),
    (504, b"", ExportStatus.TOO_LARGE),
    (429, b"", ExportStatus.RETRY),
    (503, b"", ExportStatus.RETRY),
    (401, b"", ExportStatus.FATAL),
    (403, b"", ExportStatus.FATAL),
])
def test_validate_export_status(status, body, expected):
    assert validate_export_status(status, body) is expected


def test_export_temp_dir_is_private_and_beside_the_state_file(tmp_path):
    state = tmp_path / "lib" / "state.db"
    path = export_temp_dir(state)
    assert path == tmp_path / "lib" / "state.db.export-tmp" and path.is_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o755)
    assert export_temp_dir(str(state)) == path and stat.S_IMODE(path.stat().st_mode) == 0o700, "tightened"
    assert export_temp_dir(tmp_path / "other.db") != path, "one directory per state file"


def test_export_temp_dir_for_a_state_in_memory_is_a_new_private_directory():
    path = export_temp_dir(":memory:")
    try:
        assert path.is_dir() and stat.S_IMODE(path.stat().st_mode) == 0o700
    finally:
        path.rmdir()


async def test_stale_exports_are_removed_and_nothing_else(sim, tmp_path):
    client, _ = sim
    stale = [tmp_path / "amplitude-export-abc123.zip", tmp_path / "amplitude-export-x.zip"]
    for path in stale:
        path.write_bytes(b"PK" + b"\0" * 98)
    keep = [tmp_path / "amplitude-export-notes.txt", tmp_path / "state.db", tmp_path / "other.zip"]
    for path in keep:
        path.write_bytes(b"keep")
    (tmp_path / "amplitude-export-dir.zip").mkdir()
    os.symlink(keep[1], tmp_path / "amplitude-export-link.zip")
    # What a download killed mid-way leaves: the client's own file name pattern.
    result = await client.download_export(START, START)
    assert result.path is not None
    assert remove_stale_exports(tmp_path) == (3, 200 + result.size)
    assert not result.path.exists() and not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"keep" for p in keep)
    assert (tmp_path / "amplitude-export-dir.zip").is_dir() and (tmp_path / "amplitude-export-link.zip").is_symlink()
    assert remove_stale_exports(tmp_path) == (0, 0)
