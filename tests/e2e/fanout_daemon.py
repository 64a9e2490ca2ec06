"""A daemon whose export rows fan out to two sinks, for the fan-out kill test: `python -m tests.e2e.fanout_daemon
CONFIG`.

The real daemon (config, Daemon lifecycle, ExportSource, two real BrevoEventsSinks against the sandbox),
except that every mapped row yields a second item: `copy:<insert id>` for the sink `brevo_copy`, whose
Brevo event name is prefixed `copy_`. Rows are mapped in this process (`export.readers: 0`), where the
extra output is added.
"""

from __future__ import annotations

import asyncio
import sys

from amplitude_brevo.app import Daemon
from amplitude_brevo.components import amplitude_client, brevo_client
from amplitude_brevo.config import load_config, secret_values
from amplitude_brevo.logs import configure_logging
from amplitude_brevo.pipeline.remap import EVENTS_SINK
from amplitude_brevo.sinks.brevo_events import BrevoEventsSink
from amplitude_brevo.sources import member_mapper
from amplitude_brevo.sources.amplitude_export import ExportSource

COPY_SINK = "brevo_copy"
_map_member = member_mapper.map_member


def map_member_with_copies(archive, member, rules, **kwargs):
    for chunk in _map_member(archive, member, rules, **kwargs):
        events = chunk.outputs.get(EVENTS_SINK)
        if events is not None:
            chunk.outputs[COPY_SINK] = member_mapper.SinkOutput(
                ["copy:" + key.split(":", 1)[1] for key in events.keys],
                [body.replace(b'{"event_name":"', b'{"event_name":"copy_', 1) for body in events.bodies],
            )
        yield chunk


def components(rt):
    cfg = rt.cfg
    sinks = [
        BrevoEventsSink(queue=rt.queue(name), client=brevo_client(rt, asyncio.Event()), acks=rt.acks, name=name,
                        batch_size=cfg.connectors.brevo.events_batch_size, metrics=rt.metrics)
        for name in (EVENTS_SINK, COPY_SINK)
    ]
    source = ExportSource(cfg=cfg, client=amplitude_client(rt), queues={s.name: s.queue for s in sinks},
                          dedupe=rt.dedupe, acks=rt.acks, metrics=rt.metrics, health=rt.health)
    return [*sinks, source]


def main() -> int:
    member_mapper.map_member = map_member_with_copies
    cfg = load_config(sys.argv[1])
    assert cfg.export.readers == 0, "the copies are added in this process"
    configure_logging(cfg.logging.level, cfg.logging.format, secret_values(cfg))
    return asyncio.run(Daemon(cfg, config_path=sys.argv[1], components=components).serve())


if __name__ == "__main__":
    raise SystemExit(main())
