"""The isolation barrage: two namespaces, each with a token of its own, on one installation.
Team B's token calls every method of every service (enumerated from the protos, so a new
method without an entry here fails the test) on team A's ids, naming team A's namespace, and
naming none; nothing of team A's is ever returned, changed, streamed, explained or simulated
against. Run on the embedded default and on the Firestore and Pub/Sub emulators."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.firestore_emulator import FirestoreEmulator
from support.firestore_emulator import firestore_emulator as firestore_emulator
from support.namespaces import METHODS, Caller, Installation, eventually, namespaced_suite
from support.pubsub_emulator import PubSubEmulator
from support.pubsub_emulator import pubsub_emulator as pubsub_emulator
from support.tokens import TokenIssuer
from tai.v1 import coordinator_pb2
from tai_common.auth import is_installation_method, is_open
from tai_common.core.namespace import in_namespace

A, B = "team-a", "team-b"
# Marks every resource of team A: no answer to team B may contain it.
SECRET = "secret-of-team-a"


@dataclass
class TeamA:
    """Team A's resources, made through the API with team A's token."""

    policy_id: str
    signal_id: str
    action_id: str
    silence_id: str
    task_id: str

    def ids(self) -> list[str]:
        return [self.policy_id, self.signal_id, self.action_id, self.silence_id, self.task_id]


def _a(kind: str) -> str:
    return f"a-{kind}-{uuid.uuid4().hex[:10]}"


# What team B sends when it names team A's resources; None: the method names no resource of
# A's (a listing, or a creation, made with B's own ids).
def _requests(a: TeamA) -> dict[str, dict[str, Any] | None]:
    b_id = f"b-{uuid.uuid4().hex[:10]}"
    now_ns = time.time_ns() + 86_400 * 10**9
    return {
        "ProposePolicy": {
            "id": b_id,
            "policy_type": "operational",
            "policy_name": "b's",
            "condition": "signal.type == 'alert'",
            "action": {"action_type": "scale", "target_service": "svc-b"},
        },
        "EnforcePolicy": {"id": a.policy_id},
        "RevokePolicy": {"id": a.policy_id},
        "GetPolicies": None,
        "StreamPolicies": None,
        "HealthCheck": None,
        "GetPolicy": {"id": a.policy_id},
        "ListPolicyVersions": {"id": a.policy_id},
        "ListAuditRecords": None,
        "VerifyAuditLog": None,
        "CreateNamespace": {"name": "team-c"},
        "ListNamespaces": None,
        "GetNamespace": {"name": A},
        "SetNamespaceQuotas": {"name": A, "quotas": {"max_open_tasks": 1}},
        "DeleteNamespace": {"name": A, "force": True},
        "SubmitSignal": {"id": b_id, "signal_type": "alert", "priority": 5, "source": "b"},
        "RequestAction": {"id": b_id, "action_type": "scale", "target_service": "svc-a"},
        "StreamActions": None,
        "WatchActions": None,
        "AcknowledgeAction": {"action_id": a.action_id, "status": "completed"},
        "GetStatus": None,
        "GetAction": {"action_id": a.action_id},
        "ListActions": None,
        "GetSignal": {"id": a.signal_id},
        "ListSignals": None,
        "ExplainSignal": {"signal_id": a.signal_id},
        "CreateSilence": {
            "id": b_id,
            "matcher": {"target_service": "svc-a"},
            "ends_at_ns": str(now_ns),
            "comment": "b's",
        },
        "ListSilences": {"include_expired": True},
        "GetSilence": {"silence_id": a.silence_id},
        "ExpireSilence": {"silence_id": a.silence_id, "comment": "b was here"},
        "ApproveAction": {"action_id": a.action_id, "comment": "b was here"},
        "RejectAction": {"action_id": a.action_id, "comment": "b was here"},
        "SummarizeDecisions": {"policy_id": a.policy_id},
        "SimulatePolicy": {"stored": {"id": a.policy_id}, "last": 100},
        "SubmitTask": {
            "task_id": b_id,
            "task_type": "request_action",
            "parameters": {"action_type": "scale", "target_service": "svc-b"},
        },
        "CancelTask": {"task_id": a.task_id, "reason": "b was here"},
        "GetTaskStatus": {"task_id": a.task_id},
        "StreamTaskUpdates": {"task_id": a.task_id},
        "ListTasks": None,
        "PauseSchedule": {"task_id": a.task_id},
        "ResumeSchedule": {"task_id": a.task_id},
        "TriggerSchedule": {"task_id": a.task_id},
        "BackfillSchedule": {
            "task_id": a.task_id,
            "start_ns": str(now_ns - 3600 * 10**9),
            "end_ns": str(now_ns),
        },
        "ListUpcomingRuns": {"task_id": a.task_id},
    }


# How a call naming A's resource from B must end: the resource does not exist there.
HIDDEN = grpc.StatusCode.NOT_FOUND
# Installation calls B's token may not make (it is no platform admin), or may not make on A.
REFUSED_INSTALLATION = {"CreateNamespace", "SetNamespaceQuotas", "DeleteNamespace", "GetNamespace"}


@pytest.fixture(params=["sqlite", "emulators"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tai.db'}"
        return
    firestore: FirestoreEmulator = request.getfixturevalue("firestore_emulator")
    pubsub: PubSubEmulator = request.getfixturevalue("pubsub_emulator")
    project = f"tai-ns-{uuid.uuid4().hex[:10]}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRESTORE_EMULATOR_HOST", firestore.host)
        patch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
        yield f"firestore://{project}"
    firestore.wipe(project)


async def _make_team_a(team_a: Caller) -> TeamA:
    a = TeamA(_a("policy"), _a("signal"), "", _a("silence"), _a("task"))
    await team_a.ok(
        "Governor",
        "ProposePolicy",
        {
            "id": a.policy_id,
            "policy_type": "operational",
            "policy_name": SECRET,
            "condition": "signal.type == 'alert'",
            "action": {
                "action_type": "scale",
                "target_service": "svc-a",
                "parameters": {"owner": SECRET},
            },
        },
        A,
    )
    await team_a.ok("Governor", "EnforcePolicy", {"id": a.policy_id}, A)

    async def signal_makes_action() -> str:
        probe = _a("signal")
        await team_a.ok(
            "Coordinator",
            "SubmitSignal",
            {
                "id": probe,
                "signal_type": "alert",
                "priority": 5,
                "source": SECRET,
                "metadata": {"o": SECRET},
            },
            A,
        )
        explained = await team_a.ok("Coordinator", "ExplainSignal", {"signal_id": probe}, A)
        matched = [d.action_id for d in explained.decisions if d.action_id]
        if matched:
            a.signal_id = probe
        return matched[0] if matched else ""

    # The Coordinator learns of the enforcement from the bus: until then signals match nothing.
    a.action_id = await eventually(signal_makes_action)
    await team_a.ok(
        "Coordinator",
        "CreateSilence",
        {
            "id": a.silence_id,
            "matcher": {"target_service": "svc-nothing"},
            "ends_at_ns": str(time.time_ns() + 86_400 * 10**9),
            "comment": SECRET,
        },
        A,
    )
    await team_a.ok(
        "Scheduler",
        "SubmitTask",
        {
            "task_id": a.task_id,
            "task_type": "request_action",
            "cron_schedule": "0 0 1 1 *",
            "parameters": {"action_type": "scale", "target_service": "svc-a", "owner": SECRET},
        },
        A,
    )
    return a


async def _snapshot_of_a(team_a: Caller, a: TeamA) -> list[bytes]:
    """Team A's resources as team A reads them."""
    return [
        (await team_a.ok("Governor", "GetPolicy", {"id": a.policy_id}, A)).SerializeToString(),
        (await team_a.ok("Coordinator", "GetAction", {"action_id": a.action_id}, A)).status,
        (
            await team_a.ok("Coordinator", "GetSilence", {"silence_id": a.silence_id}, A)
        ).SerializeToString(),
        (await team_a.ok("Scheduler", "GetTaskStatus", {"task_id": a.task_id}, A)).status,
    ]  # type: ignore[list-item]


