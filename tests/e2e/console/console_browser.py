"""What the console's browser tests share beyond fixtures (conftest.py): the running suite, the
problems a page reports, and the screenshot helper's type."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import ConsoleMessage, Page, Request, Response

# `await screenshot("policies")`: saves the page under build/test-artifacts/console/.
Screenshot = Callable[[str], Awaitable[Path]]


@dataclass
class RunningSuite:
    """scripts/run_local.py, as `make run` starts it, on free ports."""

    gateway_url: str
    state_dir: Path
    output_path: Path

    def output(self) -> str:
        """What run_local.py and its processes printed so far."""
        return self.output_path.read_text(errors="replace")

    def token(self, role: str) -> str:
        """The development issuer's token for `role` (admin, approver, operator, viewer), as
        run_local.py --auth writes it: <state>/dev-auth/<role>.jwt."""
        return (self.state_dir / "dev-auth" / f"{role}.jwt").read_text().strip()


@dataclass
class BrowserProblems:
    """What went wrong in the page, as its developer tools would show it."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    error_responses: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        """Every problem, one line each."""
        return [
            *(f"console error: {text}" for text in self.console_errors),
            *(f"uncaught: {text}" for text in self.page_errors),
            *(f"request failed: {text}" for text in self.failed_requests),
            *(f"HTTP error: {text}" for text in self.error_responses),
        ]

    def clear(self) -> None:
        """Forgets what was collected so far: after a test has checked an error it caused."""
        for problems in (
            self.console_errors,
            self.page_errors,
            self.failed_requests,
            self.error_responses,
        ):
            problems.clear()

    def watch(self, page: Page) -> None:
        """Collects what `page` reports from now on."""

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.console_errors.append(f"{message.text} ({message.location.get('url')})")

        def on_request_failed(request: Request) -> None:
            # Cancelled by the page itself (a stream closed as its view is left, a navigation):
            # nothing a user sees go wrong. A refused or unreachable URL fails otherwise.
            if request.failure == "net::ERR_ABORTED":
                return
            self.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

        def on_response(response: Response) -> None:
            if response.status >= 400:
                self.error_responses.append(
                    f"{response.request.method} {response.url}: {response.status}"
                )

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("requestfailed", on_request_failed)
        page.on("response", on_response)


def artifact_name(item: pytest.Item, name: str) -> str:
    """`<test file>--<test>--<name>.png`, with what a file name should not hold replaced."""
    test = f"{item.path.stem}--{item.name}--{name}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", test) + ".png"
