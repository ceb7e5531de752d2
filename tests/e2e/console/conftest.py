"""The operator console in a real browser: Debian's headless Chromium (installed by `make test`,
scripts/prerequisites.py), driven by Playwright's async API, against the suite `make run` starts
(scripts/run_local.py on free ports, its state in a temporary folder).

One suite and one browser for the whole session (starting them is most of the time), and a
second suite with authentication on for the module that asks for it; each test
gets its own browser context (no cookies or storage from another test) and page. Everything the
page reports as wrong (console errors, uncaught exceptions, failed requests, HTTP errors) is
collected in `BrowserProblems`. Screenshots go to build/test-artifacts/console/: one per
`screenshot(name)` call and one of the page as it was when a test failed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytest_asyncio
from console_browser import BrowserProblems, RunningSuite, Screenshot, artifact_name
from playwright.async_api import (
    Browser,
    Page,
    Playwright,
    async_playwright,
)
from support.processes import free_port

ROOT = Path(__file__).resolve().parents[3]
RUN_LOCAL = ROOT / "scripts" / "run_local.py"
ARTIFACTS = ROOT / "build" / "test-artifacts" / "console"
CHROMIUM = Path("/usr/bin/chromium")
# What the machine notes require of Chromium as root on a closed network: without the
# background-networking flags it keeps trying Google's hosts and its connections are refused.
# Playwright adds --headless and --no-sandbox itself (headless=True, chromium_sandbox=False).
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SUITE_READY_SECONDS = 90.0
# run_local.py's grace period for each process; it kills what is left after it.
GRACE_SECONDS = 2.0
BANNER_END = "Ctrl-C stops everything."
LOG_TAIL_LINES = 40


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser and the suite live in the session's event loop (Playwright's objects belong
    to the loop that made them), so the console's tests run in that loop too."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keeps each phase's report on the test, so the page fixture knows whether it failed."""
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@contextmanager
def running_suite(directory: Path, *, auth: bool) -> Iterator[RunningSuite]:
    """scripts/run_local.py (with --auth when `auth`) on free ports, its state under
    `directory`, until the block ends."""
    gateway_port = free_port()
    ports = {
        "TAI_RUN_GATEWAY_PORT": gateway_port,
        "TAI_RUN_GATEWAY_ADMIN_PORT": free_port(),
        "TAI_RUN_GOVERNOR_PORT": free_port(),
        "TAI_RUN_COORDINATOR_PORT": free_port(),
        "TAI_RUN_SCHEDULER_PORT": free_port(),
        "TAI_RUN_METRICS_PORT": free_port(),
        "TAI_RUN_CONSOLE_PORT": free_port(),
    }
    # The user's shell may carry settings of its own; this run starts from the defaults.
    env = {key: value for key, value in os.environ.items() if not key.startswith("TAI_")}
    env |= {key: str(port) for key, port in ports.items()}
    env |= {
        "TAI_RUN_STATE_DIR": str(directory / "state"),
        "TAI_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
    }
    output_path = directory / "run_local.out"
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(RUN_LOCAL), *(["--auth"] if auth else [])],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    suite = RunningSuite(f"http://127.0.0.1:{gateway_port}", directory / "state", output_path)
    try:
        deadline = time.monotonic() + SUITE_READY_SECONDS
        while BANNER_END not in suite.output():
            if process.poll() is not None:
                pytest.fail(f"run_local.py exited ({process.returncode}):\n{suite.output()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"run_local.py not ready in {SUITE_READY_SECONDS:.0f}s:\n{suite.output()}"
                )
            time.sleep(0.2)
        yield suite
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops `make run`
        try:
            process.wait(timeout=GRACE_SECONDS + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def console_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    """The whole suite with the console behind the gateway (authentication off, as `make run`
    by default), started once for the session."""
    with running_suite(tmp_path_factory.mktemp("console-suite"), auth=False) as suite:
        yield suite


@pytest.fixture(scope="module")
def console_suite_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    """The suite as `make run AUTH=1` starts it (scripts/run_local.py --auth: a development
    token issuer, tokens in <state>/dev-auth/<role>.jwt), for the module that asks for it."""
    with running_suite(tmp_path_factory.mktemp("console-suite-auth"), auth=True) as suite:
        yield suite


@pytest.fixture
def page_suite(console_suite: RunningSuite) -> RunningSuite:
    """The suite the test's `page` is on: authentication off unless a module overrides this
    fixture (with `console_suite_with_auth`)."""
    return console_suite


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """build/test-artifacts/console/, emptied at the start of the session: what it holds is
    this run's."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, which `make test` installs."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: `make test` installs it (scripts/prerequisites.py), or"
            " sudo apt-get install -y --no-install-recommends chromium"
        )
    return CHROMIUM


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(
    chromium: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, with a new empty profile (user-data-dir) under the session's
    temporary folder."""
    # Playwright's driver makes the profile in its own temporary folder: point that at ours
    # while the driver starts (it reads TMPDIR once), so the profile is inspectable and cleaned.
    profiles = tmp_path_factory.mktemp("chromium")
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("TMPDIR", str(profiles))
        playwright: Playwright = await async_playwright().start()
    try:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()
    finally:
        await playwright.stop()


@pytest.fixture
def browser_problems() -> BrowserProblems:
    """The problems the test's `page` reported (filled in as the test goes)."""
    return BrowserProblems()


@pytest_asyncio.fixture(loop_scope="session")
async def page(
    browser: Browser,
    page_suite: RunningSuite,
    browser_problems: BrowserProblems,
    artifacts: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Page]:
    """A page in a browser context of its own, its relative URLs on the suite's gateway; a
    screenshot of it is saved if the test fails."""
    context = await browser.new_context(
        base_url=page_suite.gateway_url, viewport={"width": 1280, "height": 800}
    )
    page = await context.new_page()
    browser_problems.watch(page)
    try:
        yield page
        reports = request.node.stash.get(PHASE_REPORTS, {})
        if "call" in reports and reports["call"].failed:
            path = artifacts / artifact_name(request.node, "failure")
            await page.screenshot(path=path, full_page=True)
            # Shown by pytest with the failure: the page's own complaints and the suite's log.
            print(f"screenshot: {path}", file=sys.stderr)
            print("\n".join(["browser problems:", *browser_problems.all()]), file=sys.stderr)
            tail = page_suite.output().splitlines()[-LOG_TAIL_LINES:]
            print("\n".join(["run_local.py (last lines):", *tail]), file=sys.stderr)
    finally:
        await context.close()


@pytest.fixture
def screenshot(page: Page, artifacts: Path, request: pytest.FixtureRequest) -> Screenshot:
    """`await screenshot("policies")` saves the whole page under build/test-artifacts/console/
    and returns the file's path."""

    async def take(name: str) -> Path:
        path = artifacts / artifact_name(request.node, name)
        await page.screenshot(path=path, full_page=True)
        return path

    return take
