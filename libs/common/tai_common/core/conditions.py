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
class Condition:
    """A compiled condition. Compile once, evaluate many times."""

    source: str
    _program: Any

    def matches(self, signal: Mapping[str, Any] | Bindings) -> bool:
        """True when the condition holds for `signal`. An evaluation error (a missing key, a
        type mismatch) or a non-boolean result counts as no match."""
        bindings = signal if isinstance(signal, Bindings) else Bindings(signal)
        try:
            result = self._program.execute(bindings.context)
        except (KeyError, ValueError, TypeError, RuntimeError):
            return False
        return result is True


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
        except (KeyError, ValueError, TypeError, RuntimeError):
            continue
        if not isinstance(result, bool):
            raise InvalidArgument(
                field, f"must evaluate to a boolean, but gives {type(result).__name__}"
            )
    return Condition(source, program)


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


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
