"""`scripts/prerequisites.py`, which each make target runs first: a missing tool that cannot be
installed stops the target at once with one line naming the command to run."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prerequisites.py"


@pytest.fixture
def prerequisites(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("prerequisites", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "prerequisites", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_a_missing_tool_that_cannot_be_installed_is_one_line_naming_the_command(
    prerequisites: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setattr(prerequisites, "may_install", lambda: None)  # not root, no sudo

    assert prerequisites.main(["test"]) == 2

    lines = capsys.readouterr().err.splitlines()
    prometheus = [line for line in lines if "prometheus" in line.split(":")[0]]
    assert prometheus == [
        "make test needs prometheus (prometheus, promtool not found): "
        "sudo apt-get install -y --no-install-recommends prometheus"
    ]
    assert any(line.startswith("make test needs java (java not found): ") for line in lines)


def test_what_the_machine_has_passes_without_a_word(
    prerequisites: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    for name in ("prometheus", "promtool", "java"):
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(prerequisites, "EMULATORS", prerequisites.Tool("emulators", (), (), ""))
    monkeypatch.setitem(
        prerequisites.TARGETS,
        "test",
        (prerequisites.PROMETHEUS, prerequisites.JAVA, prerequisites.EMULATORS),
    )

    assert prerequisites.main(["test"]) == 0
    assert capsys.readouterr().err == ""


def test_make_run_needs_nothing_beyond_python() -> None:
    """`make run` must start on a machine with Python and make alone."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "run"],
        env={"PATH": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_an_unknown_target_is_refused(prerequisites: ModuleType) -> None:
    assert prerequisites.main(["deploy"]) == 2


def test_make_test_installs_debians_chromium_when_it_is_missing(
    prerequisites: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The console's browser tests drive Debian's chromium: `make test` asks apt-get for it
    (Playwright's own browser download does not work on a closed network)."""
    assert prerequisites.CHROMIUM in prerequisites.TARGETS["test"]
    assert prerequisites.CHROMIUM.needs == ("/usr/bin/chromium",)
    # Missing on this machine, whatever it has: its path points into an empty folder.
    chromium = dataclasses.replace(prerequisites.CHROMIUM, needs=(str(tmp_path / "chromium"),))
    monkeypatch.setitem(prerequisites.TARGETS, "test", (chromium,))
    monkeypatch.setattr(prerequisites, "may_install", lambda: [])  # root
    asked: list[list[str]] = []

    def apt_install(prefix: list[str], packages: list[str]) -> bool:
        asked.append(packages)
        return True  # apt-get succeeds, yet the binary is still not there

    monkeypatch.setattr(prerequisites, "apt_install", apt_install)

    assert prerequisites.main(["test"]) == 2
    assert asked == [["chromium"]]
    assert capsys.readouterr().err.splitlines() == [
        f"make test needs chromium ({tmp_path / 'chromium'} not found): "
        "sudo apt-get install -y --no-install-recommends chromium"
    ]
