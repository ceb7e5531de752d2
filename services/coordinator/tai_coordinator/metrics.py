"""The Coordinator's domain metrics (Prometheus, on the service's /metrics). No ids in labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SIGNALS = Counter("tai_signals_total", "Signals accepted, by type.", ["signal_type"])
EVALUATIONS = Counter(
    "tai_policy_evaluations_total", "Policy conditions evaluated against signals."
)
MATCHES = Counter(
    "tai_policy_matches_total",
    "Conditions that matched: enforced (an action, unless in cooldown), dry_run or suppressed.",
    ["mode"],
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
