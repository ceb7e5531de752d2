"""The peers in TAI's benchmark: Temporal's dev server and Celery on Redis, driven with the same
workload as TAI's `dispatch_lag` and SubmitTask scenarios (see `_common` for the workload and
how each figure is defined, `_temporal` and `_celery` for what each system runs and where its
figures differ from TAI's).

`python -m bench.peers --tasks 1000 --rate 190` runs them on their own and prints the table.
"""

from bench.peers._common import SYSTEMS, PeerResult
from bench.peers._run import format_table, run_peers

__all__ = ["SYSTEMS", "PeerResult", "format_table", "run_peers"]
