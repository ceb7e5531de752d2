"""`make chaos`: the resilience suite. Under a steady load, it kills, stops and cuts parts of a
running suite, then checks that nothing accepted was lost or done twice (chaos/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tests' process, emulator and proxy helpers are imported from where they live.
if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))
