"""The console shows a button only to the roles that may call its method: its table must be the
API's (`tai_common.auth.access.METHOD_ROLES`), which refuses the call anyway."""

from __future__ import annotations

import re
from pathlib import Path

import tai_console
from tai_common.auth import METHOD_ROLES

ROLES_JS = Path(tai_console.__file__).parent / "static" / "roles.js"


def test_the_consoles_role_table_is_the_apis() -> None:
    mirrored = dict(
        re.findall(r"'(/tai\.v1\.[A-Za-z]+/[A-Za-z]+)': '([a-z]+)'", ROLES_JS.read_text())
    )
    assert mirrored == {method: role.name.lower() for method, role in METHOD_ROLES.items()}
