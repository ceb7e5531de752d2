"""The Governor's domain metrics (Prometheus, on the service's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

POLICIES = Gauge(
    "tai_policies",
    "Policies by state (their current version) and namespace (TAI_NAMESPACE_METRIC_LABELS "
    'namespaces by name, the rest as "other").',
    ["state", "namespace"],
)
POLICY_CHANGES = Counter(
    "tai_policy_changes_total", "Policy versions written, by the state they are in.", ["state"]
)
STREAMS = Gauge("tai_policy_streams", "StreamPolicies subscribers connected to this replica.")
