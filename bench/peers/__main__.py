"""`python -m bench.peers --tasks 1000 --rate 190`: the peers alone, their table printed (and,
with `--json PATH`, their rows written)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bench.peers import SYSTEMS, format_table, run_peers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="TAI's dispatch-lag and SubmitTask workload on Temporal's dev server and "
        "on Celery with Redis.",
    )
    parser.add_argument("--tasks", type=int, default=1000, help="N tasks per phase (1000)")
    parser.add_argument(
        "--rate", type=float, default=190.0, help="tasks/s of the steady phase (190)"
    )
    parser.add_argument(
        "--submit-seconds", type=float, default=10.0, help="measured submit window (10)"
    )
    parser.add_argument(
        "--submit-warmup", type=float, default=2.0, help="submit warm-up seconds (2)"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated ({','.join(SYSTEMS)})"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep databases, ledgers and logs here (default: removed)"
    )
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run as Ctrl-C does, cleaning up


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="tai-peers-") as scratch:
        workdir = args.workdir or Path(scratch)
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        try:
            results = asyncio.run(
                run_peers(
                    workdir,
                    tasks=args.tasks,
                    steady_rate=args.rate,
                    submit_seconds=args.submit_seconds,
                    systems=systems,
                    submit_warmup_s=args.submit_warmup,
                )
            )
        except KeyboardInterrupt:
            print("interrupted; everything started was stopped", file=sys.stderr)
            return 130
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(format_table(results))
    for result in results:
        if result.note:
            print(f"{result.system}: {result.note}")
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    return 1 if any(r.note.startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
