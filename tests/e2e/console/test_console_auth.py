"""The operator console with authentication on, as `make run AUTH=1` starts the suite
(scripts/run_local.py --auth: a development token issuer whose tokens are in
<state>/dev-auth/<role>.jwt): the console asks for a token and says clearly when the API refuses
one; each role sees the buttons its role may use and no others, and the API refuses a write the
role may not make whatever the page shows.

The suite here is this module's own (authentication is a start-up setting); what each role looks
at, a policy that needs approval, an action awaiting it, a silence and a schedule, is made
through the API with the admin's token."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

import httpx
import jwt
import pytest
from console_browser import BrowserProblems, RunningSuite, Screenshot
from playwright.async_api import Page, expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def page_suite(console_suite_with_auth: RunningSuite) -> RunningSuite:
    """This module's pages are on the suite with authentication on."""
    return console_suite_with_auth


@dataclass(frozen=True)
class Stage:
    """What the roles look at: made through the API by the admin."""

    policy_id: str
    policy_name: str
    target: str
    waiting_action_id: str
    silence_id: str
    schedule_id: str


def bearer(suite: RunningSuite, role: str) -> dict[str, str]:
    """The Authorization header of the development issuer's token for `role`."""
    return {"Authorization": f"Bearer {suite.token(role)}"}


@pytest.fixture(scope="module")
def stage(page_suite: RunningSuite) -> Stage:
    """An enforced policy that needs approval, the action awaiting it, an active silence and a
    recurring task."""
    target = f"api-{uuid.uuid4().hex[:8]}"
    name = f"scale-{target}"
    with httpx.Client(base_url=page_suite.gateway_url, timeout=10) as client:

        def post(path: str, body: dict[str, object], role: str = "admin") -> dict[str, object]:
            response = client.post(path, json=body, headers=bearer(page_suite, role))
            response.raise_for_status()
            receipt: dict[str, object] = response.json()
            return receipt

        policy_id = str(
            post(
                "/v1/policies",
                {
                    "policy_type": "operational",
                    "policy_name": name,
                    "condition": f'signal.metadata["service"] == "{target}"',
                    "action": {
                        "target_service": target,
                        "action_type": "scale",
                        "require_approval": True,
                    },
                },
            )["resource_id"]
        )
        post(f"/v1/policies/{policy_id}:enforce", {})
        signal = post(
            "/v1/signals",
            {"signal_type": "alert", "priority": 9, "metadata": {"service": target}},
            role="operator",
        )
        action_ids = signal["action_ids"]
        assert isinstance(action_ids, list)
        assert len(action_ids) == 1
        silence_id = f"sil-{uuid.uuid4().hex}"
        post(
            "/v1/silences",
            {
                "id": silence_id,
                "matcher": {"target_service": f"{target}-quiet"},
                "ends_at_ns": str(time.time_ns() + 3600 * 10**9),
                "comment": "maintenance",
            },
        )
        schedule_id = str(
            post(
                "/v1/tasks",
                {
                    "task_type": "request_action",
                    "cron_schedule": "0 3 * * *",
                    "parameters": {"action_type": "restart", "target_service": f"{target}-nightly"},
                },
            )["resource_id"]
        )
    return Stage(policy_id, name, target, str(action_ids[0]), silence_id, schedule_id)


async def sign_in(page: Page, token: str) -> None:
    """Opens the console and pastes `token` where it asks for one."""
    await page.goto("/")
    await page.get_by_test_id("login-token").fill(token)
    await page.get_by_test_id("login-submit").click()


async def open_waiting_action(page: Page, stage: Stage) -> None:
    """The Actions page, filtered on the stage's target, showing the action awaiting approval."""
    await page.get_by_test_id("nav-actions").click()
    await page.get_by_test_id("actions-filter-target").fill(stage.target)
    await page.get_by_test_id("actions-filter-submit").click()
    await expect(page.get_by_test_id(f"action-status-{stage.waiting_action_id}")).to_have_text(
        re.compile("awaiting.approval", re.I)
    )


async def test_the_console_asks_for_a_token_and_says_when_one_is_refused(
    page: Page,
    page_suite: RunningSuite,
    browser_problems: BrowserProblems,
    screenshot: Screenshot,
) -> None:
    await page.goto("/")

    # No token yet: the sign-in form, nothing else.
    await expect(page.get_by_test_id("login-form")).to_be_visible()
    await expect(page.get_by_test_id("who-role")).to_have_count(0)
    await screenshot("asks-for-a-token")

    # Not a token at all: refused before any call.
    await page.get_by_test_id("login-token").fill("hunter2")
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("login-error")).to_contain_text("not a JWT")

    # A well-formed token the issuer never signed, claiming admin: the API refuses it, and the
    # console says so and asks again.
    forged = jwt.encode(
        {"sub": "mallory", "roles": ["admin"], "iss": "tai-dev-issuer", "aud": "tai"},
        "not-the-issuer-key-but-long-enough-for-hs256",
        algorithm="HS256",
    )
    await page.get_by_test_id("login-token").fill(forged)
    await page.get_by_test_id("login-submit").click()
    error = page.get_by_test_id("login-error")
    await expect(error).to_contain_text("Token refused (401)")
    await expect(error).to_contain_text("the API refused this token")
    # Why: this token's refusal, not that of a call the page made after forgetting it.
    await expect(error).not_to_contain_text("missing")
    await expect(page.get_by_test_id("login-form")).to_be_visible()
    await screenshot("wrong-token-refused")
    # The refusals are the API's 401s, which the browser logs; nothing else went wrong.
    assert browser_problems.error_responses
    assert all(problem.endswith(": 401") for problem in browser_problems.error_responses)
    assert browser_problems.page_errors == []
    browser_problems.clear()

    # The viewer's token is taken, and shown by name and role.
    await page.get_by_test_id("login-token").fill(page_suite.token("viewer"))
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("who-name")).to_have_text("dev-viewer")
    await expect(page.get_by_test_id("who-role")).to_have_text("viewer")
    await expect(page.get_by_test_id("login-form")).to_have_count(0)
    await page.wait_for_load_state("networkidle")
    assert browser_problems.all() == []