def _leaks(answer: bytes, message: str, a: TeamA) -> list[str]:
    """A's content in the answer or the error message, or A's ids in the answer (an error
    message may echo back the id B asked for)."""
    leaked = [marker for marker in a.ids() if marker.encode() in answer]
    if SECRET.encode() in answer + message.encode():
        leaked.append(SECRET)
    return leaked


@contextlib.asynccontextmanager
async def _two_teams(
    url: str, tmp_path: Path
) -> AsyncIterator[tuple[Installation, Caller, Caller]]:
    """The suite with namespaces A and B made by a platform admin, and each team's caller."""
    async with namespaced_suite(url, tmp_path, TokenIssuer()) as suite:
        platform = suite.caller({"*": "admin"})
        team_a = suite.caller({A: "admin"})
        team_b = suite.caller({B: "admin"})
        try:
            for name in (A, B):
                await platform.ok("Governor", "CreateNamespace", {"name": name}, "default")
            yield suite, team_a, team_b
        finally:
            for caller in (platform, team_a, team_b):
                await caller.close()


async def test_namespaces_are_isolated_over_the_wire(backend_url: str, tmp_path: Path) -> None:
    async with _two_teams(backend_url, tmp_path) as (_, team_a, team_b):
        a = await _make_team_a(team_a)
        requests = _requests(a)
        assert set(requests) == {m.name for m in METHODS}, "a method has no barrage entry"

        # Streams opened in B before A makes more: none may carry A's.
        streams = [
            asyncio.create_task(team_b.call(m, body, B))
            for m in METHODS
            if m.server_streaming
            for body in [
                {"service_name": "svc-a"}
                if m.name == "StreamActions"
                else {"target_service": "svc-a"}
                if m.name == "WatchActions"
                else requests[m.name]
            ]
        ]
        await asyncio.sleep(0.3)
        await team_a.ok(
            "Coordinator",
            "SubmitSignal",
            {
                "id": _a("signal"),
                "signal_type": "alert",
                "priority": 5,
                "source": SECRET + "-2",
            },
            A,
        )
        for code, answer, message in await asyncio.gather(*streams):
            assert code in (grpc.StatusCode.OK, HIDDEN), message
            assert not _leaks(answer, message, a), "a stream in B carried A's data"
        # The control: the same stream in A carries A's actions.
        stream_actions = next(m for m in METHODS if m.name == "StreamActions")
        code, answer, _ = await team_a.call(stream_actions, {"service_name": "svc-a"}, A)
        assert code == grpc.StatusCode.OK
        assert a.action_id.encode() in answer
        before = await _snapshot_of_a(team_a, a)

        failures: list[str] = []
        for method in METHODS:
            if is_open(f"/{method.containing_service.full_name}/{method.name}"):
                continue
            full = f"/{method.containing_service.full_name}/{method.name}"
            body = requests[method.name]
            # 1. In its own namespace, naming A's resources (or listing its own).
            code, answer, message = await team_b.call(method, body, B)
            if method.name == "SummarizeDecisions" and code == grpc.StatusCode.OK:
                # The summary names the policy asked about; B's signals had no decision
                # of A's policy.
                summary = coordinator_pb2.DecisionSummary.FromString(answer)
                if summary.decided or summary.actions:
                    failures.append(f"SummarizeDecisions in B counted A's: {summary}")
                summary.policy_id = ""
                answer = summary.SerializeToString()
            if leaks := _leaks(answer, message, a):
                failures.append(f"{method.name} in B returned {leaks}")
            if is_installation_method(full):
                expected = (
                    grpc.StatusCode.PERMISSION_DENIED
                    if method.name in REFUSED_INSTALLATION
                    else grpc.StatusCode.OK
                )
                if code != expected:
                    failures.append(f"{method.name}: {code.name} ({message}), not {expected.name}")
                continue
            names_a = body is not None and any(v in a.ids() for v in _values(body))
            if names_a and method.name != "SummarizeDecisions" and code != HIDDEN:
                failures.append(f"{method.name} on A's id from B: {code.name} ({message})")
            # 2. Naming A's namespace, and 3. naming none: B holds neither.
            for namespace in (A, None):
                code, answer, message = await team_b.call(method, body, namespace)
                if code != grpc.StatusCode.PERMISSION_DENIED or _leaks(answer, "", a):
                    failures.append(
                        f"{method.name} naming {namespace or 'no namespace'}: "
                        f"{code.name} ({message})"
                    )
        assert not failures, "\n".join(failures)

        # Nothing of A's changed; A still works on its own; each audit chain verifies.
        assert await _snapshot_of_a(team_a, a) == before
        listed = await team_a.ok("Coordinator", "ListSignals", {}, A)
        assert a.signal_id in {s.id for s in listed.signals}
        names = await team_b.ok("Governor", "ListNamespaces", {}, B)
        assert [n.name for n in names.namespaces] == [B]
        for caller, namespace in ((team_a, A), (team_b, B)):
            verified = await eventually(lambda c=caller, n=namespace: _verified(c, n))
            assert verified.intact, (namespace, verified)
            assert verified.checked > 0, (namespace, verified)


