"""The topics and subscriptions a bus must hold before the services start, and the error a
service stops with when one is missing.

Pub/Sub and Kafka topics (and Pub/Sub's shared subscriptions) are made once per install by
`scripts/provision_bus.py` (`make provision TAI_BUS=…`), from the subscriptions the services
declare; with `TAI_BUS_CREATE_MISSING=true` the services create them themselves instead (for
emulators and development). Per-replica subscriptions are always made by their replica, on
existing topics.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tai_common.core import NotFound, StartupError
from tai_common.ports.bus import SubscriptionSpec


class MissingBusResource(NotFound, StartupError):
    """A topic or subscription a service needs does not exist, and the bus may not create it.

    A `NotFound` (so code that retries on bus errors keeps doing so) and a `StartupError`:
    raised while a service starts, its message is the one line the entry point prints, naming
    the resource and the remedy.
    """

    def __init__(self, system: str, kind: str, name: str, bus_url: str) -> None:
        """
        Args:
            system: The bus, for the message ("Pub/Sub", "Kafka").
            kind: "topic" or "subscription".
            name: The resource's full name (a Pub/Sub path, a Kafka topic).
            bus_url: The bus URL to provision (`TAI_BUS`).
        """
        super().__init__(kind, name)
        self.system = system
        self.bus_url = bus_url
        self.message = (
            f"{system} {kind} {name!r} does not exist; run 'make provision TAI_BUS={bus_url}' "
            "(or set TAI_BUS_CREATE_MISSING=true for development)"
        )
        self.args = (self.message,)


class Outcome(enum.Enum):
    """What provisioning found or did for one resource."""

    CREATED = "created"
    EXISTS = "exists"
    # It exists with other settings than the services would create it with; left as it is.
    DIFFERS = "differs"


@dataclass(frozen=True)
class Provisioned:
    """One resource after provisioning."""

    kind: str
    name: str
    outcome: Outcome
    # For DIFFERS: each setting that differs, as "setting: existing value, wanted value".
    differences: tuple[str, ...] = ()


@runtime_checkable
class ProvisionableBus(Protocol):
    """A bus whose resources can be made ahead of its consumers (Pub/Sub, Kafka)."""

    async def provision(
        self, topics: Collection[str], subscriptions: Collection[SubscriptionSpec]
    ) -> list[Provisioned]:
        """Creates what is missing among `topics`, the topics and dead-letter topics of
        `subscriptions`, and the durable `subscriptions`, exactly as a bus with
        `create_missing` would; reports what existed. Changes nothing that exists."""

    async def close(self) -> None: ...


def needed_topics(topics: Iterable[str], subscriptions: Iterable[SubscriptionSpec]) -> list[str]:
    """`topics` and the topic and dead-letter topic of every subscription, sorted, once each."""
    names = set(topics)
    for spec in subscriptions:
        names |= {spec.topic, spec.dead_letter}
    return sorted(names)


def durable(subscriptions: Iterable[SubscriptionSpec]) -> list[SubscriptionSpec]:
    """The subscriptions that outlive their consumers, sorted by name, once each; per-replica
    (ephemeral) ones are their replica's to create.

    Raises:
        ValueError: Two different specs share a name.
    """
    by_name: dict[str, SubscriptionSpec] = {}
    for spec in subscriptions:
        if spec.ephemeral:
            continue
        if by_name.setdefault(spec.name, spec) != spec:
            raise ValueError(f"subscription {spec.name!r} is declared twice, differently")
    return [by_name[name] for name in sorted(by_name)]
