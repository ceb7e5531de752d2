"""A service process, once started, keeps its startup objects out of the garbage collector's
full collections (which paused its event loop for tens of milliseconds under load)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from tai_common.runtime import GC_THRESHOLDS, settle_garbage_collection
before = gc.get_freeze_count()
settle_garbage_collection()
print(before, gc.get_freeze_count(), gc.get_threshold() == GC_THRESHOLDS)
"""


def test_settling_freezes_what_was_built_at_startup_and_collects_less_often() -> None:
    # A fresh interpreter: freezing is process-wide, and the test process must keep its own.
    output = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    frozen_before, frozen_after, thresholds_set = int(output[0]), int(output[1]), output[2]
    assert frozen_before == 0
    # Everything the imports built (modules, protobuf descriptors) is now frozen.
    assert frozen_after > 10_000
    assert thresholds_set == "True"
