"""The bus topics of the suite (the same names on Pub/Sub, Kafka and the local bus)."""

POLICIES = "tai-policies"
SIGNALS = "tai-signals"
ACTIONS = "tai-actions"
TASKS = "tai-tasks"
AUDIT_EVENTS = "tai-audit-events"

ALL = (POLICIES, SIGNALS, ACTIONS, TASKS, AUDIT_EVENTS)
