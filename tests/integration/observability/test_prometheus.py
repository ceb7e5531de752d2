"""A real Prometheus scrapes a real Governor process: the gRPC metrics under their standard names
and the domain metrics arrive with the expected labels and values, and TAI's recording rules
(deploy/prometheus/tai-alerts.yaml) produce their series from them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.processes import ServiceProcess, free_port
from support.prometheus_server import PrometheusServer, running_prometheus
from tai.v1 import governor_pb2
from tai_client import GovernorClient, InvalidRequest, open_channel

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "tai-alerts.yaml"

MakeProcess = Callable[..., ServiceProcess]


def values(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    """{(label values…): sample value} of an instant-query result."""
    return {
        tuple(series["metric"].get(label, "") for label in labels): float(series["value"][1])
        for series in result
    }


async def test_prometheus_scrapes_the_governors_grpc_and_domain_metrics(
    service_processes: MakeProcess, sqlite_url: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    governor = await service_processes(
        "tai_governor",
        TAI_STORE=sqlite_url,
        TAI_BUS=sqlite_url,
        TAI_METRICS_PORT=str(metrics_port),
    ).start()

    async with open_channel(governor.target) as channel:
        client = GovernorClient(channel)
        action = governor_pb2.ActionTemplate(action_type="page", target_service="oncall")
        first = await client.propose(
            policy_type="operational", name="page-on-alert", condition="true", action=action
        )
        await client.propose(policy_type="finance", name="budget", rules={"limit": "100"})
        await client.enforce(first.resource_id)
        await client.get(first.resource_id)
        with pytest.raises(InvalidRequest):
            await client.propose(policy_type="astrology", name="bad")

        with running_prometheus(
            tmp_path / "prometheus",
            {"tai-governor": [f"127.0.0.1:{metrics_port}"]},
            rule_files=[RULES],
        ) as prometheus:
            await asyncio.to_thread(prometheus.wait_until_scraped)
            await check_scraped_series(prometheus)

            # The recording rules see the real label values (tai.v1 services, le="0.25"):
            # calls between two scrapes give them a rate (a series' first sample gives none,
            # hence the GetPolicy call before the first scrape).
            for _ in range(5):
                await client.get(first.resource_id)
            await asyncio.to_thread(
                prometheus.wait_for, 'job:tai_grpc_unary_calls:rate5m{job="tai-governor"} > 0'
            )
            slow = await asyncio.to_thread(
                prometheus.wait_for,
                'job:tai_grpc_unary_slow_calls:ratio_rate5m{job="tai-governor"}',
            )
            assert 0.0 <= float(slow[0]["value"][1]) <= 1.0
            errors = await asyncio.to_thread(
                prometheus.query,
                'job:tai_grpc_unary_server_errors:ratio_rate5m{job="tai-governor"}',
            )
            assert values(errors) in ({(): 0.0}, {})  # INVALID_ARGUMENT is the caller's fault


async def check_scraped_series(prometheus: PrometheusServer) -> None:
    async def query(expr: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(prometheus.query, expr)

    up = await query('up{job="tai-governor"}')
    assert values(up) == {(): 1.0}
    assert values(await query('tai_ready{job="tai-governor"}')) == {(): 1.0}

    handled = await query('grpc_server_handled_total{grpc_method="ProposePolicy"}')
    assert values(handled, "job", "grpc_type", "grpc_service", "grpc_code") == {
        ("tai-governor", "unary", "tai.v1.Governor", "OK"): 2.0,
        ("tai-governor", "unary", "tai.v1.Governor", "INVALID_ARGUMENT"): 1.0,
    }
    started = await query('grpc_server_started_total{grpc_method="ProposePolicy"}')
    assert values(started) == {(): 3.0}
    timed = await query('grpc_server_handling_seconds_count{grpc_method="ProposePolicy"}')
    assert values(timed) == {(): 3.0}
    buckets = await query(
        'grpc_server_handling_seconds_bucket{grpc_method="ProposePolicy",le="+Inf"}'
    )
    assert values(buckets) == {(): 3.0}

    # Domain metrics: versions written by state, and the policies-by-state gauge (counted
    # from the store when the Governor starts and every 15 s: present for every state).
    changes = await query('tai_policy_changes_total{job="tai-governor"}')
    assert values(changes, "state") == {("PROPOSED",): 2.0, ("ENFORCED",): 1.0}
    states = await query('tai_policies{job="tai-governor"}')
    assert set(values(states, "state")) == {
        ("PROPOSED",),
        ("DRY_RUN",),
        ("ENFORCED",),
        ("REVOKED",),
    }
    assert len(await query('tai_outbox_backlog{job="tai-governor"}')) == 1
