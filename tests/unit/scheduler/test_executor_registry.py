"""Executors found through entry points: the built-ins and plug-ins load, a broken plug-in is
left out, two packages claiming one task type are an error."""

from __future__ import annotations

from importlib import metadata

import pytest
from tai_common.core import InvalidArgument, ServiceSettings
from tai_scheduler.executors import ENTRY_POINT_GROUP, ExecutorEnvironment, ExecutorRegistry
from tai_scheduler.executors.registry import DuplicateExecutor


def entry_point(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


async def test_installed_executors_include_the_builtins_and_the_test_plugins() -> None:
    registry = ExecutorRegistry.discover(ExecutorEnvironment(ServiceSettings()))
    assert {"enforce_policy", "revoke_policy", "request_action"} <= registry.task_types
    assert {"test_record", "test_flaky", "test_sleep"} <= registry.task_types


async def test_a_broken_plugin_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    registry = ExecutorRegistry.discover(
        ExecutorEnvironment(ServiceSettings()),
        [
            entry_point("enforce_policy", "tai_scheduler.executors.policy:enforce_policy"),
            entry_point("broken", "no_such_module_anywhere:create"),
        ],
    )
    assert registry.task_types == {"enforce_policy"}
    assert "cannot load task executor 'broken'" in caplog.text


async def test_the_same_registration_twice_is_fine_but_two_different_ones_are_not() -> None:
    env = ExecutorEnvironment(ServiceSettings())
    same = entry_point("enforce_policy", "tai_scheduler.executors.policy:enforce_policy")
    assert ExecutorRegistry.discover(env, [same, same]).task_types == {"enforce_policy"}
    with pytest.raises(DuplicateExecutor, match="enforce_policy"):
        ExecutorRegistry.discover(
            env, [same, entry_point("enforce_policy", "elsewhere:enforce_policy")]
        )


async def test_builtins_check_their_parameters() -> None:
    registry = ExecutorRegistry.discover(ExecutorEnvironment(ServiceSettings()))
    registry.validate("enforce_policy", {"policy_id": "pol-1", "expected_version": "3"})
    cases = [
        ("enforce_policy", {}, "parameters[policy_id]"),
        ("enforce_policy", {"policy_id": "a b"}, "parameters[policy_id]"),
        (
            "revoke_policy",
            {"policy_id": "p", "expected_version": "-1"},
            "parameters[expected_version]",
        ),
        ("request_action", {"action_type": "page"}, "parameters[target_service]"),
        (
            "request_action",
            {"action_type": "page", "target_service": "x", "priority": "high"},
            "parameters[priority]",
        ),
        (
            "request_action",
            {"action_type": "page", "target_service": "x", "payload_b64": "***"},
            "parameters[payload_b64]",
        ),
    ]
    for task_type, parameters, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            registry.validate(task_type, parameters)
        assert caught.value.field == field
