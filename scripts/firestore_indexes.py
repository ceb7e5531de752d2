"""Generates deploy/firestore/firestore.indexes.json from the IndexSpecs the code declares.

    python scripts/firestore_indexes.py            # rewrite the file
    python scripts/firestore_indexes.py --check    # exit 1 when the file is out of date

The file is in the Firebase CLI's format (`firebase deploy --only firestore:indexes`):
- `indexes`: one composite index per multi-field IndexSpec (Firestore indexes every single
  field on its own, so single-field specs need nothing), each field ascending unless the spec
  says descending. Firestore appends `__name__` in the direction of the last field itself,
  which is the order the adapter asks for.
- `fieldOverrides`: a TTL policy on `expires_at` — the timestamp the Firestore adapter writes
  next to `expires_at_ns` — for each collection whose documents expire, with that field's own
  indexes turned off (nothing queries it, and indexing a timestamp that only grows makes a
  write hot spot).

Specs come from the common library and from each service's `repository.INDEXES`; a service
package that is not installed is left out with a note on stderr. A module may also list its
expiring collections in `TTL_COLLECTIONS`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tai_common.ports import DOC_ID, IndexSpec

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPOSITORY_ROOT / "deploy" / "firestore" / "firestore.indexes.json"
# The timestamp twin of `expires_at_ns` (tai_common.gcp.store.EXPIRES_AT; not
# imported, so that this script does not need the Firestore client library).
TTL_FIELD = "expires_at"


@dataclass(frozen=True)
class Source:
    """A module that declares IndexSpecs: where they are, and which of its collections expire
    (names of its constants, so that a rename breaks here rather than silently)."""

    module: str
    indexes: str = "INDEXES"
    ttl: tuple[str, ...] = ()
    optional: bool = False


SOURCES = (
    Source("tai_common.messaging.outbox", indexes="OUTBOX_INDEXES"),
    Source("tai_common.messaging.idempotency", ttl=("IDEMPOTENCY",)),
    Source("tai_common.messaging.audit"),
    Source("tai_common.messaging.window_limiter", ttl=("WINDOWS",)),
    Source("tai_governor.repository", optional=True),
    Source("tai_coordinator.repository", ttl=("SIGNALS", "ACTIONS", "DEDUP"), optional=True),
    Source("tai_coordinator.silences", ttl=("SILENCES",), optional=True),
    Source("tai_scheduler.repository", optional=True),
)


def _load(source: Source) -> ModuleType | None:
    try:
        return importlib.import_module(source.module)
    except ModuleNotFoundError as error:
        package = source.module.partition(".")[0]
        if source.optional and error.name is not None and error.name.startswith(package):
            print(
                f"note: {source.module} is not installed; its indexes are left out", file=sys.stderr
            )
            return None
        raise


def collect(sources: Sequence[Source] = SOURCES) -> tuple[list[IndexSpec], list[str]]:
    """The IndexSpecs and the expiring collections the installed code declares."""
    specs: list[IndexSpec] = []
    ttl: list[str] = []
    for source in sources:
        module = _load(source)
        if module is None:
            continue
        specs.extend(getattr(module, source.indexes))
        ttl.extend(str(getattr(module, name)) for name in source.ttl)
        ttl.extend(str(name) for name in getattr(module, "TTL_COLLECTIONS", ()))
    return specs, ttl


def _composite(spec: IndexSpec) -> dict[str, Any]:
    if spec.descending and len(spec.descending) != len(spec.fields):
        raise ValueError(f"{spec}: descending needs one flag per field, or none")
    descending = spec.descending or (False,) * len(spec.fields)
    return {
        "collectionGroup": spec.collection,
        "queryScope": "COLLECTION",
        "fields": [
            {
                "fieldPath": "__name__" if field == DOC_ID else field,
                "order": "DESCENDING" if desc else "ASCENDING",
            }
            for field, desc in zip(spec.fields, descending, strict=True)
        ],
    }


def render(specs: Iterable[IndexSpec], ttl_collections: Iterable[str]) -> str:
    """The index file for `specs` and `ttl_collections`: sorted and de-duplicated, so the
    same declarations always give the same text."""
    composites = {
        json.dumps(index, sort_keys=True): index
        for index in (_composite(spec) for spec in specs if len(spec.fields) > 1)
    }
    indexes = sorted(
        composites.values(),
        key=lambda i: (i["collectionGroup"], [(f["fieldPath"], f["order"]) for f in i["fields"]]),
    )
    overrides = [
        {"collectionGroup": collection, "fieldPath": TTL_FIELD, "ttl": True, "indexes": []}
        for collection in sorted(set(ttl_collections))
    ]
    return json.dumps({"indexes": indexes, "fieldOverrides": overrides}, indent=2) + "\n"


def generate() -> str:
    """The index file the installed code calls for."""
    return render(*collect())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the file to write or check")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is out of date: run scripts/firestore_indexes.py", file=sys.stderr
            )
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
