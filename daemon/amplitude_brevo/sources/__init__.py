"""Producers that read Amplitude: export tail, user activity, cohorts, the ingest endpoint."""
