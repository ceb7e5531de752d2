"""Task executors: the port plug-ins implement, the registry that finds them, the built-ins.

Plug-ins import their names from here.
"""

from tai_scheduler.executors.port import (
    ExecutorEnvironment,
    ExecutorFactory,
    ParameterValidator,
    PermanentTaskError,
    RetryableTaskError,
    TaskContext,
    TaskExecutor,
)
from tai_scheduler.executors.registry import ENTRY_POINT_GROUP, ExecutorRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "ExecutorEnvironment",
    "ExecutorFactory",
    "ExecutorRegistry",
    "ParameterValidator",
    "PermanentTaskError",
    "RetryableTaskError",
    "TaskContext",
    "TaskExecutor",
]
