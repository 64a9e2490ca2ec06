"""Fixtures that run the real daemon as a separate process and listen to it like systemd would."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import orjson
import pytest
import yaml

SECRETS = {
    "AMPLITUDE_API_KEY": "amp-key-E2E-0001",
    "AMPLITUDE_SECRET_KEY": "amp-secret-E2E-0002",
    "BREVO_API_KEY": "xkeysib-E2E-0003",
}


def base_config(tmp_path: Path, **overrides: object) -> dict:
    """A config for tests: loopback URLs, a state file in tmp_path, admin on a free port, fast timings."""
    cfg: dict = {
        "connectors": {
            "amplitude": {
                "api_key": "${AMPLITUDE_API_KEY}",
                "secret_key": "${AMPLITUDE_SECRET_KEY}",
                "api_url": "http://127.0.0.1:9",
                "ingest_url": "http://127.0.0.1:9",
            },
            "brevo": {"api_key": "${BREVO_API_KEY}", "api_url": "http://127.0.0.1:9/v3"},
        },
        "event_mapping": {"Purchase": "order_completed", "Sign Up": "customer_created"},
        "ingest": {"enabled": False, "listen": "127.0.0.1:0"},
        "admin": {"listen": "127.0.0.1:0"},
        "state": {"path": str(tmp_path / "state.db")},
        "batching": {"max_items": 100, "max_wait": "1s", "queue_capacity": 1000},
        "shutdown_timeout": "5s",
        "logging": {"level": "debug", "format": "json"},
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class NotifySocket:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def expect(self, field: str, timeout: float = 15) -> str:
        """Wait for the next message containing `field` (e.g. READY=1); earlier ones are kept in messages."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = (await loop.sock_recv(self.sock, 65536)).decode()
                self.messages.append(data)
                if field in data.split("\n"):
                    return data

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """`amplitude-brevo <args>` as a child process; stdout is parsed as JSON log lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.stderr = b""

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        full_env = {**os.environ, **SECRETS, **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "amplitude_brevo", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=full_env,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout
        async for raw in self.proc.stdout:
            text = raw.decode()
            self.raw.append(text)
            try:
                self.lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                self.lines.append({"event": "<non-json>", "text": text})
            self._new.set()

    async def wait_for_log(self, event: str, timeout: float = 15, start: int = 0, **match: object) -> dict:
        async with asyncio.timeout(timeout):
            seen = start
            while True:
                for line in self.lines[seen:]:
                    if line.get("event") == event and all(line.get(k) == v for k, v in match.items()):
                        return line
                seen = len(self.lines)
                if self.proc.returncode is not None and self._reader.done():
                    raise AssertionError(f"process exited before logging {event}: {self.lines[-5:]}")
                self._new.clear()
                await self._new.wait()

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait(self, timeout: float = 30) -> int:
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
            assert self.proc.stderr
            self.stderr = await self.proc.stderr.read()
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    def all_output(self) -> str:
        return "".join(self.raw) + self.stderr.decode(errors="replace")


@pytest.fixture
async def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
async def processes():
    """Collects started processes and kills any left running at the end of a test."""
    started: list[DaemonProcess] = []
    yield started
    for p in started:
        p.kill()
        try:
            await p.wait(10)
        except Exception:
            pass
