"""Prometheus metrics of one daemon instance, served on `admin.listen` at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class Metrics:
    """Every metric the daemon exports, on a registry of its own (tests run several daemons per process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.items_in = Counter("amplitude_brevo_items_in_total", "Items read, by source", ["source"], registry=r)
        self.items_out = Counter(
            "amplitude_brevo_items_out_total", "Items finished, by sink and outcome", ["sink", "outcome"], registry=r
        )
        self.queue_depth = Gauge("amplitude_brevo_queue_depth", "Items waiting in a sink's queue", ["sink"], registry=r)
        self.batch_latency = Histogram(
            "amplitude_brevo_batch_latency_seconds",
            "Time from sending a batch to its final answer",
            ["sink"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.limiter_wait = Counter(
            "amplitude_brevo_limiter_wait_seconds_total", "Seconds spent waiting on a rate budget", ["budget"], registry=r
        )
        self.http_responses = Counter(
            "amplitude_brevo_http_responses_total", "HTTP responses received, by API and status", ["api", "status"], registry=r
        )
        self.export_lag = Gauge(
            "amplitude_brevo_export_lag_seconds", "Age of the newest fully delivered export hour's end", registry=r
        )
        self.dlq_size = Gauge("amplitude_brevo_dlq_size", "Dead letters not yet replayed", registry=r)
        self.reloads = Counter("amplitude_brevo_config_reloads_total", "Config reloads, by result", ["result"], registry=r)
        self.attributes_dropped = Counter(
            "amplitude_brevo_attributes_dropped_total", "Mapped values that could not be converted to their Brevo "
            "attribute's type (the rest of the contact is still written)", ["attribute"], registry=r
        )
        self.contacts_folded = Counter(
            "amplitude_brevo_contacts_folded_total", "Profile snapshots folded, by result (new, changed, unchanged)",
            ["result"], registry=r
        )
        self.errors = Counter("amplitude_brevo_errors_total", "Errors, by component and kind", ["component", "kind"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
