"""tune_runtime(): the interpreter settings the daemon applies at startup."""

import gc
import sys

from amplitude_brevo.tuning import SWITCH_INTERVAL, tune_runtime


def test_tune_runtime_sets_the_switch_interval_and_freezes_startup_objects():
    before = sys.getswitchinterval()
    try:
        # Start from the interpreter's defaults, so neither assertion can hold without tune_runtime().
        sys.setswitchinterval(0.005)
        gc.unfreeze()
        assert gc.get_freeze_count() == 0 and sys.getswitchinterval() != SWITCH_INTERVAL
        tune_runtime()
        assert sys.getswitchinterval() == SWITCH_INTERVAL
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        sys.setswitchinterval(before)
