"""A spooled HTTP V2 event as the export row Amplitude would later export for it, so the export path's consumers
(events, orders; `pipeline/remap.py`) and its dedupe record apply to live events unchanged (issue 9 item 4).

Field by field (reference §1 and §2):

* `insert_id` → `$insert_id`: the dedupe key the export will show for the same event, so an event seen live
  and again in an export reaches Brevo once. Every row also gets a `uuid` from its spool position: the key of
  an event sent without `insert_id` (a restart re-reads the spool, never twice the same position).
* `time` (ms) → `event_time`; the request's receive time → `server_upload_time` (both in the export's
  `YYYY-MM-DD HH:MM:SS.ffffff`, UTC). An event without `time` happened when it was received.
* Top-level revenue fields (`price`, `quantity`, `revenue`, `productId`, `revenueType`) → `event_properties`
  as `$price`, `$quantity`, `$revenue`, `$productId`, `$revenueType`, where the export keeps them (a key
  the event's own properties already hold is left as the app sent it).
* Device and location fields → their export columns (`carrier` → `device_carrier`, `ip` → `ip_address`,
  `app_version` → `version_name`), which `property_mapping` keys may name (SPEC §5 property sources).
* `user_properties`: plain properties as they are; written with operations (`$set`, `$add`, …), only the
  `$set` values: the event's own properties, what its Brevo event carries. The operations themselves are
  returned apart (`LiveRow.operations`): they change the stored profile (`pipeline/user_ops.py`), which an
  export row, holding every property as of the event, never has to.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ..pipeline.user_ops import is_operations

# HTTP V2 field → export column, where the names differ or the field is a column (rows.SOURCE_COLUMNS).
_COLUMNS = {
    "platform": "platform", "os_name": "os_name", "os_version": "os_version", "device_brand": "device_brand",
    "device_manufacturer": "device_manufacturer", "device_model": "device_model", "carrier": "device_carrier",
    "country": "country", "region": "region", "city": "city", "dma": "dma", "language": "language",
    "location_lat": "location_lat", "location_lng": "location_lng", "ip": "ip_address", "idfa": "idfa",
    "adid": "adid", "app_version": "version_name", "start_version": "start_version", "paying": "paying",
}  # fmt: skip
_REVENUE_FIELDS = {"price": "$price", "quantity": "$quantity", "revenue": "$revenue", "productId": "$productId",
                   "revenueType": "$revenueType"}


@dataclass(frozen=True, slots=True)
class LiveRow:
    line: bytes  # the export-shaped row, as a JSON line for `MappingRules.row_decoder`
    operations: dict[str, Any] | None  # the event's user-property operations, when written with them
    row: dict[str, Any]  # the row itself (`line` decoded)


_FIRST_SECOND, _LAST_SECOND = -62135596800, 253402300799  # 0001-01-01 00:00:00 and 9999-12-31 23:59:59 UTC


@functools.lru_cache(maxsize=4096)
def _export_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def export_time(ms: int | float) -> str:
    """Epoch milliseconds as the export writes times: `2026-11-01 00:00:00.123000` (UTC); ValueError outside
    years 1–9999. (A request's events share their seconds: each second is formatted once, `datetime`'s
    formatting cost half the feed's time per event.)"""
    seconds, micros = divmod(round(ms * 1000), 1_000_000)
    if not _FIRST_SECOND <= seconds <= _LAST_SECOND:
        raise ValueError(f"time {ms} ms is out of range")
    return f"{_export_second(seconds)}.{micros:06d}"


def _event_time(time_ms: Any, received: str) -> str:
    """The event's `time` as an export time; the receive time when it has none, or one no calendar holds
    (the protocol takes any integer: such an event is kept, at the time it arrived)."""
    if isinstance(time_ms, int) and not isinstance(time_ms, bool):
        try:
            return export_time(time_ms)
        except ValueError:
            pass
    return received


def live_row(event: dict[str, Any], *, spool_id: int, index: int, received_at_ms: int) -> LiveRow:
    """The export row of event `index` of spooled request `spool_id` (see the module docstring)."""
    received = export_time(received_at_ms)
    time_ms = event.get("time")
    row: dict[str, Any] = {
        "event_type": event.get("event_type"),
        "uuid": f"ingest-{spool_id}-{index}",
        "$insert_id": event.get("insert_id"),
        "user_id": event.get("user_id"),
        "device_id": event.get("device_id"),
        "event_time": _event_time(time_ms, received),
        "server_upload_time": received,
    }
    for field, column in _COLUMNS.items():
        if event.get(field) is not None:
            row[column] = event[field]
    props = event.get("event_properties")
    props = dict(props) if isinstance(props, dict) else {}
    for field, key in _REVENUE_FIELDS.items():
        if event.get(field) is not None and key not in props:
            props[key] = event[field]
    row["event_properties"] = props
    user = event.get("user_properties")
    user = user if isinstance(user, dict) else {}
    operations = None
    if is_operations(user):
        operations = user
        plain = user.get("$set")
        user = plain if isinstance(plain, dict) else {}
    row["user_properties"] = user
    return LiveRow(orjson.dumps(row), operations, row)
