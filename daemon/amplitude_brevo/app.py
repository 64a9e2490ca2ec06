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
from .config import Config, ConfigError, load_config, secret_values, unbuilt_settings
from .health import Health
from .ingest.bell import SpoolBell
from .logs import configure_logging, get_logger
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .notify import Notifier
from .pipeline.acks import Acknowledger
from .pipeline.dedupe import DedupeRecord
from .pipeline.queue import BatchQueue
from .sinks.budgets import Budgets
from .state import StateLocked, StateStore

log = get_logger("daemon")

PRODUCER_GRACE = 1.0  # seconds a producer gets to reach its next stopping point at shutdown

# Settings read once at startup: a reload that changes them says so and keeps the running value.
RESTART_REQUIRED = ("state.path", "admin.listen", "ingest.listen", "ingest.enabled")


class Signal(enum.Enum):
    STOP = "stop"
    RELOAD = "reload"


class StartupError(Exception):
    """The daemon cannot start (state file, listen address ...); the message says why."""


@dataclass
class Runtime:
    """What every component shares: the live config, state, budgets, queues, HTTP session and metrics,
    readiness, the one dedupe record and the one acknowledger (the checkpoint writer)."""

    cfg: Config
    state: StateStore
    budgets: Budgets
    metrics: Metrics
    session: aiohttp.ClientSession
    health: Health = field(default_factory=Health)
    dedupe: DedupeRecord = None  # type: ignore[assignment]  # set in __post_init__
    acks: Acknowledger = None  # type: ignore[assignment]
    queues: dict[str, BatchQueue[Any]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    spool_bell: SpoolBell = field(default_factory=SpoolBell)  # the ingest server's commits wake the spool's readers

    def __post_init__(self) -> None:
        if self.dedupe is None:
            self.dedupe = DedupeRecord(self.state, self.cfg.state.dedupe_window, metrics=self.metrics)
        if self.acks is None:
            self.acks = Acknowledger(self.state, self.dedupe, metrics=self.metrics)

    def queue(self, sink: str) -> BatchQueue[Any]:
        """The batching queue of one sink, created on first use with the configured batching."""
        if sink not in self.queues:
            b = self.cfg.batching
            self.queues[sink] = BatchQueue(sink, max_wait=b.max_wait, **queue_size(sink, b))
        return self.queues[sink]


# The profile folder's queue is drained by local work, never by Brevo's budgets. Its batches are larger (one
# SQLite transaction folds a batch, and the larger the batch the more snapshots of one user it coalesces),
# and it holds two of them: room enough to keep the folder busy, no memory spent on snapshots waiting.
PROFILE_BATCH_FACTOR = 10


# The contacts sink's batches are larger too: their new contacts go in one /contacts/import, and each import
# costs a /processes poll from the "other" budget (100 an hour on the general plan): the fewer, the better.
CONTACTS_BATCH_FACTOR = 5


def queue_size(sink: str, batching: Any) -> dict[str, int]:
    """`max_items` and `capacity` of a sink's queue."""
    if sink == "profiles":
        batch = PROFILE_BATCH_FACTOR * batching.max_items
        return {"max_items": batch, "capacity": max(batch, min(batching.queue_capacity, 2 * batch))}
    if sink == "brevo_contacts":
        batch = CONTACTS_BATCH_FACTOR * batching.max_items
        return {"max_items": batch, "capacity": max(batch, batching.queue_capacity)}
    return {"max_items": batching.max_items, "capacity": batching.queue_capacity}


class Component(Protocol):
    """A producer (reads a source, puts into queues) or a consumer (drains a queue into a sink).

    `start()` (optional) runs before READY=1: bind listeners, open clients, prepare directories. `run()`
    is the component's task. `stop()` (optional) asks it to finish: a producer stops reading at its next
    unit of work; a sink takes no new batch and sends nothing more, lets the requests in flight finish and
    records them, then `run()` returns. A producer's `sinks` (optional) names the sinks it feeds: when a
    reload changes them, the producer is replaced. `collect_metrics()` (optional) runs at each scrape.
    """

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
        self.components: dict[str, Component] = {}
        self._tasks: dict[asyncio.Task[None], Component] = {}
        self._expiry: asyncio.Task[None] | None = None
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
        except StateLocked as exc:  # another daemon, backfill or replay on this file: it names the holder
            raise StartupError(str(exc)) from exc
        except Exception as exc:  # StateError (corrupt, foreign, too new) and OS errors: a clear message, never a reset
            raise StartupError(f"cannot open state file {self.cfg.state.path}: {exc}") from exc
        self.runtime = rt = Runtime(
            cfg=self.cfg,
            state=state,
            budgets=Budgets(
                self.cfg.rate_limits, on_wait=lambda name, s: self.metrics.limiter_wait.labels(budget=name).inc(s)
            ),
            metrics=self.metrics,
            session=make_session(),
        )
        try:
            self.metrics.dlq_size.set(sum((await state.dead_letter_counts()).values()))
            rt.acks.on_dead_letters = self.metrics.dlq_size.inc
            if self._admin_enabled:
                try:
                    await self._start_admin()
                except OSError as exc:
                    raise StartupError(
                        f"cannot listen on admin.listen {self.cfg.admin.listen}: {exc.strerror or exc}") from exc
            for component in self._component_factory(rt):
                try:
                    await self._launch(component)
                except OSError as exc:  # a listener that cannot bind, a directory that cannot be made …
                    raise StartupError(f"component {component.name} cannot start: {exc}") from exc
        except BaseException:
            await self._abort_startup()
            raise
        self._expiry = asyncio.create_task(rt.dedupe.expire_loop(), name="dedupe-expiry")
        if self.notifier.watchdog_interval:
            self._watchdog = asyncio.create_task(self._watchdog_loop(self.notifier.watchdog_interval), name="watchdog")
        self._ready = True
        self.notifier.ready(status="running")
        log.info(
            "daemon.started",
            components=list(self.components),
            state=str(state.path),
            admin=self.cfg.admin.listen,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _launch(self, component: Component) -> None:
        """`start()` the component, then run it as a task of its own."""
        start = getattr(component, "start", None)
        if start is not None:
            await start()
        self.components[component.name] = component
        task = asyncio.create_task(component.run(), name=component.name)
        self._tasks[task] = component

    async def _abort_startup(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._close_runtime()

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
            for component in self.components.values():
                collect = getattr(component, "collect_metrics", None)
                if collect is not None:
                    collect()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready_handler(self, request: web.Request) -> web.Response:
        failing = self.runtime.health.failing if self.runtime else {}
        ok = self._ready and not self._stopping and not failing
        body: dict[str, Any] = {"ready": ok}
        if failing:
            body["failing"] = {check: {"reason": f.reason, "hint": f.hint} for check, f in failing.items()}
        return web.json_response(body, status=200 if ok else 503)

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
        if self.components.get(component.name) is component:
            del self.components[component.name]
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
        known = set(unbuilt_settings(old))
        for message in unbuilt_settings(new):
            if message not in known:  # what start-up said already is not repeated on every reload
                get_logger("config").warning("config.not_built", detail=message)
        self.cfg = new
        if self.runtime:
            rt = self.runtime
            rt.cfg = new
            rt.budgets.reconfigure(new.rate_limits)
            rt.dedupe.window = new.state.dedupe_window
            b = new.batching
            for name, queue in rt.queues.items():
                # Through reconfigure(): a larger capacity must wake producers waiting on a full queue.
                await queue.reconfigure(max_wait=b.max_wait, **queue_size(name, b))
            await self._reconcile(new)
        log.info("config.reloaded", path=str(self.config_path), changed=changed)

    async def _reconcile(self, cfg: Config) -> None:
        """Make the running components the ones the new config asks for: a component whose name is gone
        (or a producer whose sinks changed) is stopped, new ones are started, the rest reload in place."""
        assert self.runtime is not None
        desired = {c.name: c for c in self._component_factory(self.runtime)}
        retired = [c for name, c in self.components.items()
                   if name not in desired or _signature(desired[name]) != _signature(c)]
        # Producers first: nothing is put into a sink's queue once it stops, and their queued items go.
        for component in sorted(retired, key=lambda c: c.role != "producer"):
            await self._retire(component)
        started = []
        for component in sorted(desired.values(), key=lambda c: c.role == "producer"):
            if component.name in self.components:
                self.components[component.name].reload(cfg)
            else:
                await self._launch(component)
                started.append(component.name)
        if retired or started:
            log.info("config.components", stopped=[c.name for c in retired], started=started)

    async def _retire(self, component: Component) -> None:
        """Stop one component (in-flight requests finish) and forget what it left unacknowledged."""
        assert self.runtime is not None
        rt = self.runtime
        stop = getattr(component, "stop", None)
        if stop is not None:
            stop()
        tasks = [t for t, c in self._tasks.items() if c is component]
        left = await self._wait_until(tasks, time.monotonic() + self.cfg.shutdown_timeout)
        for task in left:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            self._component_finished(task)
        tracker = getattr(component, "tracker", None)
        if tracker is not None:
            # The source is gone: its positions will be read again by its successor, from the checkpoint.
            tracker.close()
            for queue in rt.queues.values():
                dropped = await queue.discard(lambda item: item.token.tracker is tracker)
                rt.dedupe.released([i.key for i in dropped if i.key is not None])
                for item in dropped:
                    tracker.done(item.token.position)
            # Items of it that a sink still has in flight keep their keys in flight until Brevo answers:
            # the successor must not start before, or it would skip them as "on their way" and could move
            # its checkpoint past them while their answer is still unrecorded.
            try:
                await asyncio.wait_for(tracker.wait_idle(), self.cfg.shutdown_timeout)
            except TimeoutError:
                log.warning("component.stop.in_flight", component=component.name, items=tracker.outstanding)
        elif component.role != "producer" and component.name in rt.queues:
            dropped = await rt.queues[component.name].discard()
            rt.dedupe.released([i.key for i in dropped if getattr(i, "key", None) is not None])
        log.info("component.stopped", component=component.name, cancelled=bool(left))

    # -- shutdown --
    async def shutdown(self) -> None:
        if self.runtime is None:
            return
        self._stopping = True
        self.notifier.stopping(status="draining")
        deadline = time.monotonic() + self.cfg.shutdown_timeout
        rt = self.runtime
        rt.stopping.set()
        queued = sum(len(q) for q in rt.queues.values())
        log.info("daemon.stopping", deadline_seconds=self.cfg.shutdown_timeout, queued_items=queued)
        # Everything stops at once: producers at their next unit of work, sinks after the requests they
        # have in flight (recorded as Brevo answers them). What is only queued stays unacknowledged and is
        # read again on the next start — never cut off mid-request by draining a backlog against a deadline.
        for component in list(self.components.values()):
            stop = getattr(component, "stop", None)
            if stop is not None:
                stop()
        for queue in rt.queues.values():
            await queue.close()  # wakes producers blocked on a full queue and consumers waiting for items
        # A producer holds nothing that is not read again after a restart: one still busy after a short grace
        # (a long download that only notices the stop between chunks) is cancelled, not waited for.
        producers = [t for t, c in self._tasks.items() if c.role == "producer"]
        busy = await self._wait_until(producers, min(deadline, time.monotonic() + PRODUCER_GRACE))
        if busy:
            log.info("daemon.producers.cancelled", components=[self._tasks[t].name for t in busy])
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
        tasks = [t for t in self._tasks if not t.done()]
        left = await self._wait_until(tasks, deadline)
        if left:
            forced = self._force.is_set()
            log.warning(
                "daemon.shutdown.incomplete",
                reason="second signal" if forced else "shutdown_timeout",
                components=[self._tasks[t].name for t in left if t in self._tasks],
                queued_items=sum(len(q) for q in rt.queues.values()),
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
        self.components.clear()
        if self._expiry:
            self._expiry.cancel()
            with suppress(asyncio.CancelledError):
                await self._expiry
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


def _signature(component: Component) -> tuple[str, tuple[str, ...]]:
    """What must stay equal for a running component to be reloaded in place rather than replaced."""
    return component.role, tuple(getattr(component, "sinks", ()))


def _keep_fields(new: Config, old: Config, fields: list[str]) -> Config:
    """A copy of `new` whose restart-only settings are the running ones."""
    sections: dict[str, Any] = {}
    for dotted in fields:
        section, key = dotted.split(".", 1)
        current = sections.get(section, getattr(new, section))
        sections[section] = current.model_copy(update={key: getattr(getattr(old, section), key)})
    return new.model_copy(update=sections)
