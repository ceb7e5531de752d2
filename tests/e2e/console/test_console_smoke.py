"""The operator console as a browser first meets it, through `make run`'s gateway: the page
loads with nothing wrong in its developer tools, and each section of the navigation renders its
page, of which a screenshot is kept (build/test-artifacts/console/)."""

from __future__ import annotations

import re

import pytest
from console_browser import BrowserProblems, RunningSuite, Screenshot
from playwright.async_api import Page, expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# Each section of the navigation (its link's data-testid is nav-<section>) and what its page's
# main heading says.
SECTIONS = {
    "overview": re.compile(r"overview", re.IGNORECASE),
    "policies": re.compile(r"policies", re.IGNORECASE),
    "signals": re.compile(r"signals", re.IGNORECASE),
    "actions": re.compile(r"actions", re.IGNORECASE),
    "silences": re.compile(r"silences", re.IGNORECASE),
    "tasks": re.compile(r"tasks|schedules", re.IGNORECASE),
    "audit": re.compile(r"audit", re.IGNORECASE),
}


async def test_the_console_loads_through_the_gateway_with_nothing_wrong(
    page: Page,
    console_suite: RunningSuite,
    browser_problems: BrowserProblems,
    screenshot: Screenshot,
) -> None:
    response = await page.goto("/")

    assert response is not None
    assert response.status == 200
    assert response.url == f"{console_suite.gateway_url}/"
    # Authentication is off in `make run` by default: no token prompt, the overview straight away.
    await expect(page.get_by_test_id("who-role")).to_have_text("admin")
    await expect(page.get_by_role("heading", level=1, name=SECTIONS["overview"])).to_be_visible()
    await page.wait_for_load_state("networkidle")
    await screenshot("loaded")
    assert browser_problems.all() == []


async def test_each_section_of_the_navigation_renders_its_page(
    page: Page, browser_problems: BrowserProblems, screenshot: Screenshot
) -> None:
    await page.goto("/")
    navigation = page.get_by_test_id("nav")

    for section, heading in SECTIONS.items():
        await navigation.get_by_test_id(f"nav-{section}").click()

        await expect(page).to_have_url(re.compile(rf"#/{section}$"))
        await expect(page.get_by_role("heading", level=1, name=heading)).to_be_visible()
        await expect(navigation.get_by_test_id(f"nav-{section}")).to_have_attribute(
            "aria-current", "page"
        )
        # The page's first data has arrived (or failed, which the problems below would show).
        await page.wait_for_load_state("networkidle")
        await screenshot(section)

    assert browser_problems.all() == []


async def test_a_section_opened_by_its_address_renders_without_the_navigation(
    page: Page, browser_problems: BrowserProblems
) -> None:
    """A link someone pasted (#/silences) opens that section, not the overview."""
    await page.goto("/#/silences")

    await expect(page.get_by_role("heading", level=1, name=SECTIONS["silences"])).to_be_visible()
    await page.wait_for_load_state("networkidle")
    assert browser_problems.all() == []


# Form controls that no label, aria-label or aria-labelledby names: a screen reader would read
# them as "edit text" and nothing else.
UNLABELLED_CONTROLS = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((el) => el.type !== 'hidden' && el.offsetParent !== null)
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
    && !el.getAttribute('aria-labelledby') && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 120))"""


async def test_every_control_is_labelled_and_the_keyboard_reaches_the_page(
    page: Page, browser_problems: BrowserProblems
) -> None:
    await page.goto("/")
    for section in SECTIONS:
        await page.get_by_test_id("nav").get_by_test_id(f"nav-{section}").click()
        await page.wait_for_load_state("networkidle")
        assert await page.evaluate(UNLABELLED_CONTROLS) == [], section

    # From the top of the page, the first Tab reaches the skip link, which takes the keyboard to
    # the page's content; the navigation is reachable with Tab and opens with Enter.
    # A fresh load, so the keyboard starts from the top of the document.
    await page.goto("/#/overview")
    await page.reload()
    await page.wait_for_load_state("networkidle")
    await page.keyboard.press("Tab")
    await expect(page.get_by_test_id("skip-link")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("main")).to_be_focused()
    await expect(page).to_have_url(re.compile(r"#/overview$"))
    await page.get_by_test_id("nav-silences").focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1, name=SECTIONS["silences"])).to_be_visible()
    assert browser_problems.all() == []
