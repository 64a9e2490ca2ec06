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


# Top-level export columns a `property_mapping` key may name when the user has no property of that name
# (SPEC §5 "Property sources"): device, platform, location and app fields (amplitude-api.md §1). `carrier`
# is the export's `device_carrier`.
SOURCE_COLUMNS: dict[str, str] = {name: name for name in (
    "adid", "amplitude_id", "city", "country", "device_brand", "device_carrier", "device_family",
    "device_manufacturer", "device_model", "device_type", "dma", "idfa", "ip_address", "language", "library",
    "location_lat", "location_lng", "os_name", "os_version", "paying", "platform", "region", "start_version",
    "user_creation_time", "version_name",
)} | {"carrier": "device_carrier"}  # fmt: skip

_DECODERS: dict[tuple[str, ...], msgspec.json.Decoder] = {}


def row_decoder_for(columns: tuple[str, ...]) -> msgspec.json.Decoder:
    """A decoder of `ExportRow` that also reads these top-level `columns` (names in SOURCE_COLUMNS' values):
    the plain `row_decoder` when there are none, so rows cost nothing more unless a mapping asks."""
    columns = tuple(sorted(set(columns)))
    if not columns:
        return row_decoder
    decoder = _DECODERS.get(columns)
    if decoder is None:
        struct = msgspec.defstruct(
            "ExportRowWithColumns", [(name, object, None) for name in columns], bases=(ExportRow,), frozen=True
        )
        decoder = _DECODERS[columns] = msgspec.json.Decoder(struct)
    return decoder
