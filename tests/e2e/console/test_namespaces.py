"""The console's namespace picker, against `make run`'s suite (authentication off, so every
namespace is listed): a namespace created through the API is offered; choosing it shows that
namespace's policies and no other's, every call the page makes then names it, and the choice
survives a reload, a new visit (localStorage) and a link opened elsewhere (the address)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from console_browser import BrowserProblems, RunningSuite, Screenshot
from playwright.async_api import Browser, Page, Request, expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NAMESPACE_HEADER = "x-tai-namespace"


async def create_namespace(suite: RunningSuite, name: str) -> None:
    """POST /v1/namespaces through the gateway, as a platform admin would."""
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=10) as client:
        response = await client.post(
            "/v1/namespaces", json={"name": name, "description": "the picker's test"}
        )
    response.raise_for_status()


async def propose_policy(suite: RunningSuite, name: str, namespace: str | None = None) -> str:
    """POST /v1/policies through the gateway, in `namespace` (none named: "default"); the
    policy's id."""
    headers = {NAMESPACE_HEADER: namespace} if namespace else {}
    async with httpx.AsyncClient(base_url=suite.gateway_url, timeout=10) as client:
        response = await client.post(
            "/v1/policies",
            json={
                "policy_type": "operational",
                "policy_name": name,
                "condition": f'signal.metadata["service"] == "{name}"',
                "action": {"target_service": name, "action_type": "scale"},
            },
            headers=headers,
        )
    response.raise_for_status()
    return str(response.json()["resource_id"])


async def test_the_picker_lists_a_namespace_and_choosing_it_shows_its_policies_only(
    page: Page,
    browser: Browser,
    console_suite: RunningSuite,
    browser_problems: BrowserProblems,
    screenshot: Screenshot,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    namespace = f"team-{suffix}"
    await create_namespace(console_suite, namespace)
    theirs = await propose_policy(console_suite, f"theirs-{suffix}", namespace)
    ours = await propose_policy(console_suite, f"ours-{suffix}")

    # The default namespace first: its policy, not the other's.
    await page.goto("/#/policies")
    picker = page.get_by_label("Namespace")
    await expect(picker).to_have_value("default")
    await expect(page.get_by_test_id(f"policy-link-{ours}")).to_be_visible()
    await expect(picker.locator(f'option[value="{namespace}"]')).to_have_count(1)
    await expect(picker.locator('option[value="default"]')).to_have_count(1)
    assert await page.get_by_test_id(f"policy-link-{theirs}").count() == 0

    # Choosing the namespace shows its policies, and only them; every call names it.
    requests: list[Request] = []
    page.on("request", lambda r: requests.append(r) if "/v1/" in r.url else None)
    await picker.select_option(namespace)

    await expect(page.get_by_test_id(f"policy-link-{theirs}")).to_be_visible()
    await expect(page.get_by_test_id(f"policy-link-{ours}")).to_have_count(0)
    await expect(page).to_have_url(f"{console_suite.gateway_url}/#/policies?namespace={namespace}")
    await screenshot("namespace-chosen")
    assert requests, "the page made no call after the namespace changed"
    # The headers the page gave each call (all_headers() would wait for the policy stream's
    # response, which a namespace with no change since its listing has not sent yet).
    assert {r.url: r.headers.get(NAMESPACE_HEADER) for r in requests} == {
        r.url: namespace for r in requests
    }

    # A policy's own page and back: the namespace stays in the address.
    await page.get_by_test_id(f"policy-link-{theirs}").click()
    await expect(page.get_by_test_id("policy-title")).to_have_text(f"theirs-{suffix}")
    await expect(page).to_have_url(
        f"{console_suite.gateway_url}/#/policies/{theirs}?namespace={namespace}"
    )

    # A reload keeps it (the address); so does a visit to the console's front page
    # (localStorage).
    await page.reload()
    await expect(page.get_by_test_id("policy-title")).to_have_text(f"theirs-{suffix}")
    await expect(page.get_by_label("Namespace")).to_have_value(namespace)
    await page.goto("/")
    await expect(page.get_by_label("Namespace")).to_have_value(namespace)
    await expect(page).to_have_url(f"{console_suite.gateway_url}/#/overview?namespace={namespace}")
    await page.get_by_test_id("nav").get_by_test_id("nav-policies").click()
    await expect(page.get_by_test_id(f"policy-link-{theirs}")).to_be_visible()
    await expect(page.get_by_test_id(f"policy-link-{ours}")).to_have_count(0)

    # Back to "default" in the picker: its policy again.
    await page.get_by_label("Namespace").select_option("default")
    await expect(page.get_by_test_id(f"policy-link-{ours}")).to_be_visible()
    await expect(page.get_by_test_id(f"policy-link-{theirs}")).to_have_count(0)
    assert browser_problems.all() == []

    # A link to the namespace opens it in a browser that never chose it.
    other = await browser.new_context(base_url=console_suite.gateway_url)
    try:
        elsewhere = await other.new_page()
        await elsewhere.goto(f"/#/policies?namespace={namespace}")
        await expect(elsewhere.get_by_label("Namespace")).to_have_value(namespace)
        await expect(elsewhere.get_by_test_id(f"policy-link-{theirs}")).to_be_visible()
        await expect(elsewhere.get_by_test_id(f"policy-link-{ours}")).to_have_count(0)
    finally:
        await other.close()
