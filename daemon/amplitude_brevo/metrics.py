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
        # The ingest endpoint (ingest/server.py), its spool and the forwarder to Amplitude (ingest/forwarder.py).
        self.ingest_requests = Counter(
            "amplitude_brevo_ingest_requests_total", "Requests the ingest endpoint answered, by endpoint and HTTP "
            "status", ["endpoint", "code"], registry=r
        )
        self.ingest_refused = Counter(
            "amplitude_brevo_ingest_refused_requests_total", "Requests the ingest endpoint refused, by reason "
            "(forbidden, too_large, malformed, missing_field, invalid_api_key, invalid_events, spool_full, "
            "spool_error)", ["reason"], registry=r
        )
        self.ingest_events = Counter(
            "amplitude_brevo_ingest_events_total", "Events and identifications the ingest endpoint spooled "
            "(accepted) or refused, by outcome; a request refused before its events are counted is only in "
            "amplitude_brevo_ingest_refused_requests_total", ["outcome"], registry=r
        )
        self.ingest_latency = Histogram(
            "amplitude_brevo_ingest_request_latency_seconds",
            "Time from receiving an ingest request to its 200 (the spool commit included)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.ingest_spool_rows = Gauge("amplitude_brevo_ingest_spool_rows", "Requests in the ingest spool", registry=r)
        self.ingest_spool_bytes = Gauge(
            "amplitude_brevo_ingest_spool_bytes", "Body bytes of the requests in the ingest spool", registry=r
        )
        self.ingest_forwarded = Counter(
            "amplitude_brevo_ingest_forwarded_total", "Spooled events and identifications forwarded to Amplitude, "
            "by outcome (delivered, dead_lettered; throttled: held back by a 429, counted at each)", ["outcome"],
            registry=r
        )
        self.errors = Counter("amplitude_brevo_errors_total", "Errors, by component and kind", ["component", "kind"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
