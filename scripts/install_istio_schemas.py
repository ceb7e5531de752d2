"""Installs the custom-resource schemas the deploy tests check Istio, prometheus-operator and
KEDA resources against, at build/tools/k8s-models (used by tests/deploy).

    python scripts/install_istio_schemas.py            # install if missing or out of date
    python scripts/install_istio_schemas.py --check    # exit 1 (and say how) when missing

The schemas come from the npm packages `@kubernetes-models/istio` (generated from Istio's own
CRDs), `@kubernetes-models/prometheus-operator` and `@kubernetes-models/keda` (generated from
KEDA's API types, github.com/kedacore/keda/v2/apis/keda/v1alpha1, which its CRDs are made
from), pinned with their dependencies in tests/deploy/node/package.json and package-lock.json.
They ship no JSON Schema files, only each kind's schema compiled into a standalone Ajv
validator, which tests/deploy/node/validate_crds.mjs runs with the machine's node. `npm ci`
installs exactly the locked versions (integrity-checked); with that lock already installed,
nothing is fetched.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SOURCE = REPOSITORY_ROOT / "tests" / "deploy" / "node"
MODELS = REPOSITORY_ROOT / "build" / "tools" / "k8s-models"
STAMP = MODELS / ".installed"
MANIFESTS = ("package.json", "package-lock.json")
PACKAGES = (
    "@kubernetes-models/istio",
    "@kubernetes-models/prometheus-operator",
    "@kubernetes-models/keda",
)
INSTALL_COMMAND = "python3 scripts/install_istio_schemas.py"


def lock_digest() -> str:
    digest = hashlib.sha256()
    for name in MANIFESTS:
        digest.update((SOURCE / name).read_bytes())
    return digest.hexdigest()


def is_installed() -> bool:
    """True when the locked packages are installed (the stamp names the lock's digest)."""
    return (
        STAMP.is_file()
        and STAMP.read_text().strip() == lock_digest()
        and all((MODELS / "node_modules" / name / "package.json").is_file() for name in PACKAGES)
    )


def install() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is required (Debian: apt-get install npm)")
    MODELS.mkdir(parents=True, exist_ok=True)
    STAMP.unlink(missing_ok=True)
    for name in MANIFESTS:
        shutil.copyfile(SOURCE / name, MODELS / name)
    result = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=MODELS,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm ci in {MODELS} failed:\n{result.stderr.strip()}")
    STAMP.write_text(lock_digest() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the installation")
    args = parser.parse_args(argv)
    where = MODELS.relative_to(REPOSITORY_ROOT)
    if is_installed():
        print(f"custom-resource schemas at {where}")
        return 0
    if args.check:
        print(f"the custom-resource schemas are not installed at {MODELS}: run {INSTALL_COMMAND}")
        return 1
    try:
        install()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"install_istio_schemas: {error}", file=sys.stderr)
        return 1
    print(f"installed the custom-resource schemas at {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
