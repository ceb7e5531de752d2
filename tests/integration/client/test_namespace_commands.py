"""`taictl namespace …` and `taictl --namespace/-n` against a real Governor and Coordinator
sharing a SQLite store, over gRPC (authentication off: the caller may administer namespaces):
a namespace is created, listed and shown; what is made in it with -n is seen there and nowhere
else; its quotas are replaced as a whole; deleting it is refused while it holds something, then
forced. The commands run in a worker thread (each runs its own event loop, as the real CLI
does) while the servers run in the test's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support.cli import json_lines, row_of, taictl
from support.running import Suite
from tai_client import coordinator_commands, namespace_commands, policy_commands  # noqa: F401

SCALE_API = ["--action-type", "scale", "--target-service", "api", "--param", "replicas=+2"]


def unique_name(prefix: str = "team") -> str:
    """A namespace name no other test uses (the store is the test's own, but names read
    better in a failure when they differ)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create(name: str, *options: str) -> dict[str, Any]:
    result = await taictl("--json", "namespace", "create", name, *options)
    assert result.exit_code == 0, result.output
    [created] = json_lines(result)
    return created


async def propose(*global_options: str, name: str) -> str:
    """A policy proposed with `taictl [global options] policy propose`; its id."""
    result = await taictl(
        *global_options,
        "--json",
        "policy",
        "propose",
        "--type",
        "operational",
        "--name",
        name,
        "--condition",
        'signal.metadata["service"] == "api"',
        *SCALE_API,
    )
    assert result.exit_code == 0, result.output
    [receipt] = json_lines(result)
    return str(receipt["resource_id"])


async def policy_ids(*global_options: str) -> set[str]:
    result = await taictl(*global_options, "--json", "policy", "list")
    assert result.exit_code == 0, result.output
    return {str(p["id"]) for p in json_lines(result)}


async def test_a_namespace_created_is_listed_and_shown(suite: Suite) -> None:
    name = unique_name()

    result = await taictl(
        "namespace",
        "create",
        name,
        "--description",
        "Team A's services",
        "--max-open-tasks",
        "5",
        "--rate-limit",
        "100",
    )
    assert result.exit_code == 0, result.output
    assert f"namespace {name} ACTIVE" in result.output
    assert "open tasks 5" in result.output
    assert f"taictl -n {name}" in result.output

    listed = await taictl("namespace", "list")
    assert listed.exit_code == 0, listed.output
    row = row_of(listed.output, name)
    assert "ACTIVE" in row
    assert "Team A's services" in row

    shown = await taictl("--json", "namespace", "get", name)
    assert shown.exit_code == 0, shown.output
    [namespace] = json_lines(shown)
    assert namespace["name"] == name
    assert namespace["description"] == "Team A's services"
    assert namespace["state"] == "NAMESPACE_STATE_ACTIVE"
    assert namespace["quotas"] == {"max_open_tasks": 5, "rate_limit_per_second": 100}
    assert int(namespace["created_at_ns"]) > 0

    again = await taictl("namespace", "create", name)
    assert again.exit_code == 1
    assert "ALREADY_EXISTS" in again.stderr


async def test_what_is_made_in_a_namespace_is_seen_there_and_nowhere_else(
    suite: Suite, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique_name()
    await create(name)
    default_policy = await propose(name="scale-default")

    theirs = await propose("-n", name, name="scale-theirs")

    assert await policy_ids("-n", name) == {theirs}
    assert theirs not in await policy_ids()
    assert default_policy in await policy_ids()
    shown = await taictl("-n", name, "policy", "get", theirs)
    assert shown.exit_code == 0, shown.output
    assert "scale-theirs" in shown.output
    # Another namespace's resource by id: not found, as if it did not exist.
    elsewhere = await taictl("policy", "get", theirs)
    assert elsewhere.exit_code == 1
    assert "NOT_FOUND" in elsewhere.stderr

    submitted = await taictl(
        "--namespace", name, "--json", "signal", "submit", "--type", "alert", "--priority", "5"
    )
    assert submitted.exit_code == 0, submitted.output
    [receipt] = json_lines(submitted)
    signal_id = str(receipt["resource_id"])
    in_it = await taictl("-n", name, "--json", "signal", "list")
    assert signal_id in {s["id"] for s in json_lines(in_it)}
    in_default = await taictl("--json", "signal", "list")
    assert signal_id not in {s["id"] for s in json_lines(in_default)}

    # TAI_NAMESPACE does what -n does.
    monkeypatch.setenv("TAI_NAMESPACE", name)
    assert await policy_ids() == {theirs}


async def test_a_namespace_that_does_not_exist_is_not_found(suite: Suite) -> None:
    name = unique_name("nowhere")

    result = await taictl("-n", name, "policy", "list")
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.stderr

    shown = await taictl("namespace", "get", name)
    assert shown.exit_code == 1
    assert "NOT_FOUND" in shown.stderr


async def test_quotas_are_replaced_as_a_whole(suite: Suite) -> None:
    name = unique_name()
    await create(name, "--max-open-tasks", "5", "--rate-limit", "100")

    result = await taictl("namespace", "quotas", name, "--max-enforced-policies", "1")
    assert result.exit_code == 0, result.output
    assert f"namespace {name} quotas" in result.output

    shown = await taictl("--json", "namespace", "get", name)
    [namespace] = json_lines(shown)
    # The two quotas not given are back to the installation's default (0).
    assert namespace["quotas"] == {"max_enforced_policies": 1}
    assert "open tasks" in (await taictl("namespace", "get", name)).output

    # At most one policy enforced in it: the second is refused, and says why.
    first = await propose("-n", name, name="first")
    second = await propose("-n", name, name="second")
    enforced = await taictl("-n", name, "policy", "enforce", first, "--yes")
    assert enforced.exit_code == 0, enforced.output
    refused = await taictl("-n", name, "policy", "enforce", second, "--yes")
    assert refused.exit_code == 1
    assert "RESOURCE_EXHAUSTED" in refused.stderr
    assert "max_enforced_policies=1" in refused.stderr
    # The default namespace is not limited by it.
    mine = await propose(name="mine")
    assert (await taictl("policy", "enforce", mine, "--yes")).exit_code == 0


async def test_deleting_a_namespace_is_refused_while_it_holds_something_then_forced(
    suite: Suite,
) -> None:
    empty = unique_name("empty")
    await create(empty)
    deleted = await taictl("namespace", "delete", empty)
    assert deleted.exit_code == 0, deleted.output
    assert f"namespace {empty} DELETING" in deleted.output

    name = unique_name()
    await create(name)
    await propose("-n", name, name="still-here")

    refused = await taictl("namespace", "delete", name)
    assert refused.exit_code == 1
    assert "FAILED_PRECONDITION" in refused.stderr
    assert await policy_ids("-n", name)  # nothing was deleted

    unconfirmed = await taictl("namespace", "delete", name, "--force")
    assert unconfirmed.exit_code == 1
    assert "pass --yes" in unconfirmed.output

    forced = await taictl("--json", "namespace", "delete", name, "--force", "--yes")
    assert forced.exit_code == 0, forced.output
    [namespace] = json_lines(forced)
    assert namespace["name"] == name
    assert namespace["state"] == "NAMESPACE_STATE_DELETING"
    # Deleting, or already gone: either way, no call works in it any more.
    after = await taictl("-n", name, "policy", "list")
    assert after.exit_code == 1
    assert "NOT_FOUND" in after.stderr or "FAILED_PRECONDITION" in after.stderr
