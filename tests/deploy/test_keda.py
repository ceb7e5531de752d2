"""Autoscaling through KEDA (keda.enabled): one ScaledObject per service instead of its CPU
HorizontalPodAutoscaler, with the replica range and the triggers the design names; without
KEDA, the CPU HPAs as before.

The ScaledObjects and the TriggerAuthentication are checked against KEDA's own schemas in
test_helm_render.py (npm @kubernetes-models/keda, run by node/validate_crds.mjs). Those
schemas type a trigger's `metadata` as a free map of strings, as KEDA's CRD does, so
`test_trigger_metadata_is_what_keda_reads` checks the metadata keys structurally, per KEDA's
scaler documentation (cpu, prometheus). The queries are run by real PromQL engines: a real
Prometheus scraping real Governor and Scheduler processes, and promtool's engine on series
shaped like Cloud Monitoring's Pub/Sub metrics (no Cloud Monitoring can run here).
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import CI_VALUES, NAMESPACE, SERVICES, Doc, find, one, render, render_error
from support import inprocess
from support.processes import ServiceProcess, free_port
from support.prometheus_server import PrometheusServer, promtool
from tai_client import GovernorClient, SchedulerClient, open_channel
from tai_test_executors import ledger as test_ledger

KEDA_VALUES = (CI_VALUES / "keda-values.yaml",)
KEDA_ON = ("--set", "keda.enabled=true")
# The design's replica ranges (the chart's defaults).
DESIGN_REPLICAS = {"governor": (3, 50), "coordinator": (2, 100), "scheduler": (2, 50)}
# The trigger types each service scales on, in order.
TRIGGER_TYPES = {
    "governor": ["cpu", "prometheus"],
    "coordinator": ["cpu", "prometheus"],
    "scheduler": ["prometheus"],
}
# Metadata keys KEDA's scalers read (keda.sh/docs, scalers/cpu and scalers/prometheus): the
# ones a trigger must have, and all it may have.
KEDA_METADATA: dict[str, tuple[set[str], set[str]]] = {
    "cpu": ({"value"}, {"value", "containerName"}),
    "prometheus": (
        {"serverAddress", "query", "threshold"},
        {
            "serverAddress",
            "query",
            "threshold",
            "activationThreshold",
            "namespace",
            "customHeaders",
            "ignoreNullValues",
            "queryParameters",
            "unsafeSsl",
            "timeout",
            "authModes",
        },
    ),
}
METRIC_TYPES = {"cpu": {"Utilization", "AverageValue"}, "prometheus": {"AverageValue", "Value"}}

MakeProcess = Callable[..., ServiceProcess]


def scaled_object(docs: tuple[Doc, ...], service: str) -> Doc:
    return one(docs, "ScaledObject", f"tai-{service}")


def triggers(docs: tuple[Doc, ...], service: str) -> dict[str, Doc]:
    """A service's triggers by type."""
    found = scaled_object(docs, service)["spec"]["triggers"]
    by_type = {trigger["type"]: trigger for trigger in found}
    assert len(by_type) == len(found), found
    return by_type


def query_of(docs: tuple[Doc, ...], service: str) -> str:
    query: str = triggers(docs, service)["prometheus"]["metadata"]["query"]
    return query


@pytest.mark.parametrize("values", [(), KEDA_VALUES], ids=["defaults", "ci-keda"])
def test_keda_gives_each_service_a_scaled_object_and_no_hpa(values: tuple[Path, ...]) -> None:
    docs = render(values, KEDA_ON)
    assert find(docs, "HorizontalPodAutoscaler") == []
    assert {doc["metadata"]["name"] for doc in find(docs, "ScaledObject")} == {
        f"tai-{service}" for service in SERVICES
    }
    for service in SERVICES:
        spec = scaled_object(docs, service)["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"tai-{service}",
        }
        assert [trigger["type"] for trigger in spec["triggers"]] == TRIGGER_TYPES[service]
        # KEDA's HPA owns the replica count: the Deployment does not reset it on upgrade.
        assert "replicas" not in one(docs, "Deployment", f"tai-{service}")["spec"]