async def test_a_viewer_sees_no_write_button_and_the_api_refuses_its_writes(
    page: Page,
    page_suite: RunningSuite,
    stage: Stage,
    browser_problems: BrowserProblems,
    screenshot: Screenshot,
) -> None:
    await sign_in(page, page_suite.token("viewer"))
    await expect(page.get_by_test_id("who-role")).to_have_text("viewer")

    # Each page shows its data (so the missing buttons are missing, not yet to come).
    await page.get_by_test_id("nav-policies").click()
    await expect(page.get_by_role("link", name=stage.policy_name)).to_be_visible()
    await expect(page.get_by_test_id("policy-propose-open")).to_have_count(0)
    await screenshot("viewer-policies")

    await page.get_by_role("link", name=stage.policy_name).click()
    await expect(page.get_by_test_id("policy-state")).to_have_text(re.compile("enforced", re.I))
    for button in ("policy-new-version", "policy-simulate", "policy-revoke", "policy-enforce"):
        await expect(page.get_by_test_id(button)).to_have_count(0)

    await open_waiting_action(page, stage)
    await expect(page.get_by_test_id(f"action-approve-{stage.waiting_action_id}")).to_have_count(0)
    await expect(page.get_by_test_id(f"action-reject-{stage.waiting_action_id}")).to_have_count(0)
    await screenshot("viewer-actions")

    await page.get_by_test_id("nav-silences").click()
    await expect(page.get_by_test_id(f"silence-row-{stage.silence_id}")).to_be_visible()
    await expect(page.get_by_test_id("silence-create-open")).to_have_count(0)
    await expect(page.get_by_test_id(f"silence-expire-{stage.silence_id}")).to_have_count(0)
    await screenshot("viewer-silences")

    await page.get_by_test_id("nav-tasks").click()
    await expect(page.get_by_test_id(f"schedule-row-{stage.schedule_id}")).to_be_visible()
    for verb in ("pause", "resume", "trigger", "backfill"):
        await expect(page.get_by_test_id(f"schedule-{verb}-{stage.schedule_id}")).to_have_count(0)
    await screenshot("viewer-tasks")
    assert browser_problems.all() == []

    # A button the page does not show is no protection: the API refuses the viewer's writes.
    async with httpx.AsyncClient(
        base_url=page_suite.gateway_url, timeout=10, headers=bearer(page_suite, "viewer")
    ) as client:
        refused = {
            "propose": await client.post(
                "/v1/policies", json={"policy_type": "operational", "policy_name": "viewer's"}
            ),
            "approve": await client.post(
                f"/v1/actions/{stage.waiting_action_id}:approve", json={"comment": "looks fine"}
            ),
            "create silence": await client.post(
                "/v1/silences",
                json={
                    "matcher": {"target_service": stage.target},
                    "ends_at_ns": str(time.time_ns() + 3600 * 10**9),
                    "comment": "viewer's",
                },
            ),
            "pause": await client.post(f"/v1/tasks/{stage.schedule_id}:pause", json={}),
        }
    assert {write: response.status_code for write, response in refused.items()} == {
        write: 403 for write in refused
    }
    assert "needs the operator role" in refused["propose"].json()["message"]
    assert "needs the approver role" in refused["approve"].json()["message"]


async def test_an_operator_may_propose_but_not_approve(
    page: Page,
    page_suite: RunningSuite,
    stage: Stage,
    browser_problems: BrowserProblems,
    screenshot: Screenshot,
) -> None:
    await sign_in(page, page_suite.token("operator"))
    await expect(page.get_by_test_id("who-role")).to_have_text("operator")

    await page.get_by_test_id("nav-policies").click()
    await expect(page.get_by_role("link", name=stage.policy_name)).to_be_visible()
    await page.get_by_test_id("policy-propose-open").click()
    await expect(page.get_by_test_id("propose-form")).to_be_visible()
    await screenshot("operator-policies")

    await page.get_by_test_id("nav-silences").click()
    await expect(page.get_by_test_id("silence-create-open")).to_be_visible()
    await expect(page.get_by_test_id(f"silence-expire-{stage.silence_id}")).to_be_visible()

    await open_waiting_action(page, stage)
    await expect(page.get_by_test_id(f"action-approve-{stage.waiting_action_id}")).to_have_count(0)
    await screenshot("operator-actions")
    assert browser_problems.all() == []


async def test_an_approver_may_approve(
    page: Page,
    page_suite: RunningSuite,
    stage: Stage,
    browser_problems: BrowserProblems,
    screenshot: Screenshot,
) -> None:
    await sign_in(page, page_suite.token("approver"))
    await expect(page.get_by_test_id("who-role")).to_have_text("approver")

    await open_waiting_action(page, stage)
    await expect(page.get_by_test_id(f"action-approve-{stage.waiting_action_id}")).to_be_visible()
    await expect(page.get_by_test_id(f"action-reject-{stage.waiting_action_id}")).to_be_visible()
    await screenshot("approver-actions")
    assert browser_problems.all() == []
