"""Interpreter tuning for a daemon process whose event loop thread is CPU-bound while exports are read.

Call `tune_runtime()` once at startup, after imports and configuration (bench/export_throughput.py calls it
the same way):

* `sys.setswitchinterval`: the state store's SQLite thread gives up the GIL around every statement and has
  to take it back from the event loop thread, which is busy decoding for seconds at a time while an export
  is read. With the default 5 ms interval each hand-back can cost up to 5 ms, and a commit or dedupe
  lookup then takes tens of milliseconds instead of a few; 0.5 ms makes them cost about what they cost
  alone (see the bench's "dedupe lookups" and "sink commits" lines).
* `gc.freeze()`: moves the objects created by imports and startup into the permanent generation, so the
  collections that reading allocates do not traverse them again and again.
"""

from __future__ import annotations

import gc
import sys

SWITCH_INTERVAL = 0.0005  # seconds


def tune_runtime(*, switch_interval: float = SWITCH_INTERVAL, freeze: bool = True) -> None:
    sys.setswitchinterval(switch_interval)
    if freeze:
        gc.collect()
        gc.freeze()
