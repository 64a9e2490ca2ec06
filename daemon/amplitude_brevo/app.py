"""The daemon's lifecycle: startup → run until a signal → shutdown within a deadline; SIGHUP reload."""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from .clients.http import make_session
from .config import Config, ConfigError, load_config, secret_values
from .logs import configure_logging, get_logger
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .notify import Notifier
from .pipeline.queue import BatchQueue
from .sinks.budgets import Budgets
from .state import StateStore

log = get_logger("daemon")

# Settings read once at startup: a reload that changes them says so and keeps the running value.
RESTART_REQUIRED = ("state.path", "admin.listen", "ingest.listen", "ingest.enabled")


class Signal(enum.Enum):
    STOP = "stop"
    RELOAD = "reload"


class StartupError(Exception):
    """The daemon cannot start (state file, listen address ...); the message says why."""


@dataclass
class Runtime:
    """What every component shares: the live config, state, budgets, queues, HTTP session and metrics."""

    cfg: Config
    state: StateStore
    budgets: Budgets
    metrics: Metrics
    session: aiohttp.ClientSession
    queues: dict[str, BatchQueue[Any]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def queue(self, sink: str) -> BatchQueue[Any]:
        """The batching queue of one sink, created on first use with the configured batching."""
        if sink not in self.queues:
            b = self.cfg.batching
            self.queues[sink] = BatchQueue(sink, max_items=b.max_items, max_wait=b.max_wait, capacity=b.queue_capacity)
        return self.queues[sink]


class Component(Protocol):
    """A producer (reads a source, puts into queues) or a consumer (drains a queue into a sink)."""

    name: str
    role: str  # "producer" | "consumer"

    async def run(self) -> None: ...

    def reload(self, cfg: Config) -> None: ...


ComponentFactory = Callable[[Runtime], Sequence[Component]]


def no_components(runtime: Runtime) -> Sequence[Component]:
    return ()


def _dig(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


class Daemon:
    """`serve()` = `startup()` → main loop (signals, watchdog) → `shutdown()`; returns the exit code.

    Signal handlers only record intent; the main loop acts on it. Shutdown is two-staged: producers are
    told to stop and given the deadline to finish their current unit of work, then the queues are closed
    and consumers drain them. Whatever is still running at `shutdown_timeout` is cancelled and named in the
    log. Checkpoints only ever move after delivery, so a cancelled batch is re-read on the next start.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: str | os.PathLike[str] | None = None,
        notifier: Notifier | None = None,
        components: ComponentFactory = no_components,
        install_signal_handlers: bool = True,
        burst: bool = False,
        admin: bool = True,
    ) -> None:
        self.cfg = cfg
        self.config_path = Path(config_path) if config_path else None
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self._component_factory = components
        self._install_signals = install_signal_handlers
        self.burst = burst  # stop once every producer has finished (backfill, demo, tests)
        self._admin_enabled = admin
        self._signals: asyncio.Queue[Signal] = asyncio.Queue()
        self._force = asyncio.Event()
        self._stopping = False
        self._ready = False
        self.runtime: Runtime | None = None
        self.components: list[Component] = []
        self._tasks: dict[asyncio.Task[None], Component] = {}
        self._admin: web.AppRunner | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.exit_code = 0

    # -- public control (tests and the CLI use these instead of real signals when convenient) --
    def request_stop(self) -> None:
        self._on_signal(Signal.STOP)

    def request_reload(self) -> None:
        self._on_signal(Signal.RELOAD)

    def _on_signal(self, sig: Signal) -> None:
        if sig is Signal.STOP and self._stopping:
            self._force.set()  # second stop signal: do not wait for the drain
            return
        self._signals.put_nowait(sig)

    async def serve(self) -> int:
        await self.startup()
        try:
            await self.run_until_stopped()
        finally:
            await self.shutdown()
        return self.exit_code

    # -- startup --
    async def startup(self) -> None:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        if self._install_signals:
            for signum, sig in ((signal.SIGTERM, Signal.STOP), (signal.SIGINT, Signal.STOP), (signal.SIGHUP, Signal.RELOAD)):
                loop.add_signal_handler(signum, self._on_signal, sig)
            loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        try:
            state = await StateStore.open(self.cfg.state.path)
        except Exception as exc:  # StateError and OS errors: a clear message, never a silent reset
            raise StartupError(f"cannot open state file {self.cfg.state.path}: {exc}") from exc
        self.runtime = Runtime(
            cfg=self.cfg,
            state=state,
            budgets=Budgets(
                self.cfg.rate_limits, on_wait=lambda name, s: self.metrics.limiter_wait.labels(budget=name).inc(s)
            ),
            metrics=self.metrics,
            session=make_session(),
        )
        try:
            if self._admin_enabled:
                await self._start_admin()
        except OSError as exc:
            await self._close_runtime()
            raise StartupError(f"cannot listen on admin.listen {self.cfg.admin.listen}: {exc.strerror or exc}") from exc
        self.components = list(self._component_factory(self.runtime))
        for component in self.components:
            task = asyncio.create_task(component.run(), name=component.name)
            self._tasks[task] = component
        if self.notifier.watchdog_interval:
            self._watchdog = asyncio.create_task(self._watchdog_loop(self.notifier.watchdog_interval), name="watchdog")
        self._ready = True
        self.notifier.ready(status="running")
        log.info(
            "daemon.started",
            components=[c.name for c in self.components],
            state=str(state.path),
            admin=self.cfg.admin.listen,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _start_admin(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/healthz", self._health_handler)
        app.router.add_get("/readyz", self._ready_handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.cfg.admin.host, self.cfg.admin.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._admin = runner

    @property
    def admin_port(self) -> int | None:
        """The admin listener's bound port (useful when configured with port 0)."""
        if not self._admin or not self._admin.addresses:
            return None
        return self._admin.addresses[0][1]

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        if self.runtime:
            for name, queue in self.runtime.queues.items():
                self.metrics.queue_depth.labels(sink=name).set(len(queue))
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready_handler(self, request: web.Request) -> web.Response:
        ok = self._ready and not self._stopping
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def _watchdog_loop(self, interval: float) -> None:
        # Runs on the event loop, so a stalled loop stops the pings and systemd restarts us.
        while True:
            self.notifier.watchdog()
            if self.runtime and not self._stopping:
                queued = sum(len(q) for q in self.runtime.queues.values())
                self.notifier.status(f"running, {queued} items queued")  # shown by `systemctl status`
            await asyncio.sleep(interval)

    # -- main loop --
    async def run_until_stopped(self) -> None:
        """Handle signals and component exits until a stop is requested (or, in burst mode, work is done)."""
        while True:
            get_signal = asyncio.ensure_future(self._signals.get())
            waiting: set[asyncio.Future[Any]] = {get_signal, *self._tasks}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if get_signal not in done:
                get_signal.cancel()
                with suppress(asyncio.CancelledError):
                    await get_signal
            for task in done - {get_signal}:
                self._component_finished(task)  # type: ignore[arg-type]
            if get_signal in done:
                sig = get_signal.result()
                if sig is Signal.STOP:
                    log.info("daemon.stop_requested")
                    return
                await self.reload()
            if self.exit_code and not self._tasks:
                return

    def _component_finished(self, task: asyncio.Task[None]) -> None:
        component = self._tasks.pop(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            log.info("component.finished", component=component.name)
            if self.burst and not any(c.role == "producer" for c in self._tasks.values()):
                self._signals.put_nowait(Signal.STOP)
            return
        # A component crash is a bug, not bad input: stop the daemon so systemd restarts it from checkpoints.
        log.error("component.crashed", component=component.name, error=repr(exc), exc_info=exc)
        self.metrics.errors.labels(component=component.name, kind="crash").inc()
        self.exit_code = 1
        self._signals.put_nowait(Signal.STOP)

    # -- reload --
    async def reload(self) -> bool:
        """Load and validate the config file again; swap it in, or keep the old one and say why."""
        self.notifier.reloading()
        try:
            if self.config_path is None:
                log.warning("config.reload_failed", errors=["no config file to reload (started without -c)"])
                self.metrics.reloads.labels(result="failed").inc()
                return False
            loop = asyncio.get_running_loop()
            try:
                new = await loop.run_in_executor(None, load_config, self.config_path)
            except ConfigError as exc:
                log.error("config.reload_failed", path=str(self.config_path), errors=exc.errors)
                self.metrics.reloads.labels(result="failed").inc()
                return False
            await self._apply(new)
            self.metrics.reloads.labels(result="ok").inc()
            return True
        finally:
            self.notifier.ready(status="running")

    async def _apply(self, new: Config) -> None:
        old = self.cfg
        kept = [name for name in RESTART_REQUIRED if _dig(old, name) != _dig(new, name)]
        if kept:
            log.warning("config.reload.restart_required", fields=kept)
            new = _keep_fields(new, old, kept)
        changed = [name for name in type(new).model_fields if getattr(old, name) != getattr(new, name)]
        configure_logging(new.logging.level, new.logging.format, secret_values(new))
        self.cfg = new
        if self.runtime:
            rt = self.runtime
            rt.cfg = new
            rt.budgets.reconfigure(new.rate_limits)
            b = new.batching
            for queue in rt.queues.values():
                # Through reconfigure(): a larger capacity must wake producers waiting on a full queue.
                await queue.reconfigure(max_items=b.max_items, max_wait=b.max_wait, capacity=b.queue_capacity)
            for component in self.components:
                component.reload(new)
        log.info("config.reloaded", path=str(self.config_path), changed=changed)

    # -- shutdown --
    async def shutdown(self) -> None:
        if self.runtime is None:
            return
        self._stopping = True
        self.notifier.stopping(status="draining")
        deadline = time.monotonic() + self.cfg.shutdown_timeout
        rt = self.runtime
        rt.stopping.set()
        log.info("daemon.stopping", deadline_seconds=self.cfg.shutdown_timeout)

        producers = [t for t, c in self._tasks.items() if c.role == "producer"]
        consumers = [t for t, c in self._tasks.items() if c.role != "producer"]
        # Producers hold nothing that is not read again after a restart: they get half the deadline to
        # reach a clean stopping point, then are cancelled so the consumers can use the rest to drain.
        producer_deadline = time.monotonic() + self.cfg.shutdown_timeout / 2
        stuck = await self._wait_until(producers, producer_deadline)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
        for queue in rt.queues.values():
            await queue.close()
        left = await self._wait_until(consumers, deadline)
        queued = sum(len(q) for q in rt.queues.values())
        if stuck:
            log.info("daemon.producers.cancelled", components=[self._tasks[t].name for t in stuck])
        if left or queued:
            forced = self._force.is_set()
            log.warning(
                "daemon.shutdown.incomplete",
                reason="second signal" if forced else "shutdown_timeout",
                components=[self._tasks[t].name for t in left if t in self._tasks],
                queued_items=queued,
            )
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
            if forced:
                self.exit_code = self.exit_code or 1
        for task in list(self._tasks):
            if task.done() and not task.cancelled() and task.exception() is not None:
                self._component_finished(task)
        self._tasks.clear()
        if self._watchdog:
            self._watchdog.cancel()
            with suppress(asyncio.CancelledError):
                await self._watchdog
        await self._close_runtime()
        self.notifier.close()
        if self._install_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(signum)
        log.info("daemon.stopped", exit_code=self.exit_code)

    async def _wait_until(self, tasks: list[asyncio.Task[None]], deadline: float) -> list[asyncio.Task[None]]:
        """Wait for tasks until the deadline or a second signal; returns those still running."""
        if not tasks:
            return []
        force = asyncio.ensure_future(self._force.wait())
        try:
            pending = set(tasks)
            while pending and not self._force.is_set():
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                done, _ = await asyncio.wait(pending | {force}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                pending -= done
        finally:
            force.cancel()
            with suppress(asyncio.CancelledError):
                await force
        return [t for t in tasks if not t.done()]

    async def _close_runtime(self) -> None:
        if self._admin:
            await self._admin.cleanup()
            self._admin = None
        if self.runtime:
            await self.runtime.session.close()
            await self.runtime.state.close()


def dump_tasks() -> None:
    """SIGUSR1: log where every asyncio task is waiting (for "it is stuck" reports)."""
    for task in asyncio.all_tasks():
        frames = [f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack()]
        log.warning("daemon.task", task=task.get_name(), stack=frames)


def _keep_fields(new: Config, old: Config, fields: list[str]) -> Config:
    """A copy of `new` whose restart-only settings are the running ones."""
    sections: dict[str, Any] = {}
    for dotted in fields:
        section, key = dotted.split(".", 1)
        current = sections.get(section, getattr(new, section))
        sections[section] = current.model_copy(update={key: getattr(getattr(old, section), key)})
    return new.model_copy(update=sections)