@pytest.mark.parametrize("service", SERVICES)
def test_replica_ranges_are_the_designs_and_follow_the_values(service: str) -> None:
    spec = scaled_object(render((), KEDA_ON), service)["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == DESIGN_REPLICAS[service]
    overridden = render(
        (),
        (
            *KEDA_ON,
            "--set",
            f"services.{service}.autoscaling.minReplicas=4",
            "--set",
            f"services.{service}.autoscaling.maxReplicas=7",
        ),
    )
    spec = scaled_object(overridden, service)["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (4, 7)


def test_ci_values_set_their_own_range_and_polling() -> None:
    spec = scaled_object(render(KEDA_VALUES), "coordinator")["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 60)
    assert spec["pollingInterval"] == 10


def test_without_keda_the_cpu_hpas_stay() -> None:
    docs = render()
    assert find(docs, "ScaledObject") == []
    assert find(docs, "TriggerAuthentication") == []
    for service in SERVICES:
        hpa = one(docs, "HorizontalPodAutoscaler", f"tai-{service}")["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == DESIGN_REPLICAS[service]
        assert hpa["metrics"] == [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70},
                },
            }
        ]


def test_a_service_without_autoscaling_gets_neither() -> None:
    docs = render((), (*KEDA_ON, "--set", "services.scheduler.autoscaling.enabled=false"))
    assert find(docs, "ScaledObject", "tai-scheduler") == []
    assert find(docs, "HorizontalPodAutoscaler") == []
    assert one(docs, "Deployment", "tai-scheduler")["spec"]["replicas"] == 2
    dev = render((CI_VALUES / "dev-values.yaml",), (*KEDA_ON, "--set", "mode=services"))
    assert find(dev, "ScaledObject") == []
    assert find(dev, "TriggerAuthentication") == []


@pytest.mark.parametrize("service", ["governor", "coordinator"])
def test_cpu_trigger_targets_the_service_container(service: str) -> None:
    docs = render(
        (), (*KEDA_ON, "--set", f"services.{service}.autoscaling.targetCPUUtilizationPercentage=55")
    )
    cpu = triggers(docs, service)["cpu"]
    assert cpu["metricType"] == "Utilization"
    assert cpu["metadata"]["value"] == "55"
    containers = one(docs, "Deployment", f"tai-{service}")["spec"]["template"]["spec"]["containers"]
    assert cpu["metadata"]["containerName"] == containers[0]["name"]


def test_governor_scales_on_the_p99_of_its_unary_calls() -> None:
    trigger = triggers(render(KEDA_VALUES), "governor")["prometheus"]
    assert trigger["metricType"] == "Value"
    assert trigger["metadata"]["serverAddress"] == (
        "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    )
    assert trigger["metadata"]["threshold"] == "0.15"
    query = trigger["metadata"]["query"]
    assert query.startswith("histogram_quantile(0.99, ")
    assert "rate(grpc_server_handling_seconds_bucket{" in query
    for matcher in (
        f'namespace="{NAMESPACE}"',
        'job="tai-governor"',
        'grpc_type="unary"',  # streams are timed over their whole life
        'grpc_service="tai.v1.Governor"',
    ):
        assert matcher in query, matcher


def test_scheduler_scales_on_its_due_tasks() -> None:
    """Its queue depth: the due tasks no live lease holds. Every replica reports the same
    count, so the query takes the max, and AverageValue divides it among the replicas."""
    trigger = triggers(render(KEDA_VALUES), "scheduler")["prometheus"]
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "16"
    assert trigger["metadata"]["query"] == (
        f'max(tai_scheduler_due_tasks{{namespace="{NAMESPACE}",job="tai-scheduler"}}) or vector(0)'
    )
    overridden = render((), (*KEDA_ON, "--set", "keda.scheduler.dueTasksPerReplica=40"))
    assert triggers(overridden, "scheduler")["prometheus"]["metadata"]["threshold"] == "40"


def test_coordinator_scales_on_its_pubsub_backlog_with_workload_identity() -> None:
    docs = render(KEDA_VALUES)
    trigger = triggers(docs, "coordinator")["prometheus"]
    assert trigger["metadata"]["serverAddress"] == (
        "https://monitoring.googleapis.com/v1/projects/acme-tai/location/global/prometheus"
    )
    assert trigger["metadata"]["threshold"] == "50"
    query = trigger["metadata"]["query"]
    assert "pubsub.googleapis.com/subscription/num_undelivered_messages" in query
    assert 'project_id="acme-tai"' in query
    authentication = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert authentication["metadata"]["namespace"] == NAMESPACE
    assert authentication["spec"] == {"podIdentity": {"provider": "gcp"}}
    assert "kind" not in trigger["authenticationRef"]  # the namespaced kind


def test_coordinator_backlog_follows_the_values() -> None:
    docs = render(
        (),
        (
            *KEDA_ON,
            "--set",
            "config.pubsub.project=bus-project",
            "--set",
            "keda.coordinator.pubsubBacklog.serverAddress=https://gmp.example.test/prometheus",
        ),
    )
    metadata = triggers(docs, "coordinator")["prometheus"]["metadata"]
    assert metadata["serverAddress"] == "https://gmp.example.test/prometheus"
    assert 'project_id="bus-project"' in metadata["query"]
    off = render((), (*KEDA_ON, "--set", "keda.coordinator.pubsubBacklog.enabled=false"))
    assert list(triggers(off, "coordinator")) == ["cpu"]
    assert find(off, "TriggerAuthentication") == []


def test_a_coordinator_without_any_trigger_is_refused(tmp_path: Path) -> None:
    values = {
        "keda": {
            "enabled": True,
            "coordinator": {"cpu": False, "pubsubBacklog": {"enabled": False}},
        }
    }
    error = render_error(values, tmp_path)
    assert "keda.coordinator: cpu and pubsubBacklog.enabled are both off" in error, error


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"keda": {"prometheus": {"address": "http://p:9090"}}}, "at '/keda/prometheus'"),
        ({"keda": {"prometheus": {"serverAddress": "prometheus:9090"}}}, "serverAddress"),
        ({"keda": {"prometheus": {"rateWindow": "2 minutes"}}}, "rateWindow"),
        ({"keda": {"governor": {"latencyThresholdSeconds": 0}}}, "latencyThresholdSeconds"),
        ({"keda": {"scheduler": {"dueTasksPerReplica": 0}}}, "dueTasksPerReplica"),
        ({"keda": {"scheduler": {"queueDepth": 10}}}, "additional properties 'queueDepth'"),
    ],
    ids=[
        "unknown key",
        "address without scheme",
        "window",
        "zero threshold",
        "zero due tasks per replica",
        "unknown trigger",
    ],
)
def test_bad_keda_values_are_refused(values: dict[str, Any], expected: str, tmp_path: Path) -> None:
    error = render_error(values, tmp_path)
    assert expected in error, error


