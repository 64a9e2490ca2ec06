"""Realtime ingest: an Amplitude HTTP V2-compatible endpoint whose accepted requests are spooled durably (SPEC §6)."""
