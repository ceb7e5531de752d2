"""deploy/firestore/firestore.indexes.json is what scripts/firestore_indexes.py makes of the
IndexSpecs the code declares, so the two never drift apart."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from tai_common.ports import DOC_ID, IndexSpec

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]
SCRIPT = REPOSITORY_ROOT / "scripts" / "firestore_indexes.py"
INDEX_FILE = REPOSITORY_ROOT / "deploy" / "firestore" / "firestore.indexes.json"


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    """The script as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("firestore_indexes", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs: its dataclasses look their module up there.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_the_committed_file_matches_the_declared_specs(script: ModuleType) -> None:
    assert INDEX_FILE.read_text() == script.generate(), (
        f"{INDEX_FILE.relative_to(REPOSITORY_ROOT)} is out of date: "
        "run `.venv/bin/python scripts/firestore_indexes.py` and commit the result"
    )


def test_the_file_declares_ttl_on_every_expiring_collection() -> None:
    overrides = json.loads(INDEX_FILE.read_text())["fieldOverrides"]
    ttl = {o["collectionGroup"] for o in overrides if o["fieldPath"] == "expires_at" and o["ttl"]}
    assert {"signals", "actions", "idempotency", "action_dedup"} <= ttl


def test_render(script: ModuleType) -> None:
    specs = [
        IndexSpec("tasks", ("created_at_ns",), descending=(True,)),  # single field: automatic
        IndexSpec("tasks", ("status", "created_at_ns"), descending=(False, True)),
        IndexSpec("tasks", ("status", "created_at_ns"), descending=(False, True)),  # duplicate
        IndexSpec("outbox", ("claimed_until_ns", DOC_ID)),
    ]
    rendered = json.loads(script.render(specs, ["tasks", "signals", "tasks"]))
    assert rendered == {
        "indexes": [
            {
                "collectionGroup": "outbox",
                "queryScope": "COLLECTION",
                "fields": [
                    {"fieldPath": "claimed_until_ns", "order": "ASCENDING"},
                    {"fieldPath": "__name__", "order": "ASCENDING"},
                ],
            },
            {
                "collectionGroup": "tasks",
                "queryScope": "COLLECTION",
                "fields": [
                    {"fieldPath": "status", "order": "ASCENDING"},
                    {"fieldPath": "created_at_ns", "order": "DESCENDING"},
                ],
            },
        ],
        "fieldOverrides": [
            {"collectionGroup": "signals", "fieldPath": "expires_at", "ttl": True, "indexes": []},
            {"collectionGroup": "tasks", "fieldPath": "expires_at", "ttl": True, "indexes": []},
        ],
    }


def test_a_missing_optional_service_is_left_out(
    script: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = [
        script.Source("tai_common.messaging.idempotency", ttl=("IDEMPOTENCY",)),
        script.Source("tai_no_such_service.repository", optional=True),
    ]
    specs, ttl = script.collect(sources)
    assert ttl == ["idempotency"]
    assert all(spec.collection == "idempotency" for spec in specs)
    assert "tai_no_such_service.repository is not installed" in capsys.readouterr().err
    with pytest.raises(ModuleNotFoundError):
        script.collect([script.Source("tai_no_such_service.repository")])
