"""The namespace the current task works in: set by the auth interceptor for a call, by the bus
wrapper for a message, and by each background pass for the namespace it is serving.

Like a row-level-security session setting (PostgreSQL's `SET app.tenant`), it is read by the
data layer on every operation (`tai_common.namespacing.NamespacedStore`), which refuses to run
without one: code that forgot to say which namespace it works in fails loudly instead of
reading or writing another team's data. A context variable, so each call, message and task
carries its own, and tasks started inside one inherit it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from tai_rpc.namespaces import (
    ALL_NAMESPACES,
    DEFAULT_NAMESPACE,
    NAMESPACE_METADATA,
    namespace_name_problem,
)

__all__ = [
    "ALL_NAMESPACES",
    "DEFAULT_NAMESPACE",
    "NAMESPACE_METADATA",
    "NoNamespace",
    "current_namespace",
    "in_namespace",
    "namespace_name_problem",
    "namespace_or_none",
    "namespaced_key",
    "set_current_namespace",
]

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("tai_namespace", default=None)


class NoNamespace(RuntimeError):
    """Namespaced data was touched outside any namespace: a bug in the caller, never a
    client's mistake."""


def current_namespace() -> str:
    """The namespace the current task works in; `NoNamespace` when none was set."""
    namespace = _current.get()
    if namespace is None:
        raise NoNamespace(
            "no namespace is set for this task: wrap the work in `in_namespace(name)`"
        )
    return namespace


def namespace_or_none() -> str | None:
    """The current namespace, or None outside any (for code that works either way)."""
    return _current.get()


def set_current_namespace(namespace: str) -> None:
    """Sets the namespace for the rest of the current task (the interceptor, per call)."""
    _current.set(namespace)


def namespaced_key(namespace: str, key: str) -> str:
    """`key` in `namespace`, for keyspaces every namespace shares (Redis, the cache): prefixed
    `ns/<namespace>/`, except the default's, which keep the keys they had before namespaces."""
    return key if namespace == DEFAULT_NAMESPACE else f"ns/{namespace}/{key}"


@contextlib.contextmanager
def in_namespace(namespace: str) -> Iterator[str]:
    """Runs the block in `namespace` (background passes, message handlers)."""
    token = _current.set(namespace)
    try:
        yield namespace
    finally:
        _current.reset(token)
