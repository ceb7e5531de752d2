"""CEL conditions as the Governor checks them and the Coordinator evaluates them."""

from __future__ import annotations

import pytest
from tai_common.core import Bindings, InvalidArgument, compile_condition, signal_variables


def signal(**overrides: object) -> dict[str, object]:
    base = signal_variables(
        signal_id="s1",
        signal_type="alert",
        priority=9,
        source="prometheus",
        metadata={"service": "api"},
        payload_size=0,
        timestamp_ns=0,
    )
    base.update(overrides)
    return base


def test_the_architecture_example_matches() -> None:
    condition = compile_condition(
        'signal.type == "alert" && signal.priority >= 8 && signal.metadata["service"] == "api"'
    )
    assert condition.matches(signal())
    assert not condition.matches(signal(priority=3))
    assert not condition.matches(signal(metadata={"service": "db"}))


def test_a_missing_metadata_key_is_no_match_not_an_error() -> None:
    condition = compile_condition('signal.metadata["team"] == "sre"')
    assert not condition.matches(signal())
    assert condition.matches(signal(metadata={"team": "sre"}))


def test_one_binding_serves_every_condition_with_the_same_answers() -> None:
    conditions = [
        compile_condition('signal.metadata["service"] == "api"'),
        compile_condition("signal.priority < 5"),
        compile_condition('signal.metadata["team"] == "sre"'),  # a missing key: no match
        compile_condition('signal.type == "alert" && signal.source == "prometheus"'),
    ]
    for variables in (signal(), signal(priority=3, metadata={"team": "sre"})):
        bindings = Bindings(variables)
        assert [c.matches(bindings) for c in conditions] == [
            c.matches(variables) for c in conditions
        ]
    assert [c.matches(Bindings(signal())) for c in conditions] == [True, False, False, True]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("signal.priority >", "does not compile"),
        ("signal.priority * 2", "must evaluate to a boolean"),
        ("user.admin", "unknown variable"),
        ("x" * 5000, "longer than"),
    ],
)
def test_bad_conditions_are_refused(source: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        compile_condition(source, "condition")
    assert caught.value.field == "condition"
    assert reason in caught.value.reason
