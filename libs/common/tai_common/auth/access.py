"""The method-to-role table: the one place that says who may call what.

Methods not listed here are refused to everyone but admins, so a new RPC is closed until it is
given a role. The health and reflection services and the seed's HealthCheck are open to all.
"""

from __future__ import annotations

from collections.abc import Mapping

from tai_common.auth.principal import Role

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

METHOD_ROLES: Mapping[str, Role] = {
    # Governor
    "/tai.v1.Governor/ProposePolicy": Role.OPERATOR,
    "/tai.v1.Governor/EnforcePolicy": Role.ADMIN,
    "/tai.v1.Governor/RevokePolicy": Role.ADMIN,
    "/tai.v1.Governor/GetPolicies": Role.VIEWER,
    "/tai.v1.Governor/GetPolicy": Role.VIEWER,
    "/tai.v1.Governor/ListPolicyVersions": Role.VIEWER,
    "/tai.v1.Governor/StreamPolicies": Role.VIEWER,
    "/tai.v1.Governor/ListAuditRecords": Role.ADMIN,
    "/tai.v1.Governor/VerifyAuditLog": Role.ADMIN,
    # Namespaces: creating, changing and deleting them needs the admin role in every namespace
    # ("*": platform admins); reading them, a role in the namespace read (checked by the
    # Governor, as these calls name their namespace in the request, not in the metadata).
    "/tai.v1.Governor/CreateNamespace": Role.ADMIN,
    "/tai.v1.Governor/SetNamespaceQuotas": Role.ADMIN,
    "/tai.v1.Governor/DeleteNamespace": Role.ADMIN,
    "/tai.v1.Governor/ListNamespaces": Role.VIEWER,
    "/tai.v1.Governor/GetNamespace": Role.VIEWER,
    # Coordinator
    "/tai.v1.Coordinator/SubmitSignal": Role.OPERATOR,
    "/tai.v1.Coordinator/RequestAction": Role.OPERATOR,
    # Taking delivery of actions changes their state, so it is more than a read.
    "/tai.v1.Coordinator/StreamActions": Role.OPERATOR,
    "/tai.v1.Coordinator/AcknowledgeAction": Role.OPERATOR,
    "/tai.v1.Coordinator/GetStatus": Role.VIEWER,
    "/tai.v1.Coordinator/GetAction": Role.VIEWER,
    # Following changes takes no delivery, unlike StreamActions.
    "/tai.v1.Coordinator/WatchActions": Role.VIEWER,
    "/tai.v1.Coordinator/ListActions": Role.VIEWER,
    "/tai.v1.Coordinator/GetSignal": Role.VIEWER,
    "/tai.v1.Coordinator/ListSignals": Role.VIEWER,
    "/tai.v1.Coordinator/ExplainSignal": Role.VIEWER,
    "/tai.v1.Coordinator/SummarizeDecisions": Role.VIEWER,
    "/tai.v1.Coordinator/CreateSilence": Role.OPERATOR,
    "/tai.v1.Coordinator/ExpireSilence": Role.OPERATOR,
    "/tai.v1.Coordinator/ListSilences": Role.VIEWER,
    "/tai.v1.Coordinator/GetSilence": Role.VIEWER,
    "/tai.v1.Coordinator/ApproveAction": Role.APPROVER,
    "/tai.v1.Coordinator/RejectAction": Role.APPROVER,
    # A read, but one that scans up to days of signals: for those who write policies.
    "/tai.v1.Coordinator/SimulatePolicy": Role.OPERATOR,
    # Scheduler (cancelling someone else's task also needs ADMIN: checked by the Scheduler)
    "/tai.v1.Scheduler/SubmitTask": Role.OPERATOR,
    "/tai.v1.Scheduler/CancelTask": Role.OPERATOR,
    "/tai.v1.Scheduler/GetTaskStatus": Role.VIEWER,
    "/tai.v1.Scheduler/ListTasks": Role.VIEWER,
    "/tai.v1.Scheduler/StreamTaskUpdates": Role.VIEWER,
    # A recurring task's schedule, under an operator's hand (others' schedules also need ADMIN:
    # checked by the Scheduler, as for CancelTask).
    "/tai.v1.Scheduler/PauseSchedule": Role.OPERATOR,
    "/tai.v1.Scheduler/ResumeSchedule": Role.OPERATOR,
    "/tai.v1.Scheduler/TriggerSchedule": Role.OPERATOR,
    "/tai.v1.Scheduler/BackfillSchedule": Role.OPERATOR,
    "/tai.v1.Scheduler/ListUpcomingRuns": Role.VIEWER,
}

OPEN_METHODS = frozenset(
    {
        "/tai.v1.Governor/HealthCheck",
        "/tai.v1.Coordinator/HealthCheck",
        "/tai.v1.Scheduler/HealthCheck",
    }
)

# The internal calls each service makes, which it may make with its certificate alone (mTLS),
# without a token: the Scheduler's executors and the Coordinator's policy listing.
SERVICE_CALLS: Mapping[str, frozenset[str]] = {
    "scheduler": frozenset(
        {
            "/tai.v1.Governor/EnforcePolicy",
            "/tai.v1.Governor/RevokePolicy",
            "/tai.v1.Coordinator/RequestAction",
        }
    ),
    # The policy listing, and SimulatePolicy's reading of a stored version.
    "coordinator": frozenset({"/tai.v1.Governor/GetPolicies", "/tai.v1.Governor/GetPolicy"}),
}


# The calls on the installation's namespaces rather than inside one: the role they need is held
# in every namespace ("*") for changes; reads need a role in some namespace (the Governor shows
# each caller the namespaces it holds).
INSTALLATION_METHODS: Mapping[str, Role | None] = {
    "/tai.v1.Governor/CreateNamespace": Role.ADMIN,
    "/tai.v1.Governor/SetNamespaceQuotas": Role.ADMIN,
    "/tai.v1.Governor/DeleteNamespace": Role.ADMIN,
    "/tai.v1.Governor/ListNamespaces": None,
    "/tai.v1.Governor/GetNamespace": None,
}


def is_installation_method(method: str) -> bool:
    return method in INSTALLATION_METHODS


def installation_role(method: str) -> Role | None:
    """The role in every namespace ("*") an installation method needs; None: a role in any
    namespace (the Governor answers with what the caller holds)."""
    return INSTALLATION_METHODS.get(method)


def is_open(method: str) -> bool:
    return method in OPEN_METHODS or method.startswith(OPEN_PREFIXES)


def required_role(method: str) -> Role:
    """The least role that may call `method` (ADMIN for methods not in the table)."""
    return METHOD_ROLES.get(method, Role.ADMIN)


def service_may_call(service: str, method: str) -> bool:
    return method in SERVICE_CALLS.get(service, frozenset())
