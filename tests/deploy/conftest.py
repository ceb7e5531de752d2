"""Fixtures of the deploy tests: the pinned tools must be installed (no download at test time)."""

from __future__ import annotations

import pytest
from deploy_helpers import ToolMissing, helm, node


@pytest.fixture(autouse=True, scope="session")
def _tools_installed() -> None:
    try:
        helm()
        node()
    except ToolMissing as missing:
        pytest.fail(str(missing), pytrace=False)
