"""Where the Scheduler keeps tasks: one collection, `tasks/{task_id}`, one document per task
(recurring tasks and their runs alike), and an IndexSpec for every query below."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from tai_common.ports import Cursor, DocumentStore, Filter, IndexSpec, Op, Order, Query, Transaction

from tai_scheduler.task import OPEN_STATES, Task, TaskState

TASKS = "tasks"

# ListTasks filters on any combination of these (always equality), newest first.
LIST_FILTER_FIELDS = ("parent_task_id", "task_type", "status")


def _list_indexes() -> tuple[IndexSpec, ...]:
    specs = [IndexSpec(TASKS, ("created_at_ns",), descending=(True,))]
    for size in range(1, len(LIST_FILTER_FIELDS) + 1):
        for combo in itertools.combinations(LIST_FILTER_FIELDS, size):
            specs.append(
                IndexSpec(TASKS, (*combo, "created_at_ns"), descending=(*(False,) * size, True))
            )
    return tuple(specs)


INDEXES = (
    # Due tasks, earliest first (claims; the worker's next wake-up; the due-tasks count).
    IndexSpec(TASKS, ("status", "next_run_ns")),
    # Running tasks whose lease lapsed, earliest first (reclaims; the next lease expiry; the
    # due-tasks count).
    IndexSpec(TASKS, ("status", "lease_until_ns")),
    *_list_indexes(),
)

_LIST_ORDER = (Order("created_at_ns", descending=True),)


@dataclass(frozen=True)
class Lease:
    """Who holds a task, as stored: enough to tell whether a claim still stands."""

    status: TaskState
    owner: str
    fencing_token: int


class TaskRepository:
    def __init__(self, store: DocumentStore) -> None:
        self._store = store

    # --- inside a transaction ---

    async def get_in(self, tx: Transaction, task_id: str) -> Task | None:
        doc = await tx.get(TASKS, task_id)
        return Task.from_doc(doc.data) if doc else None

    async def get_many_in(self, tx: Transaction, task_ids: Sequence[str]) -> dict[str, Task]:
        """The tasks that exist among `task_ids`, by id, in one read."""
        return {doc.id: Task.from_doc(doc.data) for doc in await tx.get_many(TASKS, task_ids)}

    async def due(self, by_ns: int, limit: int, *, after_ns: int | None = None) -> list[Task]:
        """Pending tasks due by `by_ns` (and after `after_ns`, if given), earliest first (a
        plain read: no locks)."""
        after = () if after_ns is None else (Filter("next_run_ns", Op.GT, after_ns),)
        page = await self._store.query(
            Query(
                TASKS,
                filters=(
                    Filter.eq("status", TaskState.PENDING.value),
                    *after,
                    Filter("next_run_ns", Op.LE, by_ns),
                ),
                order_by=(Order("next_run_ns"),),
                limit=limit,
            )
        )
        return [Task.from_doc(d.data) for d in page.documents]

    async def lapsed(self, now_ns: int, limit: int) -> list[Task]:
        """Running tasks whose lease ended by `now_ns`, earliest first (a plain read)."""
        page = await self._store.query(
            Query(
                TASKS,
                filters=(
                    Filter.eq("status", TaskState.RUNNING.value),
                    Filter("lease_until_ns", Op.LE, now_ns),
                ),
                order_by=(Order("lease_until_ns"),),
                limit=limit,
            )
        )
        return [Task.from_doc(d.data) for d in page.documents]

    async def children_in(
        self, tx: Transaction, parent_id: str, status: TaskState, limit: int = 500
    ) -> list[Task]:
        page = await tx.query(
            Query(
                TASKS,
                filters=(Filter.eq("parent_task_id", parent_id), Filter.eq("status", status.value)),
                order_by=_LIST_ORDER,
                limit=limit,
            )
        )
        return [Task.from_doc(d.data) for d in page.documents]

    async def count_open_in(self, tx: Transaction, *, limit: int) -> int:
        """How many tasks are not final (pending or running), counted up to `limit`."""
        page = await tx.query(
            Query(
                TASKS,
                filters=(Filter.is_in("status", [s.value for s in OPEN_STATES]),),
                limit=limit,
            )
        )
        return len(page.documents)

    def create_in(self, tx: Transaction, task: Task) -> None:
        tx.create(TASKS, task.id, task.to_doc())

    def write_in(self, tx: Transaction, task: Task) -> None:
        tx.set(TASKS, task.id, task.to_doc())

    # --- reads ---

    async def get(self, task_id: str) -> Task | None:
        doc = await self._store.get(TASKS, task_id)
        return Task.from_doc(doc.data) if doc else None

    async def leases(self, task_ids: Sequence[str]) -> dict[str, Lease]:
        """The lease of each task that exists among `task_ids`, in one plain read (no locks),
        without decoding the rest of the task."""
        return {
            doc.id: Lease(
                TaskState(doc.data["status"]),
                str(doc.data.get("lease_owner", "")),
                int(doc.data.get("fencing_token", 0)),
            )
            for doc in await self._store.get_many(TASKS, task_ids)
        }

    async def count_due(self, now_ns: int) -> int:
        """Tasks that a replica with a free slot would claim at `now_ns`: pending and due, or
        running with a lapsed lease. Two count queries on the claims' own indexes; held runs
        (due far ahead) and running tasks under a live lease are not counted."""
        pending = await self._store.count(
            TASKS,
            (Filter.eq("status", TaskState.PENDING.value), Filter("next_run_ns", Op.LE, now_ns)),
        )
        lapsed = await self._store.count(
            TASKS,
            (
                Filter.eq("status", TaskState.RUNNING.value),
                Filter("lease_until_ns", Op.LE, now_ns),
            ),
        )
        return pending + lapsed

    async def earliest_due_ns(self, *, after_ns: int | None = None) -> int | None:
        """The next_run_ns of the earliest pending task (held runs included, far ahead), or
        of the earliest due after `after_ns`."""
        after = () if after_ns is None else (Filter("next_run_ns", Op.GT, after_ns),)
        page = await self._store.query(
            Query(
                TASKS,
                filters=(Filter.eq("status", TaskState.PENDING.value), *after),
                order_by=(Order("next_run_ns"),),
                limit=1,
            )
        )
        return int(page.documents[0].data["next_run_ns"]) if page.documents else None

    async def earliest_lease_end_ns(self) -> int | None:
        page = await self._store.query(
            Query(
                TASKS,
                filters=(Filter.eq("status", TaskState.RUNNING.value),),
                order_by=(Order("lease_until_ns"),),
                limit=1,
            )
        )
        return int(page.documents[0].data["lease_until_ns"]) if page.documents else None

    async def list(
        self,
        *,
        status: str,
        task_type: str,
        parent_task_id: str,
        limit: int,
        start_after: Cursor | None,
    ) -> tuple[list[Task], Cursor | None]:
        filters: list[Filter] = []
        for name, value in (
            ("parent_task_id", parent_task_id),
            ("task_type", task_type),
            ("status", status),
        ):
            if value:
                filters.append(Filter.eq(name, value))
        page = await self._store.query(
            Query(
                TASKS,
                filters=tuple(filters),
                order_by=_LIST_ORDER,
                limit=limit,
                start_after=start_after,
            )
        )
        return [Task.from_doc(d.data) for d in page.documents], page.next_cursor

    async def count(self, filters: Sequence[Filter] = ()) -> int:
        return await self._store.count(TASKS, filters)
