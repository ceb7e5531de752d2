"""Executors by task type, discovered through the `tai.task_executors` entry-point group."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import metadata

from tai_scheduler.executors.port import (
    ExecutorEnvironment,
    ParameterValidator,
    TaskExecutor,
)

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tai.task_executors"


class DuplicateExecutor(RuntimeError):
    """Two installed packages register different executors for one task type."""


class ExecutorRegistry:
    """The executors this replica can run, by task type."""

    def __init__(self, executors: Mapping[str, TaskExecutor]) -> None:
        self._executors = dict(executors)

    @classmethod
    def discover(
        cls,
        env: ExecutorEnvironment,
        entry_points: Iterable[metadata.EntryPoint] | None = None,
    ) -> ExecutorRegistry:
        """Loads every executor registered in the entry-point group.

        A plug-in that fails to load is logged and left out (its task type is then unknown
        here: submissions are refused and its stored tasks wait for a replica that has it);
        two different registrations of one type are an installation error.

        Raises:
            DuplicateExecutor: two packages register different objects for one task type.
        """
        found = (
            entry_points
            if entry_points is not None
            else metadata.entry_points(group=ENTRY_POINT_GROUP)
        )
        chosen: dict[str, metadata.EntryPoint] = {}
        for entry_point in found:
            previous = chosen.get(entry_point.name)
            if previous is not None and previous.value != entry_point.value:
                raise DuplicateExecutor(
                    f"task type {entry_point.name!r} is registered twice: {previous.value} "
                    f"and {entry_point.value}"
                )
            chosen[entry_point.name] = entry_point
        executors: dict[str, TaskExecutor] = {}
        for name, entry_point in sorted(chosen.items()):
            try:
                factory = entry_point.load()
                executors[name] = factory(env)
            except Exception:
                # A broken plug-in must not take the built-ins down with it.
                log.exception("cannot load task executor %r (%s)", name, entry_point.value)
        log.info("task executors: %s", ", ".join(sorted(executors)) or "none")
        return cls(executors)

    @property
    def task_types(self) -> frozenset[str]:
        return frozenset(self._executors)

    def get(self, task_type: str) -> TaskExecutor | None:
        return self._executors.get(task_type)

    def validate(self, task_type: str, parameters: Mapping[str, str]) -> None:
        """Lets the type's executor check the parameters, when it can."""
        executor = self._executors.get(task_type)
        if isinstance(executor, ParameterValidator):
            executor.validate(parameters)
