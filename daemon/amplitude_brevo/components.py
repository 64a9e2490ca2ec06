"""Which producers and consumers a daemon runs, derived from its config (again on every reload)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from .app import Component, Runtime
from .clients.amplitude import AmplitudeClient, export_temp_dir
from .contacts.folder import ProfileFolder
from .contacts.outbox import ContactOutbox
from .durations import hour_key
from .ingest.forwarder import AmplitudeForwarder
from .ingest.listener import IngestListener
from .pipeline.remap import CONTACTS_SINK, EVENTS_SINK, ORDERS_SINK, PROFILES_SINK, enabled_sinks
from .sinks.brevo_client import BrevoClient
from .sinks.brevo_contacts import BrevoContactsSink
from .sinks.brevo_events import BrevoEventsSink
from .sinks.brevo_orders import BrevoOrdersSink
from .sources.amplitude_export import TAIL_CHECKPOINT, ExportSource
from .sources.ingest_spool import SpoolSource, spool_readers
from .usage import usage_components


def brevo_client(runtime: Runtime, stop: asyncio.Event) -> BrevoClient:
    """A client for one sink: `stop` is that sink's, so switching one path off stops only its requests."""
    brevo = runtime.cfg.connectors.brevo
    return BrevoClient(
        runtime.session, base_url=brevo.api_url, api_key=brevo.api_key, budgets=runtime.budgets,
        metrics=runtime.metrics, stop=stop, health=runtime.health,
    )


def amplitude_client(runtime: Runtime) -> AmplitudeClient:
    amp = runtime.cfg.connectors.amplitude
    return AmplitudeClient(
        runtime.session, api_url=amp.api_url, api_key=amp.api_key, secret_key=amp.secret_key,
        metrics=runtime.metrics, temp_dir=str(export_temp_dir(runtime.cfg.state.path)),
    )


def sink_components(runtime: Runtime, *, dry_run: bool = False, historical: bool = False,
                    upstream: asyncio.Event | None = None) -> list[Component]:
    """One consumer per sink the config switches on; with profiles, the folder, the contact outbox (a
    producer reading the state file) and the contacts sink behind it.

    `historical`: orders are a back-fill (`backfill`: no automation triggered). `upstream`: set once the
    export has read everything (burst mode), when the outbox finishes after its last pending write."""
    cfg = runtime.cfg
    brevo = cfg.connectors.brevo
    enabled = enabled_sinks(cfg)
    sinks: list[Component] = []
    if EVENTS_SINK in enabled:
        sinks.append(BrevoEventsSink(
            queue=runtime.queue(EVENTS_SINK), client=brevo_client(runtime, asyncio.Event()), acks=runtime.acks,
            batch_size=brevo.events_batch_size, dry_run=dry_run, metrics=runtime.metrics,
        ))
    if ORDERS_SINK in enabled:
        sinks.append(BrevoOrdersSink(
            queue=runtime.queue(ORDERS_SINK), client=brevo_client(runtime, asyncio.Event()), acks=runtime.acks,
            historical=historical, batch_size=1000, dry_run=dry_run, metrics=runtime.metrics,
        ))
    if PROFILES_SINK in enabled:
        outbox = ContactOutbox(queue=runtime.queue(CONTACTS_SINK), state=runtime.state, acks=runtime.acks,
                               dry_run=dry_run, upstream=upstream, window=cfg.batching.max_wait)
        sinks.append(ProfileFolder(
            cfg=cfg, queue=runtime.queue(PROFILES_SINK), state=runtime.state, acks=runtime.acks,
            client=brevo_client(runtime, asyncio.Event()), metrics=runtime.metrics, on_pending=outbox.wake,
        ))
        sinks.append(BrevoContactsSink(
            queue=runtime.queue(CONTACTS_SINK), client=brevo_client(runtime, asyncio.Event()), acks=runtime.acks,
            identified=runtime.state.contacts_identified, batch_size=brevo.contacts_batch_size,
            import_min=brevo.contacts_import_min, import_list_id=brevo.import_list_id, dry_run=dry_run,
            metrics=runtime.metrics,
        ))
        sinks.append(outbox)
    return sinks


def export_source(
    runtime: Runtime,
    *,
    checkpoint_name: str = TAIL_CHECKPOINT,
    start: datetime | None = None,
    end: datetime | None = None,
    dry_run: bool = False,
) -> ExportSource | None:
    """The export tail (or a backfill range) feeding every sink its rows map to; None when there is none."""
    cfg = runtime.cfg
    sinks = enabled_sinks(cfg)
    if not cfg.connectors.amplitude.enabled or not sinks:
        return None
    return ExportSource(
        cfg=cfg, client=amplitude_client(runtime), queues={sink: runtime.queue(sink) for sink in sinks},
        dedupe=runtime.dedupe, acks=runtime.acks, checkpoint_name=checkpoint_name, start=start, end=end,
        metrics=runtime.metrics, health=runtime.health, dry_run=dry_run,
    )


def ingest_components(runtime: Runtime) -> list[Component]:
    """With `ingest.enabled`: the listener, the forwarder to Amplitude, the spool's producer into Brevo."""
    cfg = runtime.cfg
    if not cfg.ingest.enabled:
        return []
    release = spool_readers(cfg)
    components: list[Component] = [IngestListener(cfg=cfg, state=runtime.state, bell=runtime.spool_bell,
                                                               metrics=runtime.metrics)]
    if cfg.ingest.forward_to_amplitude:
        amp = cfg.connectors.amplitude
        components.append(AmplitudeForwarder(
            state=runtime.state, session=runtime.session, ingest_url=amp.ingest_url, api_key=amp.api_key,
            release=release, bell=runtime.spool_bell, metrics=runtime.metrics,
        ))
    sinks = enabled_sinks(cfg)
    if sinks:
        components.append(SpoolSource(
            cfg=cfg, queues={sink: runtime.queue(sink) for sink in sinks}, dedupe=runtime.dedupe,
            acks=runtime.acks, release=release, metrics=runtime.metrics, bell=runtime.spool_bell,
        ))
    return components


def backfill_checkpoint(start: datetime, end: datetime) -> str:
    return f"backfill.{hour_key(start)}-{hour_key(end)}"


def default_components(runtime: Runtime, *, dry_run: bool = False) -> Sequence[Component]:
    """The components enabled by `runtime.cfg`."""
    components: list[Component] = [*sink_components(runtime, dry_run=dry_run), *usage_components(runtime)]
    source = export_source(runtime, dry_run=dry_run)
    if source is not None:
        components.append(source)
    if not dry_run:
        components.extend(ingest_components(runtime))
    return components
