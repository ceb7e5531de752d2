"""Namespaces: many teams on one installation. The data layer keeps each namespace's documents
under it (`NamespacedStore`), consumers handle each message in its namespace (`NamespacedBus`),
and `NamespaceDirectory` knows which namespaces exist and their quotas. Which namespace a task
works in is `tai_common.core.namespace`'s context variable."""

from tai_common.namespacing.bus import NamespacedBus, message_namespace
from tai_common.namespacing.directory import (
    ACTIVE,
    DELETING,
    RESOURCE_COLLECTIONS,
    NamespaceDirectory,
    NamespaceRecord,
    Quotas,
    for_each_namespace,
)
from tai_common.namespacing.store import INSTALLATION_COLLECTIONS, NAMESPACES, NamespacedStore

__all__ = [
    "ACTIVE",
    "DELETING",
    "INSTALLATION_COLLECTIONS",
    "NAMESPACES",
    "RESOURCE_COLLECTIONS",
    "NamespaceDirectory",
    "NamespaceRecord",
    "NamespacedBus",
    "NamespacedStore",
    "Quotas",
    "for_each_namespace",
    "message_namespace",
]