@pytest.mark.parametrize("values", [(), KEDA_VALUES], ids=["defaults", "ci-keda"])
def test_trigger_metadata_is_what_keda_reads(values: tuple[Path, ...]) -> None:
    """KEDA's CRD types `metadata` as a free map of strings, so a misspelt key (`serverAdress`)
    would pass the schema and be ignored by the scaler: checked here against the keys KEDA's
    scaler documentation lists, with numbers that parse."""
    for scaled in find(render(values, KEDA_ON), "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            required, allowed = KEDA_METADATA[trigger["type"]]
            keys = set(trigger["metadata"])
            where = f"{scaled['metadata']['name']} {trigger['type']}"
            assert required <= keys, where
            assert keys <= allowed, where
            assert trigger["metricType"] in METRIC_TYPES[trigger["type"]], where
            assert all(isinstance(value, str) for value in trigger["metadata"].values()), where
            number = trigger["metadata"]["value" if trigger["type"] == "cpu" else "threshold"]
            assert float(number) > 0, where


# --- the queries, run by real PromQL engines ------------------------------------------------


class NamespacedPrometheus(PrometheusServer):
    """A Prometheus whose targets carry the `namespace` label prometheus-operator adds."""

    def config(self) -> dict[str, Any]:
        config = super().config()
        for job in config["scrape_configs"]:
            for static in job["static_configs"]:
                static["labels"] = {"namespace": NAMESPACE}
        return config


def scaler_value(prometheus: PrometheusServer, query: str) -> float:
    """What KEDA's prometheus scaler reads: the query must give exactly one finite sample."""
    result = prometheus.query(query)
    assert len(result) == 1, result
    value = float(result[0]["value"][1])
    assert math.isfinite(value), result
    return value


async def value_under_load(
    prometheus: PrometheusServer,
    query: str,
    load: Callable[[], Awaitable[object]],
    timeout: float = 30.0,
) -> float:
    """Runs `load` until the query reads more than 0. A histogram series' first scrape gives
    no rate, so the calls must go on across scrapes."""
    deadline = time.monotonic() + timeout
    while True:
        await load()
        value = await asyncio.to_thread(scaler_value, prometheus, query)
        if value > 0 or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def running(tasks: SchedulerClient, task_id: str, timeout: float = 20.0) -> None:
    """Waits until the task is running."""
    deadline = time.monotonic() + timeout
    while (status := (await tasks.get(task_id)).status) != "running":
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} is {status}, not running")
        await asyncio.sleep(0.05)


