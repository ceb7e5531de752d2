"""CEL conditions as the Governor checks them and the Coordinator evaluates them, and why a
condition did not match a signal: the evaluation error, or the first false clause."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tai_common.core import (
    MAX_EXPLANATION_LENGTH,
    Bindings,
    Evaluation,
    InvalidArgument,
    compile_condition,
    signal_variables,
)

THREE_CLAUSES = (
    'signal.type == "alert" && signal.priority >= 8 && signal.metadata["service"] == "api"'
)


def signal(**overrides: Any) -> dict[str, Any]:
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


def test_a_match_has_no_reason() -> None:
    assert compile_condition(THREE_CLAUSES).evaluate(signal()) == Evaluation(matched=True)


@pytest.mark.parametrize(
    ("variables", "failed_clause"),
    [
        (signal(type="event"), 'signal.type == "alert"'),
        (signal(priority=3), "signal.priority >= 8"),
        (signal(metadata={"service": "db"}), 'signal.metadata["service"] == "api"'),
        (signal(type="event", priority=3), 'signal.type == "alert"'),
    ],
)
def test_the_first_false_clause_is_named(variables: dict[str, Any], failed_clause: str) -> None:
    evaluation = compile_condition(THREE_CLAUSES).evaluate(Bindings(variables))
    assert evaluation == Evaluation(matched=False, failed_clause=failed_clause)


def test_a_clause_that_cannot_be_evaluated_is_passed_over_for_the_false_one() -> None:
    condition = compile_condition('signal.metadata["env"] == "prod" && signal.priority > 100')
    assert condition.evaluate(signal()) == Evaluation(
        matched=False, failed_clause="signal.priority > 100"
    )


@pytest.mark.parametrize(
    "source",
    [
        'signal.metadata.env == "prod"',
        'signal.metadata["env"] == "prod"',
        'signal.type == "alert" && signal.metadata.env == "prod"',
    ],
)
def test_a_missing_metadata_key_is_named(source: str) -> None:
    assert compile_condition(source).evaluate(signal()) == Evaluation(
        matched=False, error="no such key: 'env'"
    )


def test_a_type_mismatch_gives_the_first_line_of_the_error_cut_to_length() -> None:
    evaluation = compile_condition('signal.priority + "a" == 1').evaluate(signal())
    assert not evaluation.matched
    assert evaluation.error.startswith("No such overload")
    assert "\n" not in evaluation.error
    assert len(evaluation.error) <= MAX_EXPLANATION_LENGTH


def test_a_multi_line_error_gives_its_first_line() -> None:
    evaluation = compile_condition('signal.id.matches("[")').evaluate(signal())
    assert evaluation == Evaluation(
        matched=False, error="Function 'matches' error: '[' not a valid regex:"
    )


@pytest.mark.parametrize(
    ("source", "variables", "error"),
    [
        ("signal.priority / signal.payload_size > 1", signal(), "division by zero"),
        ("[1, 2][signal.priority] == 1", signal(), "index out of bounds"),
        ("signal.priority > 100 ? 1 : true", signal(priority=101), "evaluates to int,"),
        ('signal.priority > 100 ? "x" : true', signal(priority=101), "evaluates to string,"),
    ],
)
def test_errors_at_run_time_are_no_match_with_a_reason(
    source: str, variables: dict[str, Any], error: str
) -> None:
    condition = compile_condition(source)
    evaluation = condition.evaluate(variables)
    assert not condition.matches(variables)
    assert not evaluation.matched
    assert error in evaluation.error
    assert evaluation.failed_clause == ""


def test_a_long_failed_clause_is_cut_to_length() -> None:
    sources = ", ".join(f'"source-{n}"' for n in range(100))
    condition = compile_condition(f'signal.source in [{sources}] && signal.type == "alert"')
    evaluation = condition.evaluate(signal())
    assert len(evaluation.failed_clause) == MAX_EXPLANATION_LENGTH
    assert evaluation.failed_clause.startswith('signal.source in ["source-0", "source-1"')


@pytest.mark.parametrize(
    "first_clause",
    [
        'signal.source != "a && b"',
        'signal.source != "say \\"&&\\""',
        r'signal.source != r"C:\"',
        "signal.source != '''x' && 'y'''",
        'signal.source != """it\'s "a && b" """',
        'b"a && b" != bytes(signal.source)',
        "size([true && true]) == 1",
        '{"a": true && true}["a"]',
        'signal.source.startsWith(signal.priority > 1 && true ? "p" : "q")',
        "(signal.priority > 100 || true)",
        'signal.type == "alert" // a && b',
        'signal.type == "alert" // don\'t && split',
    ],
)
def test_and_inside_a_literal_brackets_or_a_comment_does_not_split(first_clause: str) -> None:
    condition = compile_condition(f"{first_clause}\n && signal.priority > 100")
    assert condition.clauses == (first_clause, "signal.priority > 100")
    assert condition.evaluate(signal()) == Evaluation(
        matched=False, failed_clause="signal.priority > 100"
    )


