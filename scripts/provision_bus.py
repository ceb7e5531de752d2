"""`make provision TAI_BUS=…`: creates the topics and subscriptions the services need on the bus
TAI_BUS names, once per install, exactly as the services would with TAI_BUS_CREATE_MISSING=true.

    python scripts/provision_bus.py                  # the bus of $TAI_BUS
    python scripts/provision_bus.py --bus pubsub://my-project

- `pubsub://PROJECT` (the emulator when PUBSUB_EMULATOR_HOST is set): the suite's topics, the
  dead-letter topic of each subscribed topic, and the services' shared subscriptions with
  their event-type filters, ack deadlines, retry and dead-letter policies.
- `kafka://HOST:PORT[,…][?idempotence=false]`: the topics (with the partitions the services
  would create them with); consumer groups need nothing.
- `sqlite:///PATH`: nothing (the SQLite bus makes its tables itself).

The subscriptions are those the services declare (`subscriptions(settings, replica_id)` in each
service's `app.py`). Per-replica subscriptions are not made here: each replica creates its own
when it starts, on the topics made here, and deletes it when it stops.

Idempotent: what exists is reported and left as it is, and a resource whose settings differ
from what the services would create is reported with each difference (a Pub/Sub filter cannot
be changed; delete the subscription and run this again to replace it). Exit status 0 when every
resource exists afterwards, 1 when the bus could not be provisioned, 2 for a bad bus URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from urllib.parse import urlparse

from tai_common import factory
from tai_common.core import ServiceSettings, SystemClock, TaiError
from tai_common.messaging import topics
from tai_common.ports import Outcome, ProvisionableBus, Provisioned, SubscriptionSpec
from tai_coordinator import app as coordinator
from tai_governor import app as governor
from tai_scheduler import app as scheduler

# Stands in for a replica id: the per-replica subscriptions it names are not provisioned, only
# their topics.
ANY_REPLICA = "provisioning"

# Each service's settings and its declaration of the subscriptions a replica opens.
Subscriptions = Callable[[ServiceSettings, str], Sequence[SubscriptionSpec]]
SERVICES: list[tuple[type[ServiceSettings], Subscriptions]] = [
    (governor.GovernorSettings, governor.subscriptions),
    (coordinator.CoordinatorSettings, coordinator.subscriptions),
    (scheduler.SchedulerSettings, scheduler.subscriptions),
]


def declared_subscriptions(bus_url: str) -> list[SubscriptionSpec]:
    """Every subscription the services open, per-replica ones included (for their topics)."""
    specs: list[SubscriptionSpec] = []
    for settings_type, subscriptions in SERVICES:
        # Each service's settings as it would read them (TAI_* variables), on this bus.
        specs.extend(subscriptions(settings_type(bus=bus_url), ANY_REPLICA))
    return specs


def report(results: Sequence[Provisioned], per_replica: Sequence[SubscriptionSpec]) -> str:
    """What was created and what existed, one line per resource, then a summary."""
    lines: list[str] = []
    for result in results:
        lines.append(f"  {result.outcome.value:<8} {result.kind:<13} {result.name}")
        lines += [f"           {difference}" for difference in result.differences]
    if per_replica:
        lines.append("  Not provisioned: per-replica subscriptions, which each replica creates:")
        lines += [
            f"           {name}"
            for name in sorted(
                {spec.name.replace(ANY_REPLICA, "<replica>") for spec in per_replica}
            )
        ]
    counts = {outcome: sum(r.outcome is outcome for r in results) for outcome in Outcome}
    if counts[Outcome.CREATED] == 0 and counts[Outcome.DIFFERS] == 0:
        lines.append(f"Nothing to do: all {len(results)} resources already exist.")
    else:
        summary = (
            f"Done: {counts[Outcome.CREATED]} created, {counts[Outcome.EXISTS]} already existed"
        )
        if counts[Outcome.DIFFERS]:
            summary += (
                f", {counts[Outcome.DIFFERS]} exist with other settings (left as they are; "
                "the services work with them, see above)"
            )
        lines.append(summary + ".")
    return "\n".join(lines)


async def provision(bus_url: str) -> int:
    """Provisions the bus at `bus_url`; returns the exit status."""
    scheme = urlparse(bus_url).scheme
    if scheme == "sqlite":
        print(f"{bus_url}: the SQLite bus needs no provisioning (it creates its tables itself).")
        return 0
    specs = declared_subscriptions(bus_url)
    settings = ServiceSettings(bus=bus_url, bus_create_missing=False)
    try:
        # Nothing is required to exist yet: making it is the point.
        bus = await factory.open_bus(settings, SystemClock(), required_topics=())
    except factory.UnsupportedUrl as error:
        print(f"provision_bus: {error}", file=sys.stderr)
        return 2
    except TaiError as error:
        print(f"provision_bus: {bus_url}: {error.message}", file=sys.stderr)
        return 1
    if not isinstance(bus, ProvisionableBus):
        await bus.close()
        print(f"provision_bus: {bus_url}: nothing to provision on this bus", file=sys.stderr)
        return 0
    where = ""
    if scheme == "pubsub" and os.environ.get("PUBSUB_EMULATOR_HOST"):
        where = f" (the emulator at {os.environ['PUBSUB_EMULATOR_HOST']})"
    print(f"Provisioning {bus_url}{where}:")
    try:
        results = await bus.provision(topics.ALL, specs)
    except TaiError as error:
        print(f"provision_bus: {bus_url}: {error.message}", file=sys.stderr)
        return 1
    finally:
        await bus.close()
    print(report(results, [spec for spec in specs if spec.ephemeral]))
    if scheme == "pubsub" and not where:
        print(
            "On Google Cloud, grant the project's Pub/Sub service agent "
            "roles/pubsub.publisher on the dead-letter topics and roles/pubsub.subscriber on "
            "the subscriptions, so that Pub/Sub can dead-letter."
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bus",
        default=os.environ.get("TAI_BUS") or ServiceSettings.model_fields["bus"].default,
        help="the bus URL (default: $TAI_BUS)",
    )
    args = parser.parse_args(argv)
    return asyncio.run(provision(args.bus))


if __name__ == "__main__":
    sys.exit(main())
