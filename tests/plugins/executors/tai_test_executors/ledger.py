"""A SQLite file where the test executors record what they did, shared by every Scheduler
process of a test (WAL mode, so processes write it concurrently and a SIGKILL loses nothing
committed).

- `executions`: one row per attempt that reached its end, `replay` = 1 when the key had
  already been completed (the recorded result was returned, nothing done again);
- `completions`: one row per idempotency key, the first completion (the key is the primary
  key, so a second one cannot be recorded).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing as _closing
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS executions (
        key TEXT NOT NULL,
        task_id TEXT NOT NULL,
        task_type TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT NOT NULL,
        started_ns INTEGER NOT NULL,
        ended_ns INTEGER NOT NULL,
        replay INTEGER NOT NULL,
        outcome TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS completions (
        key TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        completion_id TEXT NOT NULL,
        worker TEXT NOT NULL,
        completed_ns INTEGER NOT NULL
    )
    """,
)


@dataclass(frozen=True)
class Execution:
    key: str
    task_id: str
    task_type: str
    attempt: int
    worker: str
    started_ns: int
    ended_ns: int
    replay: bool
    outcome: str


def connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for statement in _SCHEMA:
        conn.execute(statement)
    return conn


def completion_of(path: str | Path, key: str) -> str | None:
    """The completion id recorded for `key`, if any."""
    with _closing(connect(path)) as conn:
        row = conn.execute("SELECT completion_id FROM completions WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row else None


def record(
    path: str | Path,
    execution: Execution,
    completion_id: str | None,
) -> tuple[str | None, bool]:
    """Records an execution; with `completion_id`, also the key's completion unless one is
    recorded already. Returns the key's completion id and whether this was a replay."""
    with _closing(connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT completion_id FROM completions WHERE key = ?", (execution.key,)
            ).fetchone()
            replay = row is not None
            if completion_id is not None and not replay:
                conn.execute(
                    "INSERT INTO completions VALUES (?, ?, ?, ?, ?)",
                    (
                        execution.key,
                        execution.task_id,
                        completion_id,
                        execution.worker,
                        execution.ended_ns,
                    ),
                )
            conn.execute(
                "INSERT INTO executions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    execution.key,
                    execution.task_id,
                    execution.task_type,
                    execution.attempt,
                    execution.worker,
                    execution.started_ns,
                    execution.ended_ns,
                    int(replay),
                    execution.outcome,
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return (str(row[0]) if replay else completion_id), replay


def executions(path: str | Path) -> list[Execution]:
    with _closing(connect(path)) as conn:
        rows = conn.execute(
            "SELECT key, task_id, task_type, attempt, worker, started_ns, ended_ns, replay, "
            "outcome FROM executions ORDER BY started_ns"
        ).fetchall()
    return [
        Execution(r[0], r[1], r[2], int(r[3]), r[4], int(r[5]), int(r[6]), bool(r[7]), r[8])
        for r in rows
    ]


def completions(path: str | Path) -> dict[str, str]:
    """Completion id by key."""
    with _closing(connect(path)) as conn:
        rows = conn.execute("SELECT key, completion_id FROM completions").fetchall()
    return {str(key): str(completion) for key, completion in rows}


def now_ns() -> int:
    return time.time_ns()
