"""The Grafana dashboards (deploy/grafana) and the Prometheus rules (deploy/prometheus) against
the real tools and the real services:

- promtool checks the rules and the local configuration, and runs the rules' unit tests;
- a real Prometheus loads the rules (their metadata is read back from its API) and parses every
  dashboard query;
- every metric name, label and label value the dashboards and rules use is exported by the
  three services, scraped live after exercising them (policy, signal, action delivered and
  acknowledged, an action expired, a task run, a policy condition failing to evaluate, a
  policy simulation, a match held back by a blast-radius limit, an action awaiting approval
  and rejected, a match held back by a silence, a call refused by the rate limit).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.processes import ServiceProcess, free_port
from support.prometheus_server import PrometheusServer, promtool, running_prometheus
from tai.v1 import coordinator_pb2, governor_pb2
from tai_client import CoordinatorClient, GovernorClient, SchedulerClient, TaiError, open_channel

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "tai-alerts.yaml"
RULE_TESTS = PROMETHEUS / "tai-alerts.test.yaml"
LOCAL_CONFIG = PROMETHEUS / "prometheus.yaml"
RUNBOOK = PROMETHEUS / "RUNBOOK.md"
DASHBOARDS = ("tai-overview", "tai-governor", "tai-coordinator", "tai-scheduler")

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"timeseries", "stat", "gauge"}
UNITS = {"reqps", "ops", "percentunit", "s", "short", "none"}
# Labels Prometheus attaches to every scraped series (not in the services' /metrics).
TARGET_LABELS = {"job", "instance"}
REQUIRED_ALERTS = {
    "TaiServerErrorRatioHigh",
    "TaiLatencyBudgetBurnFast",
    "TaiLatencyBudgetBurnSlow",
    "TaiOutboxBacklogGrowing",
    "TaiTaskDispatchLagHigh",
    "TaiActionsExpiring",
    "TaiBlastRadiusLimitReached",
    "TaiNotReady",
    "TaiTargetDown",
    "TaiCircuitBreakerOpen",
}

MakeProcess = Callable[..., ServiceProcess]

HELD = coordinator_pb2.DECISION_OUTCOME_HELD
MATCHED = coordinator_pb2.DECISION_OUTCOME_MATCHED
NS = 1_000_000_000


# --- a PromQL tokenizer: enough to find the metric selectors of an expression -------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>,@])
  | (?P<paren>[(){}\[\]])
    """,
    re.VERBOSE,
)
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}  # fmt: skip
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = AGGREGATIONS | GROUPING | {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[Matcher, ...]


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot tokenize {expr[position:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
        position = match.end()
    return out


def _unquote(literal: str) -> str:
    return literal[1:-1] if literal[0] == "`" else json.loads('"' + literal[1:-1] + '"')


def selectors(expr: str) -> list[Selector]:
    """The metric selectors of `expr`: identifiers followed by `{`, `[` or standing alone that
    are not functions, aggregations, keywords or label names."""
    toks = tokens(expr)
    found: list[Selector] = []
    i = 0

    def skip_to(closing: str, j: int) -> int:
        while toks[j][1] != closing:
            j += 1
        return j + 1

    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "paren" and text == "[":
            i = skip_to("]", i)  # range or subquery: durations and variables
        elif kind == "paren" and text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        elif kind != "ident":
            i += 1
        elif text in GROUPING and following == "(":
            i = skip_to(")", i)  # a list of label names
        elif text in KEYWORDS or following == "(":
            i += 1  # a function, an aggregation or an operator
        else:
            matchers: list[Matcher] = []
            i += 1
            if following == "{":
                i += 1
                while toks[i][1] != "}":
                    (_, label), (_, op), (value_kind, value) = toks[i : i + 3]
                    assert value_kind == "string", (expr, value)
                    matchers.append(Matcher(label, op, _unquote(value)))
                    i += 3
                    if toks[i][1] == ",":
                        i += 1
                i += 1
            found.append(Selector(text, tuple(matchers)))
    return found


def test_the_tokenizer_finds_metrics_not_functions_labels_or_keywords() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(x_bucket{job=~"$job",le!="1"}'
        "[$__rate_interval]))) / on() group_left() sum without (instance) (y) "
        'and z offset 5m > bool 2 or absent(up{job="a\\"b"}) * count(w[5m:1m])'
    )
    assert selectors(expr) == [
        Selector("x_bucket", (Matcher("job", "=~", "$job"), Matcher("le", "!=", "1"))),
        Selector("y", ()),
        Selector("z", ()),
        Selector("up", (Matcher("job", "=", 'a"b'),)),
        Selector("w", ()),
    ]


# --- the files -----------------------------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads((GRAFANA / f"{name}.json").read_text()) for name in DASHBOARDS}


def dashboard_queries(dashboards: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable (label_values(…) → its
    selector)."""
    for name, board in dashboards.items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                yield f"{name} / {panel['title']} / {target['refId']}", target["expr"]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]["query"]
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
                assert match, f"{name}: variable {variable['name']}: {query}"
                yield f"{name} / ${variable['name']}", match.group(1)


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as Prometheus sees it once Grafana has filled the variables in."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace('"$job"', '".+"')
        .replace('"$instance"', '".+"')
    )


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus with TAI's rules loaded (and nothing to scrape)."""
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), rule_files=[RULES]) as server:
        yield server


@pytest.fixture(scope="module")
def rules(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    loaded = prometheus.rules()
    assert loaded, "no rule loaded"
    assert all(rule["health"] != "err" for rule in loaded), loaded
    return loaded


# --- promtool ------------------------------------------------------------------------------------


def test_promtool_checks_the_rules_and_the_local_config() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    config = promtool("check", "config", str(LOCAL_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "tai-alerts.yaml" in config.stdout  # it loads the rules


def test_promtool_unit_tests_cover_every_alert(rules: list[dict[str, Any]]) -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    text = RULE_TESTS.read_text()
    for rule in rules:
        if rule["type"] == "alerting":
            assert f"alertname: {rule['name']}\n" in text, f"{rule['name']} has no unit test"


def test_the_local_config_scrapes_the_three_metrics_ports() -> None:
    text = LOCAL_CONFIG.read_text()
    for job, port in (("tai-governor", 9101), ("tai-coordinator", 9102), ("tai-scheduler", 9103)):
        assert re.search(
            rf"job_name: {job}\n\s+static_configs:\n\s+- targets: \[\"127\.0\.0\.1:{port}\"\]", text
        ), job


# --- the rules' metadata, as Prometheus loaded them ----------------------------------------------


def test_alerts_have_a_severity_a_summary_a_description_and_a_runbook(
    rules: list[dict[str, Any]],
) -> None:
    alerts = {rule["name"]: rule for rule in rules if rule["type"] == "alerting"}
    assert set(alerts) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(alerts)
    runbook = RUNBOOK.read_text()
    for name, alert in alerts.items():
        assert alert["labels"].get("severity") in {"critical", "warning"}, name
        annotations = alert["annotations"]
        assert annotations.get("summary"), name
        assert annotations.get("description"), name
        assert annotations.get("runbook") == f"deploy/prometheus/RUNBOOK.md#{name.lower()}", name
        assert f"\n## {name}\n" in runbook, f"RUNBOOK.md has no section for {name}"
        assert alert["duration"] > 0, f"{name} has no `for`"


# --- the dashboards ------------------------------------------------------------------------------


def test_dashboards_are_importable_and_consistent() -> None:
    dashboards = load_dashboards()
    assert len({board["uid"] for board in dashboards.values()}) == len(dashboards)
    for name, board in dashboards.items():
        assert board["uid"] == name
        assert board["title"].startswith("TAI / ")
        assert board["schemaVersion"] >= 38
        assert "tai" in board["tags"]
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert {"datasource", "job", "instance"} <= set(variables), name
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for var in ("job", "instance"):
            assert variables[var]["type"] == "query"
            assert variables[var]["datasource"] == DATASOURCE
        assert "$job" in variables["instance"]["query"]["query"]

        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            where = f"{name} / {panel['title']}"
            assert panel["type"] in PANEL_TYPES, where
            assert panel["datasource"] == DATASOURCE, where
            assert panel.get("description"), f"{where}: no description"
            assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, where
            grid = panel["gridPos"]
            assert grid["x"] >= 0, where
            assert grid["x"] + grid["w"] <= 24, where
            area = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not area & cells, f"{where} overlaps another panel"
            cells |= area
            assert panel["targets"], where
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), where
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, where
                for selector in selectors(target["expr"]):
                    present = {(m.label, m.op, m.value) for m in selector.matchers}
                    assert {("job", "=~", "$job"), ("instance", "=~", "$instance")} <= present, (
                        f"{where}: {selector.name} is not filtered by $job and $instance"
                    )


def test_every_dashboard_query_is_valid_promql(prometheus: PrometheusServer) -> None:
    queries = list(dashboard_queries(load_dashboards()))
    assert len(queries) > 50
    for where, expr in queries:
        try:
            prometheus.query(grafana_to_promql(expr))
        except Exception as error:
            raise AssertionError(f"{where}: {expr}\n{error}") from error


# --- every metric and label used is exported --------------------------------------------------


@dataclass
class Exported:
    """Sample names → the label sets seen, from the services' /metrics."""

    samples: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[sample.name].append(dict(sample.labels))


def problems(uses: list[tuple[str, Selector]], exported: Exported, recorded: set[str]) -> list[str]:
    found: list[str] = []
    for where, selector in uses:
        name = selector.name
        if ":" in name:
            if name not in recorded:
                found.append(f"{where}: {name} is not recorded by any rule")
            continue
        if name == "up":
            extra = {m.label for m in selector.matchers} - TARGET_LABELS
            if extra:
                found.append(f"{where}: up has no label {extra}")
            continue
        if name not in exported.samples:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            found.append(f"{where}: {name} (family {family}) is not exported by any service")
            continue
        label_sets = exported.samples[name]
        for matcher in selector.matchers:
            if matcher.label in TARGET_LABELS:
                continue
            seen = {labels[matcher.label] for labels in label_sets if matcher.label in labels}
            if not seen:
                found.append(f"{where}: {name} has no label {matcher.label}")
            elif matcher.op == "=" and "$" not in matcher.value and matcher.value not in seen:
                found.append(f"{where}: {name}{{{matcher.label}={matcher.value!r}}} never seen")
    return found


async def scrape(ports: list[int]) -> Exported:
    def get(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            return str(reply.read().decode())

    exported = Exported()
    for text in await asyncio.gather(*(asyncio.to_thread(get, port) for port in ports)):
        exported.add(text)
    return exported


async def decision_on(
    signals: CoordinatorClient, policy_id: str, signal_type: str, source: str
) -> coordinator_pb2.PolicyDecision | None:
    """Submits a signal and returns what `policy_id` came to on it (None: not evaluated)."""
    receipt = await signals.submit_signal(signal_type=signal_type, priority=5, source=source)
    record = await signals.explain_signal(receipt.resource_id)
    return next((d for d in record.decisions if d.policy_id == policy_id), None)


async def first_decision(
    signals: CoordinatorClient, policy_id: str, signal_type: str, source: str
) -> coordinator_pb2.PolicyDecision:
    """What `policy_id` came to on the first signal the Coordinator evaluated it against (it
    learns of a newly enforced policy from the bus, a moment later)."""
    for _ in range(200):
        decision = await decision_on(signals, policy_id, signal_type, source)
        if decision is not None:
            return decision
        await asyncio.sleep(0.05)
    raise AssertionError(f"policy {policy_id} never reached the Coordinator")


async def exercise(governor: str, coordinator: str, scheduler: str) -> None:
    """Enough traffic that every labelled series the dashboards and rules use exists."""
    async with (
        open_channel(governor) as g,
        open_channel(coordinator) as c,
        open_channel(scheduler) as s,
    ):
        policies, signals, tasks = GovernorClient(g), CoordinatorClient(c), SchedulerClient(s)
        policy = await policies.propose(
            policy_type="operational",
            name="page-on-alert",
            condition='signal.type == "alert"',
            action=governor_pb2.ActionTemplate(action_type="page", target_service="oncall"),
        )
        for _ in range(2):  # a cache miss, then a hit
            await policies.get(policy.resource_id)

        # The Scheduler enforces it: an attempt, a client call to the Governor, a breaker.
        task = await tasks.submit(
            task_type="enforce_policy", parameters={"policy_id": policy.resource_id}
        )
        for _ in range(200):
            if (await tasks.get(task.resource_id)).status == "completed":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the enforce_policy task did not complete")

        # A signal matches it once the Coordinator has the policy: an action, delivered on a
        # stream and acknowledged.
        stream = signals.stream_actions("oncall")
        for _ in range(200):
            receipt = await signals.submit_signal(signal_type="alert", priority=9)
            if receipt.action_ids:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no action created: the policy never reached the Coordinator")
        action = await asyncio.wait_for(stream.read(), 15)
        assert isinstance(action, coordinator_pb2.Action)
        await signals.acknowledge(action.id, "completed")
        stream.cancel()

        # An action nobody acknowledges: delivered once, then EXPIRED.
        ghost = signals.stream_actions("ghost")
        expiring = await signals.request_action(
            action_type="noop", target_service="ghost", ack_deadline_seconds=1, max_deliveries=1
        )
        assert await asyncio.wait_for(ghost.read(), 15) is not grpc.aio.EOF
        for _ in range(200):
            got = await signals.get_action(expiring.resource_id)
            if got.status == coordinator_pb2.ACTION_STATUS_EXPIRED:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the unacknowledged action did not expire")
        ghost.cancel()

        # An enforced policy whose condition cannot be evaluated on signals without a "team"
        # key: an error decision, which a simulation of that policy reports too.
        broken = await policies.propose(
            policy_type="operational",
            name="page-the-team",
            condition='signal.metadata["team"] == "db"',
            action=governor_pb2.ActionTemplate(action_type="page", target_service="oncall"),
        )
        await policies.enforce(broken.resource_id)
        for _ in range(200):
            receipt = await signals.submit_signal(signal_type="event", priority=1)
            record = await signals.explain_signal(receipt.resource_id)
            outcomes = {d.policy_id: d.outcome for d in record.decisions}
            if outcomes.get(broken.resource_id) == coordinator_pb2.DECISION_OUTCOME_ERROR:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the broken policy never reached the Coordinator")
        simulation = await signals.simulate_policy(policy_id=broken.resource_id, last=10)
        assert simulation.complete
        assert simulation.errors >= 1

        # A policy allowed one action in 10 minutes: its first match acts, the next is held
        # back by the limit.
        limited = await policies.propose(
            policy_type="operational",
            name="restart-on-flap",
            condition='signal.source.startsWith("flapping-")',
            action=governor_pb2.ActionTemplate(
                action_type="restart",
                target_service="api",
                limits=[governor_pb2.ActionLimit(max_actions=1, window_seconds=600)],
            ),
        )
        await policies.enforce(limited.resource_id)
        acted = await first_decision(signals, limited.resource_id, "event", "flapping-1")
        assert acted.outcome == MATCHED
        over = await decision_on(signals, limited.resource_id, "event", "flapping-2")
        assert over is not None
        assert (over.outcome, over.hold_reason) == (HELD, coordinator_pb2.HOLD_REASON_LIMIT)

        # A policy whose actions wait for approval: one created AWAITING_APPROVAL, then
        # rejected.
        reviewed = await policies.propose(
            policy_type="operational",
            name="rollback-on-failed-deploy",
            condition='signal.source == "deploy-pipeline"',
            action=governor_pb2.ActionTemplate(
                action_type="rollback", target_service="payments", require_approval=True
            ),
        )
        await policies.enforce(reviewed.resource_id)
        waiting = await first_decision(signals, reviewed.resource_id, "command", "deploy-pipeline")
        assert (waiting.outcome, waiting.hold_reason) == (
            HELD,
            coordinator_pb2.HOLD_REASON_APPROVAL,
        )
        assert (await signals.get_action(waiting.action_id)).status == (
            coordinator_pb2.ACTION_STATUS_AWAITING_APPROVAL
        )
        rejected = await signals.reject_action(waiting.action_id, "not during the freeze")
        assert rejected.status == coordinator_pb2.ACTION_STATUS_REJECTED

        # An active silence over one source holds back the first policy's matches from it.
        silence = await signals.create_silence(
            condition='signal.source == "maintenance"',
            ends_at_ns=time.time_ns() + 600 * NS,
            comment="maintenance window",
        )
        assert silence.state == coordinator_pb2.SILENCE_STATE_ACTIVE
        silenced = await decision_on(signals, policy.resource_id, "alert", "maintenance")
        assert silenced is not None
        assert (silenced.outcome, silenced.held_by) == (HELD, silence.id)

        # Over the Coordinator's rate limit for GetStatus (1 a second): RESOURCE_EXHAUSTED.
        codes = []
        for _ in range(3):
            try:
                await signals.status()
                codes.append(grpc.StatusCode.OK)
            except TaiError as error:
                codes.append(error.code)
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes


@pytest.mark.slow
async def test_every_metric_and_label_the_dashboards_and_rules_use_is_exported(
    service_processes: MakeProcess, sqlite_url: str, rules: list[dict[str, Any]]
) -> None:
    grpc_ports = {name: free_port() for name in ("governor", "coordinator", "scheduler")}
    metrics_ports = {name: free_port() for name in grpc_ports}
    common = {
        "TAI_STORE": sqlite_url,
        "TAI_BUS": sqlite_url,
        "TAI_GOVERNOR_TARGET": f"127.0.0.1:{grpc_ports['governor']}",
        "TAI_COORDINATOR_TARGET": f"127.0.0.1:{grpc_ports['coordinator']}",
    }

    def make(name: str, **env: str) -> ServiceProcess:
        return service_processes(
            f"tai_{name}",
            TAI_GRPC_PORT=str(grpc_ports[name]),
            TAI_METRICS_PORT=str(metrics_ports[name]),
            **common,
            **env,
        )

    governor = await make("governor").start()
    coordinator, scheduler = await asyncio.gather(
        make(
            "coordinator",
            TAI_RATE_LIMIT_PER_SECOND="1000",
            TAI_RATE_LIMIT_BURST="1000",
            TAI_RATE_LIMITS='{"GetStatus": 1}',
        ).start(),
        make("scheduler").start(),
    )
    await exercise(governor.target, coordinator.target, scheduler.target)

    recorded = {rule["name"] for rule in rules if rule["type"] == "recording"}
    uses = [
        (where, selector)
        for where, expr in dashboard_queries(load_dashboards())
        for selector in selectors(expr)
    ]
    uses += [
        (f"rule {rule['name']}", selector)
        for rule in rules
        for selector in selectors(rule["query"])
    ]
    names = {selector.name for _, selector in uses}
    assert {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "up"} <= names

    # Counters move just after the calls that cause them return: scrape again if needed.
    found: list[str] = []
    for _ in range(20):
        found = problems(uses, await scrape(list(metrics_ports.values())), recorded)
        if not found:
            break
        await asyncio.sleep(0.25)
    assert not found, "\n".join(found)
