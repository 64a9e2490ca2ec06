"""Settings this version accepts but does not act on yet, named so that nobody relies on them unawares."""

from __future__ import annotations

from .model import Config

_NOT_BUILT = "is accepted but not built yet in this version; it is ignored"


def unbuilt_settings(cfg: Config) -> list[str]:
    """One message per capability that *cfg* asks for and this version does not have yet.

    Built today: the export path to Brevo events, contacts and orders (connectors, including
    ``create_attributes``; sync.events, sync.user_properties, sync.revenue; event_mapping, property_mapping,
    identity, revenue, export, rate_limits, batching, state, admin, logging, shutdown_timeout), and the
    realtime ingest endpoint (ingest.*, but for the cohort webhooks). Everything
    else of SPEC §3 is validated, so that a config written for a later version is checked in full today, but
    nothing reads it.

    A capability counts as configured when the resolved config, defaults included, would make the full
    product do something — the same reading the daemon will give it once it is built — and not merely
    because its section is present:

    - ``cohorts``: ``sync.cohorts`` true and at least one entry (``cohort_guard`` only guards those).
    - ``lists``: a list id given for a segment; a segment without a list is not synced even when built.
    - ``user_activity.enabled``: true and there are segments or contact attributes for it to enrich
      (``sync.user_properties`` true and a ``property_mapping`` target besides the identity ones: the
      ``identity.email_property`` key, targets ``email``/``ext_id``).
    - ``ingest.webhook_token``: set while ``ingest.enabled`` (the realtime endpoint itself is built; its
      cohort webhook route is not).

    Each message starts with the key path to change.
    """
    out: list[str] = []
    identity = cfg.identity.email_property
    # Contact attributes written from property_mapping: what User Activity would enrich.
    attributes = [
        target
        for source, target in cfg.property_mapping.items()
        if source != identity and target.lower() not in ("email", "ext_id")
    ]
    user_properties = cfg.sync.user_properties and bool(attributes)

    if cfg.sync.cohorts and cfg.cohorts:
        ids = ", ".join(c.id for c in cfg.cohorts)
        out.append(f"cohorts (Amplitude cohorts {ids} -> Brevo lists, with cohort_guard) {_NOT_BUILT}")

    segment_lists = [name for name in type(cfg.lists).model_fields if getattr(cfg.lists, name) is not None]
    if segment_lists:
        names = ", ".join(segment_lists)
        ids = ", ".join(str(getattr(cfg.lists, name)) for name in segment_lists)
        out.append(f"lists (segments {names} -> Brevo lists {ids}, with segments.*) {_NOT_BUILT}")

    if cfg.user_activity.enabled and (segment_lists or user_properties):
        out.append(f"user_activity.enabled (profile enrichment from Amplitude User Activity) {_NOT_BUILT}")

    if cfg.ingest.enabled and cfg.ingest.webhook_token is not None:
        out.append(
            f"ingest.webhook_token (cohort webhooks, POST /webhooks/amplitude/cohort on {cfg.ingest.listen}) "
            f"{_NOT_BUILT}"
        )
    return out
