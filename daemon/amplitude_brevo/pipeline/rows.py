"""The typed view of an Amplitude export row: only the fields the pipeline reads are decoded."""

from __future__ import annotations

import msgspec


class ExportRow(msgspec.Struct, frozen=True, rename={"insert_id": "$insert_id"}):
    """One exported event. Everything else in the row (≈60 fields) is skipped by the decoder, unparsed.

    `event_properties` and `user_properties` stay raw JSON until an event type turns out to be mapped:
    most rows are not forwarded, and decoding their properties would be most of the cost.
    """

    event_type: str | None = None
    uuid: str | None = None
    insert_id: str | None = None
    user_id: str | None = None
    device_id: str | None = None
    event_time: str | None = None
    server_upload_time: str | None = None
    event_properties: msgspec.Raw = msgspec.Raw(b"{}")
    user_properties: msgspec.Raw = msgspec.Raw(b"{}")

    @property
    def dedupe_key(self) -> str | None:
        """`$insert_id`, else `uuid` (SPEC §5)."""
        return self.insert_id or self.uuid


row_decoder = msgspec.json.Decoder(ExportRow)
