"""Provisioning the bus, over the wire: services on a Pub/Sub emulator (or a Kafka broker) whose
topics and subscriptions are missing stop at once with one line that names what is missing and
how to make it; `scripts/provision_bus.py` makes exactly what the services would make with
TAI_BUS_CREATE_MISSING=true, once; after it the suite runs without create-missing."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient
from google.pubsub_v1 import types as pubsub_types
from support.processes import free_port
from support.pubsub_emulator import PubSubEmulator
from support.scenarios import MakeProcess
from tai.v1 import coordinator_pb2, governor_pb2
from tai_client import CoordinatorClient, GovernorClient, open_channel
from tai_common.gcp import PubSubBus
from tai_common.messaging import topics
from tai_common.ports import Message
from tai_coordinator import app as coordinator_app
from tai_governor import app as governor_app
from tai_scheduler import app as scheduler_app

if TYPE_CHECKING:
    # Loaded by pytest as a plugin (below); importing it first would skip its assert rewriting.
    from support.kafka_broker import KafkaBroker

pytest_plugins = ["support.kafka_broker"]

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
PROVISION = ROOT / "scripts" / "provision_bus.py"
SERVICES = ["tai_governor", "tai_coordinator", "tai_scheduler"]
# What a service may take to import, reach the bus and give up (seconds); a hang fails the test.
EXIT_TIMEOUT = 30.0
# The shared subscriptions of the suite (per-replica ones are made by the replicas), and the
# topics: the suite's five, and a dead-letter topic for each one that is subscribed to.
SHARED_SUBSCRIPTIONS = ["governor-audit-log", "scheduler-actions", "scheduler-policies"]
TOPICS = sorted(
    [
        *topics.ALL,
        *(f"{t}-dead-letter" for t in topics.ALL if t != topics.SIGNALS),
    ]
)


def unique_project() -> str:
    return f"tai-prov-{uuid.uuid4().hex[:12]}"


def run(
    argv: list[str], env: Mapping[str, str], timeout: float = EXIT_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Runs a program to its end (its own process group, killed whole if it overruns)."""
    process = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{argv} did not exit within {timeout}s; stderr:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def provision(bus_url: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`make provision TAI_BUS=…`, as the operator runs it."""
    return run([sys.executable, str(PROVISION)], {**env, "TAI_BUS": bus_url})


# The emulator's administrative clients: topics, subscriptions.
Admins = tuple[PublisherAsyncClient, SubscriberAsyncClient]
# How a service process ended, and after how many seconds.
Stopped = tuple[subprocess.CompletedProcess[str], float]


def start_service(module: str, bus_url: str, tmp_path: Path, env: Mapping[str, str]) -> Stopped:
    """Runs a service as `make run` does (SQLite store), create-missing off, until it exits."""
    started = time.monotonic()
    result = run(
        [sys.executable, "-m", module],
        {
            **env,
            "TAI_BUS": bus_url,
            "TAI_BUS_CREATE_MISSING": "false",
            "TAI_STORE": f"sqlite:///{tmp_path}/{module}.db",
            "TAI_GRPC_PORT": str(free_port()),
            "TAI_METRICS_PORT": "0",
            "TAI_AUTH": "off",
            "TAI_LOG_FORMAT": "text",
            # The services' own warnings (authentication is off) are logs; only the error
            # that stops the service is asked for here.
            "TAI_LOG_LEVEL": "ERROR",
        },
    )
    return result, time.monotonic() - started


def assert_stopped_with_one_line(stopped: Stopped, what: str, bus_url: str) -> re.Match[str]:
    """Exit status 2 within seconds, and stderr one line naming `what` (a regex) and the
    remedy; returns the match of `what`."""
    result, elapsed = stopped
    lines = result.stderr.splitlines()
    assert result.returncode == 2, f"exit status {result.returncode}; stderr:\n{result.stderr}"
    assert len(lines) == 1, f"not one line:\n{result.stderr}"
    (line,) = lines
    assert "Traceback" not in line
    named = re.search(what, line)
    assert named is not None, line
    assert f"run 'make provision TAI_BUS={bus_url}'" in line
    assert "TAI_BUS_CREATE_MISSING=true" in line
    assert elapsed < 20.0, f"took {elapsed:.1f}s to stop"
    return named


@pytest.fixture
def emulator_env(pubsub_emulator: PubSubEmulator) -> dict[str, str]:
    return {"PUBSUB_EMULATOR_HOST": pubsub_emulator.host}


@pytest.fixture
async def admin(
    emulator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Admins]:
    """The emulator's administrative clients (topics, subscriptions)."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator_env["PUBSUB_EMULATOR_HOST"])
    async with PublisherAsyncClient() as publisher, SubscriberAsyncClient() as subscriber:
        yield publisher, subscriber


async def make_topics(project: str, names: list[str]) -> None:
    """Topics as a bus with create-missing makes them (and nothing else)."""
    bus = await PubSubBus.open(project, create_missing=True, required_topics=names)
    await bus.close()


# -- a service without its topics or subscriptions --------------------------------------------


@pytest.mark.parametrize("module", SERVICES)
async def test_a_service_on_an_empty_pubsub_stops_with_one_line_naming_a_missing_topic(
    module: str, emulator_env: dict[str, str], tmp_path: Path
) -> None:
    project = unique_project()
    bus_url = f"pubsub://{project}"

    stopped = start_service(module, bus_url, tmp_path, emulator_env)

    named = assert_stopped_with_one_line(
        stopped, rf"Pub/Sub topic 'projects/{project}/topics/([a-z-]+)' does not exist", bus_url
    )
    assert named.group(1) in topics.ALL


@pytest.mark.parametrize(
    ("module", "subscription"),
    [("tai_governor", "governor-audit-log"), ("tai_scheduler", "scheduler-policies")],
)
async def test_a_service_whose_shared_subscription_is_missing_stops_with_one_line_naming_it(
    module: str, subscription: str, emulator_env: dict[str, str], tmp_path: Path, admin: Admins
) -> None:
    """The topics exist (so its own per-replica subscriptions are made), its shared
    subscription does not: by then its store is open, and it must still stop at once."""
    project = unique_project()
    bus_url = f"pubsub://{project}"
    await make_topics(project, TOPICS)

    stopped = start_service(module, bus_url, tmp_path, emulator_env)

    assert_stopped_with_one_line(
        stopped,
        rf"Pub/Sub subscription 'projects/{project}/subscriptions/{subscription}' does not exist",
        bus_url,
    )


# -- the provisioning command -------------------------------------------------------------------


def comparable(subscription: pubsub_types.Subscription, project: str) -> dict[str, object]:
    """The settings of a subscription that provisioning must get right, project left out."""

    def seconds(duration: object) -> float:
        return duration.total_seconds() if isinstance(duration, dt.timedelta) else 0.0

    def relative(path: str) -> str:
        return path.replace(f"projects/{project}/", "")

    return {
        "topic": relative(subscription.topic),
        "filter": subscription.filter,
        "ack_deadline_seconds": subscription.ack_deadline_seconds,
        "enable_message_ordering": subscription.enable_message_ordering,
        "retry_policy": (
            seconds(subscription.retry_policy.minimum_backoff),
            seconds(subscription.retry_policy.maximum_backoff),
        ),
        "dead_letter_policy": (
            relative(subscription.dead_letter_policy.dead_letter_topic),
            subscription.dead_letter_policy.max_delivery_attempts,
        ),
        "expiration_ttl": seconds(subscription.expiration_policy.ttl),
    }


async def subscriptions_as_create_missing_makes_them(project: str) -> None:
    """Every shared subscription the services declare, made by a bus with create-missing as a
    service makes it, in `project`."""
    specs = [
        spec
        for declared in (
            governor_app.subscriptions(governor_app.GovernorSettings(), "r"),
            coordinator_app.subscriptions(coordinator_app.CoordinatorSettings(), "r"),
            scheduler_app.subscriptions(scheduler_app.SchedulerSettings(), "r"),
        )
        for spec in declared
        if not spec.ephemeral
    ]

    async def ignore(_: Message) -> None:
        return None

    bus = await PubSubBus.open(project, create_missing=True, required_topics=topics.ALL)
    try:
        for spec in specs:
            await (await bus.subscribe(spec, ignore)).close()
    finally:
        await bus.close()


async def test_provisioning_makes_what_create_missing_makes_and_a_second_run_changes_nothing(
    emulator_env: dict[str, str], admin: Admins
) -> None:
    topics_admin, subscriptions_admin = admin
    project = unique_project()
    bus_url = f"pubsub://{project}"

    first = provision(bus_url, emulator_env)

    assert first.returncode == 0, first.stderr
    for name in TOPICS:
        assert re.search(rf"created +topic +projects/{project}/topics/{name}$", first.stdout, re.M)
    for name in SHARED_SUBSCRIPTIONS:
        assert re.search(
            rf"created +subscription +projects/{project}/subscriptions/{name}$", first.stdout, re.M
        )
    # The per-replica subscriptions are the replicas' own: only named, never made.
    assert "coordinator-<replica>-tai-actions" in first.stdout
    listed = await subscriptions_admin.list_subscriptions(project=f"projects/{project}")
    assert sorted([s.name.rsplit("/", 1)[1] async for s in listed]) == SHARED_SUBSCRIPTIONS
    listed_topics = await topics_admin.list_topics(project=f"projects/{project}")
    assert sorted([t.name.rsplit("/", 1)[1] async for t in listed_topics]) == TOPICS

    # Exactly what the services make with create-missing, in a project of its own.
    reference = unique_project()
    await subscriptions_as_create_missing_makes_them(reference)
    made: dict[str, pubsub_types.Subscription] = {}
    for name in SHARED_SUBSCRIPTIONS:
        made[name] = await subscriptions_admin.get_subscription(
            subscription=f"projects/{project}/subscriptions/{name}"
        )
        expected = await subscriptions_admin.get_subscription(
            subscription=f"projects/{reference}/subscriptions/{name}"
        )
        assert comparable(made[name], project) == comparable(expected, reference), name
    for name in TOPICS:
        topic = await topics_admin.get_topic(topic=f"projects/{project}/topics/{name}")
        assert topic.message_retention_duration == dt.timedelta(days=7)
    policies = comparable(made["scheduler-policies"], project)
    assert policies["filter"] == 'attributes.event_type = "policy.proposed"'
    assert policies["dead_letter_policy"] == ("topics/tai-policies-dead-letter", 100)
    assert comparable(made["scheduler-actions"], project)["filter"] == (
        'attributes.event_type = "action.deferred"'
    )

    second = provision(bus_url, emulator_env)

    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout
    assert len(re.findall(r"^ +exists +", second.stdout, re.M)) == len(TOPICS) + len(
        SHARED_SUBSCRIPTIONS
    )
    assert f"Nothing to do: all {len(TOPICS) + len(SHARED_SUBSCRIPTIONS)} resources" in (
        second.stdout
    )
    for name in SHARED_SUBSCRIPTIONS:  # not made again: its creation time is the first one's
        again = await subscriptions_admin.get_subscription(
            subscription=f"projects/{project}/subscriptions/{name}"
        )
        assert again.labels == made[name].labels


async def test_provisioning_reports_a_subscription_whose_filter_differs_and_leaves_it(
    emulator_env: dict[str, str], admin: Admins
) -> None:
    _, subscriptions_admin = admin
    project = unique_project()
    bus_url = f"pubsub://{project}"
    await make_topics(project, TOPICS)
    path = f"projects/{project}/subscriptions/scheduler-policies"
    # Made by hand without the filter the Scheduler declares.
    await subscriptions_admin.create_subscription(
        request={
            "name": path,
            "topic": f"projects/{project}/topics/tai-policies",
            "enable_message_ordering": True,
        }
    )

    result = provision(bus_url, emulator_env)

    assert result.returncode == 0, result.stderr
    assert re.search(rf"differs +subscription +{path}$", result.stdout, re.M), result.stdout
    assert (
        """filter: '', wanted 'attributes.event_type = "policy.proposed"' (Pub/Sub cannot """
        "change a filter" in result.stdout
    )
    assert "1 exist with other settings" in result.stdout
    # The others are made all the same; this one is left as it was.
    assert re.search(r"created +subscription +.*/scheduler-actions$", result.stdout, re.M)
    assert (await subscriptions_admin.get_subscription(subscription=path)).filter == ""


async def test_provisioning_a_sqlite_bus_does_nothing(tmp_path: Path) -> None:
    result = provision(f"sqlite:///{tmp_path}/tai.db", {})

    assert result.returncode == 0, result.stderr
    assert "needs no provisioning" in result.stdout
    assert not (tmp_path / "tai.db").exists()


async def test_provisioning_an_unreachable_pubsub_fails_in_one_line() -> None:
    result = run(
        [sys.executable, str(PROVISION), "--bus", "pubsub://nobody-here"],
        # Nothing listens there; the emulator host keeps the client off Google's servers.
        {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}", "TAI_BUS": ""},
        timeout=90,
    )

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("provision_bus: pubsub://nobody-here: ")


# -- after provisioning, the suite without create-missing -----------------------------------------


@pytest.mark.timeout(300)  # three process starts, and maybe the emulators' JVM start
async def test_after_provisioning_the_suite_runs_without_create_missing(
    service_processes: MakeProcess, production_env: dict[str, str]
) -> None:
    env = {**production_env, "TAI_BUS_CREATE_MISSING": "false"}
    provisioned = provision(env["TAI_BUS"], env)
    assert provisioned.returncode == 0, provisioned.stderr

    governor = await service_processes("tai_governor", **env).start(timeout=60)
    coordinator = await service_processes(
        "tai_coordinator", TAI_GOVERNOR_TARGET=governor.target, **env
    ).start(timeout=60)
    await service_processes(
        "tai_scheduler",
        TAI_GOVERNOR_TARGET=governor.target,
        TAI_COORDINATOR_TARGET=coordinator.target,
        **env,
    ).start(timeout=60)

    async with open_channel(governor.target) as g, open_channel(coordinator.target) as c:
        policies = GovernorClient(g)
        receipt = await policies.propose(
            policy_type="operational",
            name="scale-api",
            condition='signal.type == "alert" && signal.metadata["service"] == "api"',
            action=governor_pb2.ActionTemplate(action_type="scale", target_service="api"),
        )
        await policies.enforce(receipt.resource_id)
        coordinator_client = CoordinatorClient(c)
        stream = coordinator_client.stream_actions("api")
        created: list[str] = []
        for attempt in range(300):  # until the Coordinator has the policy event from Pub/Sub
            submitted = await coordinator_client.submit_signal(
                signal_type="alert",
                priority=9,
                metadata={"service": "api"},
                source=f"probe-{attempt}",
            )
            created = list(submitted.action_ids)
            if created:
                break
            await asyncio.sleep(0.05)
        assert len(created) == 1

        action = await asyncio.wait_for(stream.read(), timeout=30)
        assert isinstance(action, coordinator_pb2.Action)
        assert action.id == created[0]
        await coordinator_client.acknowledge(action.id, "completed")
        assert (await coordinator_client.get_action(action.id)).status == (
            coordinator_pb2.ACTION_STATUS_COMPLETED
        )
        stream.cancel()


# -- Kafka ----------------------------------------------------------------------------------------


def kafka_url(broker: KafkaBroker) -> str:
    # Tansu cannot do idempotent producers (see tai_common.kafka.bus).
    return f"kafka://{broker.bootstrap}?idempotence=false"


async def kafka_topics(broker: KafkaBroker) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_a_service_on_kafka_without_its_topics_stops_with_one_line_naming_one(
    private_kafka_broker: Callable[[], KafkaBroker], tmp_path: Path
) -> None:
    broker = private_kafka_broker()
    bus_url = kafka_url(broker)

    stopped = start_service("tai_coordinator", bus_url, tmp_path, {})

    named = assert_stopped_with_one_line(
        stopped, r"Kafka topic '([a-z-]+)' does not exist", bus_url
    )
    assert named.group(1) in topics.ALL


async def test_kafka_provisioning_makes_the_topics_once_and_the_services_start(
    private_kafka_broker: Callable[[], KafkaBroker],
    service_processes: MakeProcess,
    tmp_path: Path,
) -> None:
    broker = private_kafka_broker()
    bus_url = kafka_url(broker)

    first = provision(bus_url, {})
    second = provision(bus_url, {})

    assert first.returncode == 0, first.stderr
    for name in TOPICS:
        assert re.search(rf"created +topic +{name}$", first.stdout, re.M), first.stdout
    assert sorted(await kafka_topics(broker)) == TOPICS
    assert second.returncode == 0, second.stderr
    assert f"Nothing to do: all {len(TOPICS)} resources already exist." in second.stdout
    # A service now starts on it without create-missing.
    await service_processes(
        "tai_governor",
        TAI_BUS=bus_url,
        TAI_BUS_CREATE_MISSING="false",
        TAI_STORE=f"sqlite:///{tmp_path}/governor.db",
    ).start(timeout=60)
    assert sorted(await kafka_topics(broker)) == TOPICS
