"""Durable state in one SQLite file: checkpoints, dedupe record, dead letters, profiles, cohorts, spool."""

from amplitude_brevo.state.schema import SCHEMA_VERSION
from amplitude_brevo.state.store import DeadLetter, StateError, StateLocked, StateStore, StoredDeadLetter

__all__ = ["SCHEMA_VERSION", "DeadLetter", "StateError", "StateLocked", "StateStore", "StoredDeadLetter"]