async def value_reaching(
    prometheus: PrometheusServer, query: str, expected: float, timeout: float = 30.0
) -> None:
    """Waits until the query reads `expected`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(scaler_value, prometheus, query)
        if value == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{query} reads {value}, not {expected}")
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_governor_and_scheduler_queries_on_a_real_prometheus(
    service_processes: MakeProcess, sqlite_url: str, tmp_path: Path
) -> None:
    """The ScaledObjects' queries, sent as KEDA sends them to the serverAddress in the values,
    read a number from real services: 0 while idle (not NaN or nothing, which KEDA cannot
    use); the Governor's p99 once calls are made; the Scheduler's due tasks while its two
    replicas are busy and more tasks wait (counted once, not once per replica), and 0 again
    once those are cancelled."""
    ledger = tmp_path / "ledger.db"
    test_ledger.connect(ledger).close()  # made (and in WAL mode) before any replica opens it
    store = {"TAI_STORE": sqlite_url, "TAI_BUS": sqlite_url, "TAI_SQLITE_SYNCHRONOUS": "NORMAL"}
    ports = {name: free_port() for name in ("governor", "scheduler-a", "scheduler-b")}
    governor = await service_processes(
        "tai_governor", **store, TAI_METRICS_PORT=str(ports["governor"])
    ).start()
    schedulers = [
        await service_processes(
            "tai_scheduler",
            **store,
            TAI_METRICS_PORT=str(ports[name]),
            TAI_REPLICA_ID=name,
            TAI_TEST_LEDGER=str(ledger),
            # One attempt at a time, so that a few tasks make a queue.
            TAI_WORKER_CONCURRENCY="1",
            TAI_DUE_TASKS_COUNT_SECONDS="0.2",
        ).start()
        for name in ("scheduler-a", "scheduler-b")
    ]
    prometheus = NamespacedPrometheus(
        tmp_path / "prometheus",
        {
            "tai-governor": [f"127.0.0.1:{ports['governor']}"],
            "tai-scheduler": [
                f"127.0.0.1:{ports[name]}" for name in ("scheduler-a", "scheduler-b")
            ],
        },
    )
    docs = render((), (*KEDA_ON, "--set", f"keda.prometheus.serverAddress={prometheus.url}"))
    for service in ("governor", "scheduler"):
        assert triggers(docs, service)["prometheus"]["metadata"]["serverAddress"] == prometheus.url
    try:
        await asyncio.to_thread(prometheus.start)
        await asyncio.to_thread(prometheus.wait_until_scraped)
        for service in ("governor", "scheduler"):
            idle = await asyncio.to_thread(scaler_value, prometheus, query_of(docs, service))
            assert idle == 0, service

        async with (
            open_channel(governor.target) as governor_channel,
            open_channel(schedulers[0].target) as scheduler_channel,
        ):
            policies = GovernorClient(governor_channel)
            tasks = SchedulerClient(scheduler_channel)

            async def propose() -> object:
                return await policies.propose(policy_type="finance", name="budget")

            p99 = await value_under_load(prometheus, query_of(docs, "governor"), propose)
            assert 0 < p99 <= 10  # the histogram's largest finite bucket

            async def sleeping() -> str:
                receipt = await tasks.submit(
                    task_type="test_sleep", parameters={"seconds": "120"}, timeout_seconds=600
                )
                return receipt.resource_id

            # Each replica runs one; the next three wait.
            submitted = [await sleeping(), await sleeping()]
            for task_id in submitted:
                await running(tasks, task_id)
            submitted += [await sleeping() for _ in range(3)]
            # Both replicas count the same three: the trigger reads 3, not 6.
            await value_reaching(prometheus, 'min(tai_scheduler_due_tasks{job="tai-scheduler"})', 3)
            due = query_of(docs, "scheduler")
            assert await asyncio.to_thread(scaler_value, prometheus, due) == 3

            for task_id in submitted:
                await tasks.cancel(task_id, reason="test over")
            await value_reaching(prometheus, due, 0)
    finally:
        prometheus.stop()


def test_coordinator_backlog_query_on_promtools_engine(tmp_path: Path) -> None:
    """The backlog query on series shaped like Cloud Monitoring's Pub/Sub metrics: the worst
    backlog among the stable replicas' live subscriptions; a dead replica's orphaned
    subscription (no deliveries), the canary's, another service's and another project's do not
    count; 0, not an empty answer, when no live subscription is left."""
    query = query_of(render(KEDA_VALUES), "coordinator")

    def series(name: str, subscription: str, values: str, project: str = "acme-tai") -> Doc:
        return {
            "series": (
                f'{{__name__="pubsub.googleapis.com/subscription/{name}",'
                f'monitored_resource="pubsub_subscription",project_id="{project}",'
                f'subscription_id="{subscription}"}}'
            ),
            "values": values,
        }

    def subscription(
        name: str, backlog: int, delivering: bool, project: str = "acme-tai"
    ) -> list[Doc]:
        sent = "0+30x20" if delivering else "120x20"
        return [
            series("num_undelivered_messages", name, f"{backlog}x20", project),
            series("sent_message_count", name, sent, project),
        ]

    live = [
        *subscription("coordinator-tai-coordinator-5d8c7b9f4-x2x9k-tai-actions", 40, True),
        *subscription("coordinator-tai-coordinator-5d8c7b9f4-x2x9k-tai-policies", 3, True),
        *subscription("coordinator-tai-coordinator-5d8c7b9f4-q7w2p-tai-actions", 75, True),
    ]
    ignored = [
        *subscription("coordinator-tai-coordinator-5d8c7b9f4-dead1-tai-actions", 9000, False),
        *subscription("coordinator-tai-coordinator-canary-7f6d5c4b3-c4n4r-tai-actions", 800, True),
        *subscription("governor-tai-governor-6c5b4a3d2-g0v3r-tai-policies", 700, True),
        *subscription("scheduler-actions", 600, True),
        *subscription(
            "coordinator-tai-coordinator-5d8c7b9f4-x2x9k-tai-actions", 500, True, "other"
        ),
    ]
    tests = [
        {
            "interval": "15s",
            "input_series": live + ignored,
            "promql_expr_test": [
                {"expr": query, "eval_time": "4m", "exp_samples": [{"labels": "{}", "value": 75}]}
            ],
        },
        {
            "interval": "15s",
            "input_series": ignored,
            "promql_expr_test": [
                {"expr": query, "eval_time": "4m", "exp_samples": [{"labels": "{}", "value": 0}]}
            ],
        },
    ]
    test_file = tmp_path / "backlog-test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [], "tests": tests}))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


async def test_backlog_query_names_the_subscriptions_the_coordinator_makes(
    sqlite_url: str,
) -> None:
    """The subscriptions come from the services themselves: a Governor, a stable and a canary
    Coordinator replica (named as their pods are, TAI_REPLICA_ID) and a Scheduler subscribe on
    the embedded bus, whose subscription names are the ones Pub/Sub gets
    (`SubscriptionSpec.name`); the query's pattern matches the stable Coordinator's and no
    other."""
    query = query_of(render((), KEDA_ON), "coordinator")
    patterns = set(re.findall(r'subscription_id=~"([^"]+)"', query))
    assert len(patterns) == 1, query
    pattern = re.compile(patterns.pop())

    stable = "tai-coordinator-5d8c7b9f4-x2x9k"
    async with (
        inprocess.governor(sqlite_url, replica="tai-governor-6c5b4a3d2-g0v3r") as governor,
        inprocess.coordinator(sqlite_url, governor.target, replica=stable) as coordinator,
        inprocess.coordinator(
            sqlite_url, governor.target, replica="tai-coordinator-canary-7f6d5c4b3-c4n4r"
        ),
        inprocess.scheduler(
            sqlite_url, governor.target, coordinator.target, replica="tai-scheduler-1-2"
        ),
    ):
        path = sqlite_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            names = {row[0] for row in db.execute("SELECT name FROM bus_subscriptions")}
    matched = {name for name in names if pattern.fullmatch(name)}
    assert matched == {f"coordinator-{stable}-tai-policies", f"coordinator-{stable}-tai-actions"}
    assert len(names) > len(matched) + 2, names  # the others were there to be refused
