"""The Celery app of the peer benchmark, one task that records its start into the ledger; and
`python -m bench.peers._celery_app BROKER_URL LEDGER`: its worker (prefork pool, concurrency 2,
otherwise Celery's defaults), whose pool processes are forked from it and so know the task."""

from __future__ import annotations

import os
import sys

from celery import Celery, Task

from bench.peers._common import SUBMITTERS, record_start

TASK = "peers.record"
QUEUE = "peers"
# Tasks parked a day ahead go where no worker reads: a Celery worker would take every ETA task
# it sees into its own memory until due.
PARKED_QUEUE = "peers-parked"
CONCURRENCY = 2


def make_app(broker_url: str, ledger_path: str) -> Celery:
    app = Celery("peers", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=QUEUE,
        timezone="UTC",
        enable_utc=True,
        # One broker connection per concurrent submitter (the pool's default is 10).
        broker_pool_limit=SUBMITTERS,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name=TASK, bind=True)
    def record(self: Task[[], None]) -> None:
        record_start(
            ledger_path,
            str(self.request.id),
            "celery",
            int(self.request.retries) + 1,
            f"celery-worker-{os.getpid()}",
        )

    return app


def main(argv: list[str]) -> int:
    broker_url, ledger_path = argv
    make_app(broker_url, ledger_path).worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={CONCURRENCY}",
            f"--queues={QUEUE}",
            "--hostname=peers@%h",
            "--loglevel=WARNING",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
