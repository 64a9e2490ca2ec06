"""Which producers and consumers a daemon runs, derived from its config."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from .app import Component, Runtime
from .clients.amplitude import AmplitudeClient
from .pipeline.acks import hour_key
from .sinks.brevo_client import BrevoClient
from .sinks.brevo_events import BrevoEventsSink
from .sources.amplitude_export import ExportSource


def brevo_client(runtime: Runtime) -> BrevoClient:
    brevo = runtime.cfg.connectors.brevo
    return BrevoClient(
        runtime.session, base_url=brevo.api_url, api_key=brevo.api_key, budgets=runtime.budgets, metrics=runtime.metrics
    )


def amplitude_client(runtime: Runtime) -> AmplitudeClient:
    amp = runtime.cfg.connectors.amplitude
    return AmplitudeClient(
        runtime.session, api_url=amp.api_url, api_key=amp.api_key, secret_key=amp.secret_key, metrics=runtime.metrics
    )


def export_pipeline(
    runtime: Runtime,
    *,
    checkpoint_name: str = "export.next_hour",
    start: datetime | None = None,
    end: datetime | None = None,
    dry_run: bool = False,
) -> tuple[ExportSource, BrevoEventsSink]:
    """The export tail (or a backfill range) feeding the Brevo events sink."""
    cfg = runtime.cfg
    queue = runtime.queue("brevo_events")
    amp = amplitude_client(runtime)
    source = ExportSource(
        cfg=cfg, state=runtime.state, client=amp, queue=queue, stopping=runtime.stopping,
        checkpoint_name=checkpoint_name, start=start, end=end, metrics=runtime.metrics, dry_run=dry_run,
    )
    sink = BrevoEventsSink(
        queue=queue, client=brevo_client(runtime), state=runtime.state,
        batch_size=cfg.connectors.brevo.events_batch_size, dry_run=dry_run, metrics=runtime.metrics,
    )
    return source, sink


def backfill_checkpoint(start: datetime, end: datetime) -> str:
    return f"backfill.{hour_key(start)}-{hour_key(end)}"


def default_components(runtime: Runtime, *, dry_run: bool = False) -> Sequence[Component]:
    """The components enabled by `runtime.cfg`."""
    cfg = runtime.cfg
    components: list[Component] = []
    if cfg.connectors.amplitude.enabled and cfg.sync.events and cfg.event_mapping:
        components.extend(export_pipeline(runtime, dry_run=dry_run))
    return components