def test_a_parenthesised_conjunction_is_one_clause() -> None:
    condition = compile_condition(
        '(signal.type == "alert" && signal.priority > 100) && signal.source == "prometheus"'
    )
    assert condition.clauses == (
        '(signal.type == "alert" && signal.priority > 100)',
        'signal.source == "prometheus"',
    )
    assert condition.evaluate(signal()).failed_clause == (
        '(signal.type == "alert" && signal.priority > 100)'
    )


@pytest.mark.parametrize(
    "source",
    [
        'signal.priority > 100 || signal.type == "event" && signal.source == "prometheus"',
        'signal.type == "event" && signal.source == "prometheus" || signal.priority > 100',
        'signal.type == "event" && signal.priority > 5 ? true : false',
        'signal.type == "event"',
    ],
)
def test_a_condition_that_is_not_a_top_level_conjunction_names_no_clause(source: str) -> None:
    condition = compile_condition(source)
    assert condition.clauses == ()
    assert condition.evaluate(signal()) == Evaluation(matched=False)


CONDITIONS = [
    compile_condition(source)
    for source in (
        THREE_CLAUSES,
        'signal.metadata["env"] == "prod" && signal.priority > 4 && signal.source == "prometheus"',
        'signal.metadata.team == "sre" || signal.priority < 3 && signal.type == "alert"',
        "(signal.priority > 2 && signal.payload_size > 0)"
        " && signal.priority / signal.payload_size > 1",
        'signal.priority > 10 ? signal.type == "alert" : signal.metadata["region"] == "eu"',
        'signal.source.startsWith("prom") && size(signal.metadata) > 1',
    )
]


@given(
    signal_type=st.sampled_from(["alert", "event"]),
    priority=st.integers(min_value=0, max_value=20),
    source=st.sampled_from(["prometheus", "pagerduty"]),
    metadata=st.dictionaries(
        st.sampled_from(["service", "env", "team", "region"]),
        st.sampled_from(["api", "prod", "sre", "eu"]),
    ),
    payload_size=st.integers(min_value=0, max_value=3),
)
def test_evaluate_agrees_with_matches_and_names_the_first_false_clause(
    signal_type: str, priority: int, source: str, metadata: dict[str, str], payload_size: int
) -> None:
    variables = signal(
        type=signal_type,
        priority=priority,
        source=source,
        metadata=metadata,
        payload_size=payload_size,
    )
    bindings = Bindings(variables)
    for condition in CONDITIONS:
        evaluation = condition.evaluate(bindings)
        assert evaluation.matched == condition.matches(bindings) == condition.matches(variables)
        if evaluation.matched or evaluation.error:
            assert evaluation.failed_clause == ""
        elif condition.clauses:
            assert evaluation.failed_clause
        if evaluation.failed_clause:
            position = condition.clauses.index(evaluation.failed_clause)
            clause_results = [compile_condition(c).evaluate(bindings) for c in condition.clauses]
            assert clause_results[position] == Evaluation(matched=False)
            assert all(result.matched or result.error for result in clause_results[:position])
