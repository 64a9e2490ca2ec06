"""Daemon lifecycle in-process: drain within the deadline, second stop signal, crash handling, reload swap."""

import asyncio

import orjson
import pytest
import structlog


class Producer:
    """Puts numbers into the `demo` queue until asked to stop."""

    role = "producer"

    def __init__(self, rt, name="producer"):
        self.rt, self.name, self.sent = rt, name, 0

    async def run(self):
        q = self.rt.queue("demo")
        while not self.rt.stopping.is_set():
            await q.put(self.sent)
            self.sent += 1
            await asyncio.sleep(0.001)

    def reload(self, cfg):
        pass


class Consumer:
    role = "consumer"
    name = "consumer"

    def __init__(self, rt, delay=0.0):
        self.rt, self.delay, self.got = rt, delay, []

    async def run(self):
        q = self.rt.queue("demo")
        while (batch := await q.next_batch()) is not None:
            await asyncio.sleep(self.delay)
            self.got.extend(batch)

    def reload(self, cfg):
        pass


async def test_stop_drains_everything_produced(make_daemon):
    made = {}

    def factory(rt):
        made["p"], made["c"] = Producer(rt), Consumer(rt)
        return [made["p"], made["c"]]

    daemon = make_daemon(components=factory, batching={"max_items": 10, "max_wait": "10ms"})
    task = asyncio.create_task(daemon.serve())
    await asyncio.sleep(0.2)
    daemon.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert made["p"].sent > 0
    assert made["c"].got == list(range(made["p"].sent)), "every produced item is consumed, in order"


async def test_second_stop_signal_exits_at_once(make_daemon):
    def factory(rt):
        return [Producer(rt), Consumer(rt, delay=30)]

    daemon = make_daemon(components=factory, shutdown_timeout="60s", batching={"max_items": 10, "max_wait": "1ms"})
    task = asyncio.create_task(daemon.serve())
    await asyncio.sleep(0.1)
    daemon.request_stop()
    await asyncio.sleep(0.1)
    assert not task.done(), "first signal waits for the slow consumer to drain"
    daemon.request_stop()
    assert await asyncio.wait_for(task, 5) == 1


async def test_shutdown_deadline_cancels_stragglers(make_daemon):
    def factory(rt):
        return [Producer(rt), Consumer(rt, delay=30)]

    daemon = make_daemon(components=factory, shutdown_timeout="1s", batching={"max_items": 10, "max_wait": "1ms"})
    task = asyncio.create_task(daemon.serve())
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    daemon.request_stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert loop.time() - started < 2


async def test_component_crash_stops_daemon_with_exit_1(make_daemon):
    class Broken:
        name, role = "broken", "producer"

        async def run(self):
            raise RuntimeError("boom")

        def reload(self, cfg):
            pass

    daemon = make_daemon(components=lambda rt: [Broken()])
    assert await asyncio.wait_for(daemon.serve(), 10) == 1


async def test_reload_swaps_config_and_keeps_queued_items(tmp_path, make_daemon, config_file):
    reloaded = []

    class Watcher:
        name, role = "watcher", "consumer"

        def __init__(self):
            self._stop = asyncio.Event()

        async def run(self):
            await self._stop.wait()

        def stop(self):
            self._stop.set()

        def reload(self, cfg):
            reloaded.append(cfg)

    daemon = make_daemon(config_path=config_file(), components=lambda rt: [Watcher()])
    await daemon.startup()
    try:
        q = daemon.runtime.queue("demo")
        await q.put_many(range(5))
        config_file(batching={"max_items": 3, "max_wait": "0s", "queue_capacity": 10},
                    rate_limits={"brevo_events": {"requests": 3, "per": "1s"}},
                    state={"path": str(tmp_path / "other.db")})
        assert await daemon.reload() is True
        assert reloaded and reloaded[0].batching.max_items == 3
        assert daemon.runtime.budgets["brevo_events"].rate.requests == 3
        assert daemon.cfg.state.path == str(tmp_path / "state.db"), "state.path needs a restart"
        assert len(q) == 5 and await q.next_batch() == [0, 1, 2]

        daemon.config_path.write_text("connectors: [")
        assert await daemon.reload() is False
        assert daemon.cfg.batching.max_items == 3
    finally:
        daemon.request_stop()
        await daemon.shutdown()


async def test_admin_endpoints(make_daemon):
    import aiohttp

    daemon = make_daemon()
    await daemon.startup()
    try:
        base = f"http://127.0.0.1:{daemon.admin_port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/healthz") as r:
                assert r.status == 200
            async with s.get(base + "/readyz") as r:
                assert r.status == 200
            async with s.get(base + "/metrics") as r:
                text = await r.text()
                assert r.status == 200 and "amplitude_brevo_config_reloads_total" in text
    finally:
        await daemon.shutdown()


