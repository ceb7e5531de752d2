"""Policy conditions: CEL expressions over a signal.

The Governor compiles a condition when a policy is proposed (so a broken one is refused with
INVALID_ARGUMENT), and the Coordinator compiles it once per policy version and evaluates it for
every signal. Both use this module, so both agree on what a condition may reference.

CEL library: PyPI `common-expression-language` (Rust `cel` behind PyO3). It evaluates a compiled
three-clause condition in about 2 µs here once its variables are converted (`Bindings`), and
converting a signal's map costs about 30 µs; so a signal is converted once and every policy's
condition evaluated over the result, instead of converting it again per policy.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The package's __init__ imports its command-line REPL (`cel.cli`, prompt_toolkit), which a
# server never runs: 22 MiB of a process's 38 MiB after `import cel` (ru_maxrss, 0.10.0). A
# placeholder stands in for it unless something imported the real one first.
sys.modules.setdefault("cel.cli", types.ModuleType("cel.cli"))
import cel  # noqa: E402

from tai_common.core.errors import InvalidArgument  # noqa: E402

MAX_CONDITION_LENGTH = 4096

# How much of an error message or a clause an `Evaluation` keeps, so a decision record stays small
# whatever the condition's length.
MAX_EXPLANATION_LENGTH = 300

# What the library raises when a condition cannot be evaluated on a signal: a missing map key
# (KeyError), a list index out of range (IndexError), no overload for the operand types
# (TypeError), a function's own error (RuntimeError), division by zero or integer overflow
# (ZeroDivisionError, OverflowError).
_EVALUATION_ERRORS = (LookupError, ValueError, TypeError, RuntimeError, ArithmeticError)

# CEL's names for the Python values the library returns, for saying what a condition gave instead
# of a boolean in the words its author wrote it in.
_CEL_TYPE_NAMES = {
    "int": "int",
    "float": "double",
    "str": "string",
    "bytes": "bytes",
    "list": "list",
    "dict": "map",
    "NoneType": "null",
    "datetime": "timestamp",
    "timedelta": "duration",
}

# The variables a condition sees. `signal` is a map:
#   id, type, priority, source (strings / int), metadata (map<string, string>),
#   payload_size (int), timestamp_ns (int).
ALLOWED_VARIABLES = frozenset({"signal"})

# Signals used to check that a condition evaluates to a boolean. Evaluation errors on them (a
# missing metadata key, say) are fine — at run time they simply mean "no match".
_SAMPLE_SIGNALS: tuple[dict[str, Any], ...] = (
    {
        "id": "sample",
        "type": "alert",
        "priority": 5,
        "source": "sample",
        "metadata": {},
        "payload_size": 0,
        "timestamp_ns": 0,
    },
    {
        "id": "sample",
        "type": "event",
        "priority": 10,
        "source": "sample",
        "metadata": {"service": "api", "region": "eu"},
        "payload_size": 10,
        "timestamp_ns": 1,
    },
)


class Bindings:
    """A signal's variables, converted for CEL once, for evaluating many conditions over them."""

    def __init__(self, signal: Mapping[str, Any]) -> None:
        self.context = cel.Context()
        self.context.add_variable("signal", dict(signal))


@dataclass(frozen=True)
class Evaluation:
    """Whether a condition matched a signal and, when it did not, why.

    `error` is set when the condition could not be evaluated on the signal (a missing key, a type
    mismatch, a result that is not a boolean). `failed_clause` is set when a conjunction
    `a && b && c` evaluated to false: the source text of its first clause that is false."""

    matched: bool
    error: str = ""
    failed_clause: str = ""


_MATCHED = Evaluation(matched=True)


@dataclass(frozen=True)
class _Clause:
    source: str
    program: Any


@dataclass(frozen=True)
class Condition:
    """A compiled condition. Compile once, evaluate many times."""

    source: str
    _program: Any
    # The top-level `&&` clauses, in source order, each compiled on its own; empty when the
    # condition is not a conjunction of two or more clauses.
    _clauses: tuple[_Clause, ...] = ()

    @property
    def clauses(self) -> tuple[str, ...]:
        """The source text of the condition's top-level `&&` clauses, stripped, in source order;
        empty when the condition is not such a conjunction."""
        return tuple(clause.source for clause in self._clauses)

    def matches(self, signal: Mapping[str, Any] | Bindings) -> bool:
        """True when the condition holds for `signal`. An evaluation error (a missing key, a
        type mismatch) or a non-boolean result counts as no match."""
        # The hot path of every signal: one execution, and no `Evaluation` built.
        bindings = signal if isinstance(signal, Bindings) else Bindings(signal)
        try:
            result = self._program.execute(bindings.context)
        except _EVALUATION_ERRORS:
            return False
        return result is True

    def evaluate(self, signal: Mapping[str, Any] | Bindings) -> Evaluation:
        """Evaluates the condition on `signal` and says why it did not match: the evaluation
        error, or the first clause of a conjunction that is false. `matched` always equals
        `matches(signal)`."""
        bindings = signal if isinstance(signal, Bindings) else Bindings(signal)
        try:
            result = self._program.execute(bindings.context)
        except _EVALUATION_ERRORS as error:
            return Evaluation(matched=False, error=_error_text(error))
        if result is True:
            return _MATCHED
        if result is not False:
            return Evaluation(
                matched=False, error=f"evaluates to {_cel_type_name(result)}, not a boolean"
            )
        return Evaluation(matched=False, failed_clause=self._first_false_clause(bindings))

    def _first_false_clause(self, bindings: Bindings) -> str:
        # A clause that cannot be evaluated is passed over: CEL's `&&` is false whenever any
        # operand is false, even if another raises, so the first false clause is the reason.
        for clause in self._clauses:
            try:
                result = clause.program.execute(bindings.context)
            except _EVALUATION_ERRORS:
                continue
            if result is False:
                return _shorten(clause.source)
        return ""


