"""A message to publish: what the EventBus port publishes, and what a transaction of a store that
holds the bus's log appends (`Transaction.publish`). Its own module, so that neither of the two
ports imports the other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    data: bytes
    # Messages with the same key are delivered in publish order, one at a time.
    ordering_key: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