class RecordingNotifier:
    """Stands in for sd_notify: records the order of READY against the components' start()."""

    watchdog_interval = None

    def __init__(self, events):
        self.events = events

    def ready(self, status=None):
        self.events.append("READY")

    def reloading(self):
        self.events.append("RELOADING")

    def stopping(self, status=None):
        self.events.append("STOPPING")

    def status(self, text):
        pass

    def watchdog(self):
        pass

    def close(self):
        pass


class Stoppable:
    """A component with the full lifecycle: start() before READY, run() until stop()."""

    def __init__(self, name, role, events):
        self.name, self.role, self.events = name, role, events
        self._stop = asyncio.Event()

    async def start(self):
        self.events.append(f"start {self.name}")

    async def run(self):
        await self._stop.wait()
        self.events.append(f"stopped {self.name}")

    def stop(self):
        self._stop.set()

    def reload(self, cfg):
        self.events.append(f"reload {self.name}")


async def test_components_start_before_ready(make_daemon):
    events = []
    daemon = make_daemon(notifier=RecordingNotifier(events), components=lambda rt: [
        Stoppable("sink", "consumer", events), Stoppable("source", "producer", events)])
    await daemon.startup()
    try:
        assert events == ["start sink", "start source", "READY"]
    finally:
        await daemon.shutdown()
    assert set(events[-2:]) == {"stopped sink", "stopped source"}, "both were asked to stop and did"


async def test_a_failing_start_never_reports_ready_and_cleans_up(make_daemon):
    events = []

    class Broken(Stoppable):
        async def start(self):
            raise OSError("cannot bind")

    daemon = make_daemon(notifier=RecordingNotifier(events), components=lambda rt: [
        Stoppable("ok", "consumer", events), Broken("broken", "producer", events)])
    from amplitude_brevo.app import StartupError

    with pytest.raises(StartupError, match="component broken cannot start: cannot bind"):
        await daemon.startup()
    assert "READY" not in events
    assert daemon.runtime.state.closed, "the state file is closed again"


async def test_reload_reconciles_the_component_set_with_the_config(make_daemon, config_file):
    """Switching a path off stops its components; on again starts new ones; the rest reload in place."""
    events = []
    made = []

    def factory(rt):
        components = [Stoppable("always", "consumer", events)]
        if rt.cfg.sync.events:
            components.append(Stoppable("events", "producer", events))
        made.extend(components)
        return components

    daemon = make_daemon(config_path=config_file(), components=factory)
    await daemon.startup()
    try:
        first_events = daemon.components["events"]
        config_file(sync={"events": False})
        assert await daemon.reload() is True
        assert set(daemon.components) == {"always"}
        assert "stopped events" in events and "reload always" in events
        assert daemon.components["always"] is made[0], "a component still wanted is kept, not restarted"
        config_file()
        assert await daemon.reload() is True
        assert set(daemon.components) == {"always", "events"}
        assert daemon.components["events"] is not first_events, "switched on again: a new instance"
        assert events.count("start events") == 2
    finally:
        await daemon.shutdown()


async def test_a_stopped_source_leaves_no_item_behind_in_a_queue_or_in_flight(make_daemon, config_file):
    """The items a retired producer had queued are dropped and their keys leave the in-flight set, so its
    successor (reading again from the checkpoint) queues them again."""
    from amplitude_brevo.pipeline.acks import OffsetTracker
    from amplitude_brevo.pipeline.items import Item

    events = []

    class Source(Stoppable):
        def __init__(self, rt):
            super().__init__("source", "producer", events)
            self.tracker = OffsetTracker("test", "test", str)

    def factory(rt):
        return [Stoppable("keeper", "consumer", events), Source(rt)] if rt.cfg.sync.events else [
            Stoppable("keeper", "consumer", events)]

    daemon = make_daemon(config_path=config_file(), components=factory)
    await daemon.startup()
    try:
        rt = daemon.runtime
        source = daemon.components["source"]
        other = OffsetTracker("other", "other", str)
        queue = rt.queue("brevo_events")
        await queue.put_many([Item("events:1", b"{}", source.tracker.token(1)), Item("events:2", b"{}", other.token(1))])
        source.tracker.add(1, 1)
        other.add(1, 1)
        rt.dedupe.inflight.update({"events:1", "events:2"})
        config_file(sync={"events": False})
        assert await daemon.reload() is True
        assert [i.key for i in await queue.discard()] == ["events:2"], "only the retired source's items go"
        assert rt.dedupe.inflight == {"events:2"}
        assert source.tracker.closed and source.tracker.outstanding == 0
    finally:
        await daemon.shutdown()