def compile_condition(source: str, field: str = "condition") -> Condition:
    """Compiles `source`, raising `InvalidArgument(field, …)` when it cannot be a condition:
    a syntax error, a variable other than `signal`, or a result that is not a boolean."""
    if len(source) > MAX_CONDITION_LENGTH:
        raise InvalidArgument(field, f"is longer than {MAX_CONDITION_LENGTH} characters")
    try:
        program = cel.compile(source)
    except ValueError as error:
        raise InvalidArgument(field, f"does not compile: {_first_line(error)}") from error
    unknown = set(program.variables()) - ALLOWED_VARIABLES
    if unknown:
        raise InvalidArgument(
            field,
            f"references unknown variable(s) {', '.join(sorted(unknown))}; "
            "a condition can only use `signal`",
        )
    for sample in _SAMPLE_SIGNALS:
        try:
            result = program.execute({"signal": sample})
        except _EVALUATION_ERRORS:
            continue
        if not isinstance(result, bool):
            raise InvalidArgument(
                field, f"must evaluate to a boolean, but gives {_cel_type_name(result)}"
            )
    return Condition(source, program, _compile_clauses(source))


def signal_variables(
    *,
    signal_id: str,
    signal_type: str,
    priority: int,
    source: str,
    metadata: Mapping[str, str],
    payload_size: int,
    timestamp_ns: int,
) -> dict[str, Any]:
    """The `signal` variable for a condition, built the same way wherever conditions run."""
    return {
        "id": signal_id,
        "type": signal_type,
        "priority": priority,
        "source": source,
        "metadata": dict(metadata),
        "payload_size": payload_size,
        "timestamp_ns": timestamp_ns,
    }


def _compile_clauses(source: str) -> tuple[_Clause, ...]:
    """Each top-level `&&` clause of `source`, compiled; none when one does not compile (the
    scanner misread the source), so an evaluation then just says "not matched"."""
    compiled = []
    for clause in _conjunction_clauses(source):
        try:
            compiled.append(_Clause(clause, cel.compile(clause)))
        except ValueError:
            return ()
    return tuple(compiled)


# Hand-written because no maintained library exposes CEL's syntax tree cheaply: `cel` (Rust)
# exposes none, and cel-python's parser (`celpy.celparser`, lark) takes about 180 ms to build,
# adds about 23 MB of resident memory (`CELParser().parse(...)` after import, ru_maxrss) and
# pulls in pendulum, google-re2, jmespath and pyyaml. The scanner only runs on a source the
# library has already compiled, so it need not reject malformed input.
def _conjunction_clauses(source: str) -> tuple[str, ...]:
    """The clauses of `source` when it is a top-level conjunction `a && b && …`, stripped, outer
    parentheses kept as written; empty when it is a single clause, or when a `||` or a ternary
    `?` at the top level binds looser than its `&&` (`a || b && c` is `a || (b && c)`,
    `a && b ? c : d` is `(a && b) ? c : d`)."""
    clauses: list[str] = []
    depth = 0
    start = 0
    index = 0
    while index < len(source):
        char = source[index]
        if char in "\"'":
            index = _string_end(source, index)
            continue
        if source.startswith("//", index):
            newline = source.find("\n", index)
            index = len(source) if newline < 0 else newline + 1
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                return ()
        elif depth == 0:
            if char == "?" or source.startswith("||", index):
                return ()
            if source.startswith("&&", index):
                clauses.append(source[start:index].strip())
                index += 2
                start = index
                continue
        index += 1
    if depth != 0 or not clauses:
        return ()
    clauses.append(source[start:].strip())
    return tuple(clauses)


def _string_end(source: str, quote_index: int) -> int:
    """The index just past the string or bytes literal whose opening quote is at `quote_index`:
    single, double or triple quotes, with backslash escapes unless a raw prefix (`r`, `R`, in
    `br"…"` too) comes before the quote."""
    prefix_start = quote_index
    while (
        prefix_start > 0 and quote_index - prefix_start < 2 and source[prefix_start - 1] in "rRbB"
    ):
        prefix_start -= 1
    raw = "r" in source[prefix_start:quote_index].lower()
    quote = source[quote_index]
    delimiter = quote * 3 if source.startswith(quote * 3, quote_index) else quote
    index = quote_index + len(delimiter)
    while index < len(source):
        if not raw and source[index] == "\\":
            index += 2
        elif source.startswith(delimiter, index):
            return index + len(delimiter)
        else:
            index += 1
    return len(source)


def _error_text(error: Exception) -> str:
    # The library's KeyError says only the key (`'env'`).
    if isinstance(error, KeyError) and error.args:
        return _shorten(f"no such key: {error.args[0]!r}")
    return _shorten(_first_line(error))


def _cel_type_name(value: object) -> str:
    name = type(value).__name__
    return _CEL_TYPE_NAMES.get(name, name)


def _shorten(text: str) -> str:
    if len(text) <= MAX_EXPLANATION_LENGTH:
        return text
    return text[: MAX_EXPLANATION_LENGTH - 1] + "…"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