async def _verified(caller: Caller, namespace: str) -> Any:
    result = await caller.ok("Governor", "VerifyAuditLog", {}, namespace)
    return result if result.checked > 0 else None


def _values(body: dict[str, Any]) -> Iterator[str]:
    for value in body.values():
        if isinstance(value, dict):
            yield from _values(value)
        else:
            yield str(value)


async def test_tampering_with_one_namespaces_audit_chain_leaves_the_others_intact(
    tmp_path: Path,
) -> None:
    async with _two_teams(f"sqlite:///{tmp_path / 'tai.db'}", tmp_path) as (
        suite,
        team_a,
        team_b,
    ):
        for caller, namespace in ((team_a, A), (team_b, B)):
            for n in range(3):
                await caller.ok(
                    "Governor",
                    "ProposePolicy",
                    {
                        "id": f"p{n}",
                        "policy_type": "operational",
                        "policy_name": f"{namespace}-{n}",
                        "condition": "true",
                        "action": {"action_type": "x", "target_service": "y"},
                    },
                    namespace,
                )
        for caller, namespace in ((team_a, A), (team_b, B)):
            await eventually(lambda c=caller, n=namespace: _checked_at_least(c, n, 3))
        # Change one of A's records behind the API's back.
        store = suite.governor.runtime.deps.store
        with in_namespace(A):
            from tai_common.ports import Query

            page = await store.query(Query("audit_logs", limit=10))
            victim = page.documents[1]
            await store.set("audit_logs", victim.id, {**victim.data, "principal": "mallory"})
        broken = await team_a.ok("Governor", "VerifyAuditLog", {}, A)
        intact = await team_b.ok("Governor", "VerifyAuditLog", {}, B)
        assert not broken.intact
        assert broken.first_broken_seq > 0
        assert intact.intact
        assert intact.checked >= 3


async def _checked_at_least(caller: Caller, namespace: str, count: int) -> bool:
    result = await caller.ok("Governor", "VerifyAuditLog", {}, namespace)
    return bool(result.checked >= count)
