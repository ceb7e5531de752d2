"""The namespace picker with authentication on (`make run AUTH=1`'s suite): a token holds
roles per namespace (the `tai_namespaces` claim), and the console follows it. A team's token
that holds only its own namespace is offered that namespace alone, lands in it, and is shown
its role there; opening another namespace by its address gets the API's refusal, and no role.
The platform admin's token (every namespace) is offered them all.

The team's token is minted here with the development issuer's key (<state>/dev-auth/), as a
platform team's identity provider would issue it."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import jwt
import pytest
from console_browser import BrowserProblems, RunningSuite, Screenshot
from playwright.async_api import Page, expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

NAMESPACE_HEADER = "x-tai-namespace"


@pytest.fixture(scope="module")
def page_suite(console_suite_with_auth: RunningSuite) -> RunningSuite:
    """This module's pages are on the suite with authentication on."""
    return console_suite_with_auth


def team_token(suite: RunningSuite, subject: str, namespaces: dict[str, str]) -> str:
    """A token of the development issuer granting `namespaces` ({namespace: role}) and
    nothing else (its `roles` claim says admin, which a namespaces claim overrides)."""
    auth = suite.state_dir / "dev-auth"
    [jwk] = json.loads((auth / "jwks.json").read_text())["keys"]
    admin = jwt.decode(suite.token("admin"), options={"verify_signature": False})
    now = int(time.time())
    claims = {
        "sub": subject,
        "iss": admin["iss"],
        "aud": admin["aud"],
        "iat": now,
        "exp": now + 3600,
        "roles": ["admin"],
        "tai_namespaces": namespaces,
    }
    key = (auth / "signing-key.pem").read_bytes()
    return jwt.encode(claims, key, algorithm=jwk["alg"], headers={"kid": jwk["kid"]})


def as_admin(suite: RunningSuite, namespace: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {suite.token('admin')}"}
    return headers | ({NAMESPACE_HEADER: namespace} if namespace else {})


def stage(suite: RunningSuite, namespace: str, suffix: str) -> tuple[str, str]:
    """The namespace, made by the platform admin, with a policy in it and one in "default";
    their ids."""
    ids = []
    with httpx.Client(base_url=suite.gateway_url, timeout=10) as client:
        response = client.post("/v1/namespaces", json={"name": namespace}, headers=as_admin(suite))
        response.raise_for_status()
        for name, where in ((f"theirs-{suffix}", namespace), (f"ours-{suffix}", None)):
            response = client.post(
                "/v1/policies",
                json={"policy_type": "operational", "policy_name": name},
                headers=as_admin(suite, where),
            )
            response.raise_for_status()
            ids.append(str(response.json()["resource_id"]))
    return ids[0], ids[1]


async def sign_in(page: Page, token: str) -> None:
    """Opens the console and pastes `token` where it asks for one."""
    await page.goto("/")
    await page.get_by_test_id("login-token").fill(token)
    await page.get_by_test_id("login-submit").click()


async def test_a_teams_token_lands_in_its_namespace_with_its_role_there(
    page: Page,
    page_suite: RunningSuite,
    browser_problems: BrowserProblems,
    screenshot: Screenshot,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    namespace = f"team-{suffix}"
    theirs, ours = stage(page_suite, namespace, suffix)
    token = team_token(page_suite, f"dev-{namespace}", {namespace: "operator"})

    await sign_in(page, token)

    # Its only namespace, chosen for it: "default" is not offered, as the token holds no role
    # there.
    picker = page.get_by_label("Namespace")
    await expect(picker).to_have_value(namespace)
    await expect(picker.locator("option")).to_have_count(1)
    await expect(page).to_have_url(f"{page_suite.gateway_url}/#/overview?namespace={namespace}")
    await expect(page.get_by_test_id("who-role")).to_have_text("operator")
    await page.get_by_test_id("nav-policies").click()
    await expect(page.get_by_test_id(f"policy-link-{theirs}")).to_be_visible()
    await expect(page.get_by_test_id(f"policy-link-{ours}")).to_have_count(0)
    # An operator there may propose.
    await expect(page.get_by_test_id("policy-propose-open")).to_be_visible()
    await screenshot("team-token")
    assert browser_problems.all() == []

    # "default" by its address: the API refuses (403), and the console shows no role there.
    await page.goto("/#/policies?namespace=default")
    await expect(page.get_by_test_id("who-role")).to_have_text("no role")
    await expect(page.get_by_test_id("policies-error")).to_contain_text("403")
    await expect(page.get_by_test_id("policy-propose-open")).to_have_count(0)
    assert browser_problems.error_responses
    assert all(problem.endswith(": 403") for problem in browser_problems.error_responses)
    browser_problems.clear()


async def test_the_platform_admin_is_offered_every_namespace(
    page: Page, page_suite: RunningSuite, browser_problems: BrowserProblems
) -> None:
    suffix = uuid.uuid4().hex[:8]
    namespace = f"team-{suffix}"
    theirs, ours = stage(page_suite, namespace, suffix)

    await sign_in(page, page_suite.token("admin"))

    picker = page.get_by_label("Namespace")
    await expect(picker).to_have_value("default")
    await expect(picker.locator(f'option[value="{namespace}"]')).to_have_count(1)
    await expect(page.get_by_test_id("who-role")).to_have_text("admin")
    await page.get_by_test_id("nav-policies").click()
    await expect(page.get_by_test_id(f"policy-link-{ours}")).to_be_visible()
    await picker.select_option(namespace)
    await expect(page.get_by_test_id(f"policy-link-{theirs}")).to_be_visible()
    await expect(page.get_by_test_id(f"policy-link-{ours}")).to_have_count(0)
    await expect(page.get_by_test_id("who-role")).to_have_text("admin")
    assert browser_problems.all() == []