async def test_a_source_replaced_while_its_items_are_in_flight_waits_for_their_answers(make_daemon, config_file):
    """Its successor must not start while a sink still has the old source's items in flight: it would skip
    them as "on their way" and could move the checkpoint past them before their answer is recorded."""
    from amplitude_brevo.pipeline.acks import OffsetTracker

    events = []

    class Source(Stoppable):
        def __init__(self, rt):
            super().__init__("source", "producer", events)
            self.tracker = OffsetTracker("test", "test", str)
            self.sinks = tuple(sorted(rt.cfg.event_mapping))  # a new mapping: a new set of sinks

    daemon = make_daemon(config_path=config_file(), components=lambda rt: [Source(rt)])
    await daemon.startup()
    try:
        old = daemon.components["source"]
        old.tracker.add(1, 1)  # one item in a sink's request
        config_file(event_mapping={"Other": "other"})
        reload = asyncio.create_task(daemon.reload())
        await asyncio.sleep(0.05)
        assert not reload.done() and daemon.components.get("source") is None, "waiting for the answer"
        old.tracker.done(1)  # Brevo answered, the acknowledger recorded it
        assert await asyncio.wait_for(reload, 5) is True
        assert daemon.components["source"] is not old
    finally:
        await daemon.shutdown()


async def test_dlq_size_counts_the_dead_letters_on_file_and_those_added_since(make_config, make_daemon):
    import aiohttp

    from amplitude_brevo.state import DeadLetter, StateStore

    cfg = make_config()
    async with await StateStore.open(cfg.state.path) as state:
        await state.add_dead_letters([DeadLetter("export", "brevo_events", {"n": n}, "bad") for n in range(3)])
    daemon = make_daemon(cfg)
    await daemon.startup()

    async def gauge() -> float:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{daemon.admin_port}/metrics") as r:
            text = await r.text()
        return float(next(line for line in text.splitlines() if line.startswith("amplitude_brevo_dlq_size ")).split()[1])

    try:
        assert await gauge() == 3
        await daemon.runtime.acks.dead_letter([DeadLetter("export", "brevo_events", {"n": 9}, "bad")])
        assert await gauge() == 4
    finally:
        await daemon.shutdown()


async def test_readyz_fails_while_a_health_check_fails(make_daemon):
    import aiohttp

    daemon = make_daemon()
    await daemon.startup()
    try:
        url = f"http://127.0.0.1:{daemon.admin_port}/readyz"
        async with aiohttp.ClientSession() as s:
            daemon.runtime.health.fail("brevo /events", "HTTP 404 (not a Brevo answer)", "check connectors.brevo.api_url")
            async with s.get(url) as r:
                body = await r.json()
                assert r.status == 503 and body["failing"]["brevo /events"]["hint"] == "check connectors.brevo.api_url"
            daemon.runtime.health.ok("brevo /events")
            async with s.get(url) as r:
                assert r.status == 200
    finally:
        await daemon.shutdown()


async def test_a_reload_warns_about_a_newly_configured_capability_that_is_not_built(make_daemon, config_file, capsys):
    daemon = make_daemon(config_path=config_file())
    await daemon.startup()
    try:
        config_file(cohorts=[{"id": "c1", "list_id": 5}])
        capsys.readouterr()
        assert await daemon.reload() is True  # the reload configures logging anew: JSON lines on stdout
        lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        structlog.reset_defaults()  # not onto capsys's stream, which closes after this test
        warned = [e["detail"] for e in lines if e["event"] == "config.not_built"]
        assert len(warned) == 1 and warned[0].startswith("cohorts")
    finally:
        await daemon.shutdown()


async def test_a_producer_deaf_to_the_stop_is_cancelled_after_a_short_grace(make_daemon):
    """A long download only sees the stop between chunks: it is cancelled (its window is read again after
    the restart) instead of holding the exit for the whole shutdown_timeout."""
    import amplitude_brevo.app as app_module

    class Deaf:
        name, role = "deaf", "producer"

        async def run(self):
            await asyncio.Event().wait()

        def reload(self, cfg):
            pass

    daemon = make_daemon(components=lambda rt: [Deaf()], shutdown_timeout="30s")
    task = asyncio.create_task(daemon.serve())
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    daemon.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert loop.time() - started < app_module.PRODUCER_GRACE + 1


def test_queue_sizes_by_sink():
    from types import SimpleNamespace

    from amplitude_brevo.app import queue_size

    batching = SimpleNamespace(max_items=1000, queue_capacity=50_000)
    assert queue_size("brevo_events", batching) == {"max_items": 1000, "capacity": 50_000}
    # Contacts: one import (and one /processes poll) per 5,000 contacts at most.
    assert queue_size("brevo_contacts", batching) == {"max_items": 5000, "capacity": 50_000}
    assert queue_size("brevo_contacts", SimpleNamespace(max_items=1000, queue_capacity=2000))["capacity"] == 5000
    # The folder's queue: two of its batches, not the whole capacity.
    assert queue_size("profiles", batching) == {"max_items": 10_000, "capacity": 20_000}
