"""The Coordinator's domain metrics (Prometheus, on the service's /metrics). No ids in labels."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from tai_coordinator.decisions import PolicyDecision

SIGNALS = Counter(
    "tai_signals_total",
    "Signals accepted, by type and namespace (past TAI_NAMESPACE_METRIC_LABELS namespaces, "
    'the rest as "other").',
    ["signal_type", "namespace"],
)
EVALUATIONS = Counter(
    "tai_policy_evaluations_total", "Policy conditions evaluated against signals."
)
DECISIONS = Counter(
    "tai_policy_decisions_total",
    "Policy evaluations against signals, by the policy's mode (enforced, dry_run) and the "
    "outcome (matched, not_matched, error, held).",
    ["mode", "outcome"],
)
SIMULATIONS = Counter(
    "tai_policy_simulations_total",
    "SimulatePolicy calls answered: complete (the whole window) or partial (the deadline came "
    "first).",
    ["result"],
)
SIMULATED_SIGNALS = Counter(
    "tai_policy_simulated_signals_total", "Stored signals evaluated by SimulatePolicy."
)
SIMULATION_SECONDS = Histogram(
    "tai_policy_simulation_seconds",
    "How long a SimulatePolicy call took.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
SIGNALS_PRUNED = Counter(
    "tai_signals_pruned_total",
    "Signals this replica deleted from the store: too old (age) or beyond the kept count (count).",
    ["reason"],
)
HELD = Counter(
    "tai_actions_held_total",
    "Matches of enforced policies held back: by a cooldown, a silence, a blast-radius limit, or "
    "waiting for approval (created, not delivered until approved).",
    ["reason"],
)
SILENCES = Gauge(
    "tai_silences", "Silences this replica knows, by state (active, pending).", ["state"]
)
ACTION_TRANSITIONS = Counter(
    "tai_action_transitions_total", "Actions entering each status.", ["status"]
)
ACTION_DELIVERY = Histogram(
    "tai_action_delivery_seconds",
    "Action latency: created → first delivered, and delivered → acknowledged.",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0),
)
ACTIVE_POLICIES = Gauge(
    "tai_active_policies", "ENFORCED and DRY_RUN policies this replica evaluates."
)
ACTION_STREAMS = Gauge("tai_action_streams", "StreamActions streams connected to this replica.")


def count_decisions(decisions: Iterable[PolicyDecision]) -> None:
    """Counts each decision in `tai_policy_decisions_total`, and each hold in
    `tai_actions_held_total`, one increment per label set."""
    decisions = list(decisions)
    tally = Tally((d.mode.value.lower(), d.outcome.value.lower()) for d in decisions)
    for (mode, outcome), count in tally.items():
        DECISIONS.labels(mode=mode, outcome=outcome).inc(count)
    holds = Tally(d.hold_reason.value.lower() for d in decisions if d.hold_reason is not None)
    for reason, count in holds.items():
        HELD.labels(reason=reason).inc(count)


# Every series exists from the start, at 0: a counter's first increment is otherwise lost to
# rate(), and an alert on errors would miss the first burst.
for _mode in ("enforced", "dry_run"):
    for _outcome in ("matched", "not_matched", "error", "held"):
        DECISIONS.labels(mode=_mode, outcome=_outcome)
for _result in ("complete", "partial"):
    SIMULATIONS.labels(result=_result)
for _reason in ("age", "count"):
    SIGNALS_PRUNED.labels(reason=_reason)
for _hold in ("cooldown", "silence", "limit", "approval"):
    HELD.labels(reason=_hold)
