"""`taictl --namespace/-n` and `taictl namespace …` without a server: the option and the
argument are checked before any call, the namespace reaches the channel every call is made on,
the quota options make the message sent, and `delete --force` asks first.

The Governor is a fake here (its calls recorded); the same commands against a real one are
tests/integration/client/test_namespace_commands.py."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner, Result
from tai.v1 import governor_pb2
from tai_client import cli as cli_module
from tai_client import namespace_commands, policy_commands  # noqa: F401  (register groups)
from tai_client.cli import CliContext, cli
from tai_rpc import ChannelOptions

NAME_RULE = "is not a namespace name"


class TerminalInput(io.BytesIO):
    """What a person types at a terminal: a stdin that is a tty."""

    def isatty(self) -> bool:
        return True


@dataclass
class Calls:
    """What the commands asked of the channel and of the (fake) Governor."""

    options: list[ChannelOptions] = field(default_factory=list)
    governor: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)


def namespace_message(name: str, **fields: Any) -> governor_pb2.Namespace:
    fields.setdefault("state", governor_pb2.NAMESPACE_STATE_ACTIVE)
    return governor_pb2.Namespace(name=name, created_by="admin", **fields)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """No network: the channel is a placeholder whose options are kept, and the Governor a fake
    that records each call and answers with a namespace."""
    recorded = Calls()

    @asynccontextmanager
    async def open_channel(target: str, options: ChannelOptions) -> AsyncIterator[object]:
        recorded.options.append(options)
        yield object()

    class FakeGovernor:
        def __init__(self, channel: object, options: ChannelOptions) -> None:
            pass

        def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
            async def call(*args: Any, **kwargs: Any) -> Any:
                recorded.governor.append((method, args, kwargs))
                if method == "list_namespaces":
                    return [namespace_message("default"), namespace_message("team-a")]
                if method == "delete_namespace":
                    return namespace_message(args[0], state=governor_pb2.NAMESPACE_STATE_DELETING)
                quotas = kwargs.get("quotas") or (args[1] if len(args) > 1 else None)
                return namespace_message(args[0], quotas=quotas)

            return call

    monkeypatch.setattr(cli_module, "open_channel", open_channel)
    monkeypatch.setattr(namespace_commands, "GovernorClient", FakeGovernor)
    monkeypatch.delenv("TAI_NAMESPACE", raising=False)
    return recorded


def taictl(*args: str, stdin: Any = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin, env=env, catch_exceptions=False)


# --- the global option ---


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["-n", "team-a"], None, "team-a"),
        (["--namespace", "team-a"], None, "team-a"),
        ([], {"TAI_NAMESPACE": "team-b"}, "team-b"),
        (["-n", "team-a"], {"TAI_NAMESPACE": "team-b"}, "team-a"),
        ([], None, ""),
    ],
)
def test_the_namespace_option_or_its_variable_reaches_the_channel_of_every_call(
    calls: Calls, args: list[str], env: dict[str, str] | None, expected: str
) -> None:
    result = taictl(*args, "namespace", "list", env=env)

    assert result.exit_code == 0, result.output
    [options] = calls.options
    assert options.namespace == expected


def test_the_context_runs_each_call_on_a_channel_carrying_its_namespace(calls: Calls) -> None:
    context = CliContext(target="127.0.0.1:1", json_output=False, timeout=3, namespace="team-a")

    async def call(channel: Any, options: ChannelOptions) -> str:
        return str(options.namespace)

    assert context.run("coordinator", call) == "team-a"
    assert calls.options[0].namespace == "team-a"
    assert calls.options[0].default_timeout_seconds == 3


@pytest.mark.parametrize(
    "name", ["Team-A", "team_a", "-team", "team-", "team--a", "1team", "a" * 41]
)
def test_a_namespace_name_against_the_rule_is_a_usage_error_before_any_call(
    calls: Calls, name: str
) -> None:
    result = taictl("-n", name, "policy", "list")

    assert result.exit_code == 2
    assert "--namespace" in result.output
    assert NAME_RULE in result.output
    assert calls.options == []


def test_a_namespace_from_the_variable_is_checked_as_well(calls: Calls) -> None:
    result = taictl("policy", "list", env={"TAI_NAMESPACE": "Team A"})

    assert result.exit_code == 2
    assert "TAI_NAMESPACE" in result.output
    assert NAME_RULE in result.output
    assert calls.options == []


# --- taictl namespace … ---


def test_create_sends_the_name_description_and_quotas_given(calls: Calls) -> None:
    result = taictl(
        "namespace",
        "create",
        "team-a",
        "--description",
        "Team A's services",
        "--max-enforced-policies",
        "5",
        "--rate-limit",
        "20",
    )

    assert result.exit_code == 0, result.output
    [(method, args, kwargs)] = calls.governor
    assert method == "create_namespace"
    assert args == ("team-a",)
    assert kwargs["description"] == "Team A's services"
    assert kwargs["quotas"] == governor_pb2.NamespaceQuotas(
        max_enforced_policies=5, rate_limit_per_second=20
    )
    assert "namespace team-a ACTIVE" in result.output
    assert "enforced policies 5" in result.output
    assert "open tasks default" in result.output


@pytest.mark.parametrize("command", ["create", "get", "quotas", "delete"])
def test_a_name_argument_against_the_rule_is_a_usage_error_before_any_call(
    calls: Calls, command: str
) -> None:
    result = taictl("namespace", command, "Team_A")

    assert result.exit_code == 2
    assert NAME_RULE in result.output
    assert calls.governor == []


def test_a_negative_quota_is_a_usage_error(calls: Calls) -> None:
    result = taictl("namespace", "quotas", "team-a", "--max-open-tasks", "-1")

    assert result.exit_code == 2
    assert "--max-open-tasks" in result.output
    assert calls.governor == []


def test_quotas_replaces_all_four_and_says_so(calls: Calls) -> None:
    help_text = taictl("namespace", "quotas", "--help").output
    assert "Replace all four quotas" in help_text
    assert "an option left out is set to 0" in " ".join(help_text.split())

    result = taictl("--json", "namespace", "quotas", "team-a", "--max-signals-per-second", "50")

    assert result.exit_code == 0, result.output
    [(method, args, _)] = calls.governor
    assert method == "set_namespace_quotas"
    # Every other quota is sent as 0 (the installation's default), not left as it was.
    assert args == ("team-a", governor_pb2.NamespaceQuotas(max_signals_per_second=50))
    assert json.loads(result.stdout)["quotas"] == {"max_signals_per_second": 50}


def test_list_shows_a_row_a_namespace(calls: Calls) -> None:
    result = taictl("namespace", "list")

    assert result.exit_code == 0, result.output
    assert "2 namespaces" in result.output
    assert [line.split()[1] for line in result.output.splitlines() if "ACTIVE" in line] == [
        "default",
        "team-a",
    ]


def test_delete_without_force_does_not_ask(calls: Calls) -> None:
    result = taictl("namespace", "delete", "team-a")

    assert result.exit_code == 0, result.output
    assert calls.governor == [("delete_namespace", ("team-a",), {"force": False})]


def test_delete_force_without_a_terminal_needs_yes(calls: Calls) -> None:
    result = taictl("namespace", "delete", "team-a", "--force")

    assert result.exit_code == 1
    assert "pass --yes" in result.output
    assert calls.governor == []

    result = taictl("namespace", "delete", "team-a", "--force", "--yes")

    assert result.exit_code == 0, result.output
    assert calls.governor == [("delete_namespace", ("team-a",), {"force": True})]
    assert "namespace team-a DELETING" in result.output


def test_delete_force_asks_a_person_and_a_no_deletes_nothing(calls: Calls) -> None:
    result = taictl("namespace", "delete", "team-a", "--force", stdin=TerminalInput(b"n\n"))

    assert result.exit_code == 1
    assert "Delete namespace team-a and everything in it" in result.output
    assert "namespace team-a not deleted" in result.output
    assert calls.governor == []

    result = taictl("namespace", "delete", "team-a", "--force", stdin=TerminalInput(b"y\n"))

    assert result.exit_code == 0, result.output
    assert calls.governor == [("delete_namespace", ("team-a",), {"force": True})]
