"""The `ingest_listener` component: the ingest application (`ingest/server.py`) on `ingest.listen`.

It binds in `start()` (before READY=1, so a port in use stops the start with a clear error) and serves until
the daemon stops; a reload swaps the accepted keys, `allow_from`, `trusted_proxies` and the spool bound in
place (`ingest.listen` needs a restart). Each commit rings the spool's bell (`ingest/bell.py`). At each
/metrics scrape it sets the spool's size gauges (the forwarder's and the spool source's releases included:
they delete through the same store).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..config import Config
from ..logs import get_logger
from ..state.spool import SpoolLimits
from .bell import SpoolBell
from .server import SERVICE, make_ingest_app

log = get_logger("ingest")


def spool_limits(cfg: Config) -> SpoolLimits:
    return SpoolLimits(max_rows=cfg.ingest.spool_max_requests, max_bytes=cfg.ingest.spool_max_size)


class IngestListener:
    role = "producer"
    name = "ingest_listener"

    def __init__(self, *, cfg: Config, state: Any, bell: SpoolBell, metrics: Any = None) -> None:
        self.cfg = cfg
        self.state = state
        self.bell = bell
        self.metrics = metrics
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    @property
    def port(self) -> int | None:
        """The bound port (useful with port 0)."""
        if self._runner is None or not self._runner.addresses:
            return None
        return self._runner.addresses[0][1]

    @property
    def service(self) -> Any:
        return None if self.app is None else self.app[SERVICE]

    async def start(self) -> None:
        ingest = self.cfg.ingest
        self.app = make_ingest_app(ingest, self.state, limits=spool_limits(self.cfg), on_commit=self.bell.ring,
                                   metrics=self.metrics)
        # Counted once now (the first request would): the spool gauges are right from the first scrape.
        await self.state.spool_size()
        # shutdown_timeout: how long a stop waits for requests being answered (their commits take milliseconds)
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, ingest.host, ingest.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"cannot listen on ingest.listen {ingest.listen}: {exc.strerror or exc}") from exc
        self._runner = runner
        log.info("ingest.listening", listen=ingest.listen, port=self.port, keys=len(ingest.api_keys),
                 allow_from=list(ingest.allow_from) or "any", forward_to_amplitude=ingest.forward_to_amplitude)
        if not ingest.api_keys:
            log.warning("ingest.no_api_keys", hint="set ingest.api_keys (or connectors.amplitude.api_key): "
                                                   "every request is refused with Invalid API key until then")

    def collect_metrics(self) -> None:
        if self.app is not None:
            self.app[SERVICE].collect_metrics()

    def stop(self) -> None:
        self._stopping.set()

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        if self.app is not None:
            self.app[SERVICE].reload(cfg.ingest, spool_limits(cfg))

    async def run(self) -> None:
        try:
            await self._stopping.wait()
        finally:
            # New connections are refused from here; requests being answered finish, their commits land.
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            log.info("ingest.listener.stopped")
