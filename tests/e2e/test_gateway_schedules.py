"""A recurring task under an operator's hand, through the gateway as a user: JSON over HTTP with
tokens, each role where the access table puts it (pause, resume, trigger, backfill: operator,
on one's own schedule or as an admin; upcoming runs: viewer), and the errors as HTTP statuses
naming the field."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import pytest
from support.gateway import GatewaySuite

# The module's suite (three services and Envoy, started one after another) starts inside the
# first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NS = 1_000_000_000


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def utc_ns(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, tzinfo=dt.UTC).timestamp()) * NS


def wait_for(http: httpx.Client, path: str, headers: dict[str, str], done: Any) -> Any:
    deadline = time.monotonic() + 30
    while True:
        body = http.get(path, headers=headers).json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_a_schedule_under_an_operators_hand_over_json(gateway_suite: GatewaySuite) -> None:
    olga = bearer(gateway_suite.token("operator", "olga"))
    oscar = bearer(gateway_suite.token("operator", "oscar"))
    viewer = bearer(gateway_suite.token("viewer", "vic"))
    admin = bearer(gateway_suite.token("admin", "ada"))
    ledger = str(gateway_suite.directory / "schedules-ledger.db")
    path = "/v1/tasks/e2e-nightly"
    with httpx.Client(base_url=gateway_suite.gateway.url, timeout=30) as http:
        created = http.post(
            "/v1/tasks",
            headers=olga,
            json={
                "task_id": "e2e-nightly",
                "task_type": "test_record",
                "parameters": {"ledger": ledger},
                "cron_schedule": "30 2 * * *",
                "time_zone": "Europe/Paris",
                "catchup_window_seconds": "3600",
                "scheduled_time_ns": str(utc_ns(2027, 3, 26, 12)),
            },
        )
        assert created.status_code == 200, created.text

        # Upcoming runs, for a viewer: the spring-forward day's 02:30 comes at 03:00 CEST.
        upcoming = http.get(f"{path}:upcoming", params={"count": 3}, headers=viewer)
        assert upcoming.status_code == 200, upcoming.text
        listing = upcoming.json()
        assert listing["time_zone"] == "Europe/Paris"
        assert [r["local_time"] for r in listing["runs"]] == [
            "2027-03-27T02:30:00+01:00",
            "2027-03-28T03:00:00+02:00",
            "2027-03-29T02:30:00+02:00",
        ]
        assert listing["runs"][1]["scheduled_time_ns"] == str(utc_ns(2027, 3, 28, 1))
        bad_count = http.get(f"{path}:upcoming", params={"count": 101}, headers=viewer)
        assert bad_count.status_code == 400
        assert "count" in bad_count.text

        # Pause: not a viewer's, not another operator's; the owner's (or an admin's).
        assert http.post(f"{path}:pause", headers=viewer, json={}).status_code == 403
        refused = http.post(f"{path}:pause", headers=oscar, json={})
        assert refused.status_code == 403
        assert "only an admin may pause another caller's schedule" in refused.text
        paused = http.post(f"{path}:pause", headers=olga, json={"note": "quarter close"})
        assert paused.status_code == 200, paused.text
        assert paused.json()["result_data"]["paused"] == "true"
        task = http.get(path, headers=viewer).json()
        assert (task["paused"], task["paused_by"], task["pause_note"]) == (
            True,
            "olga",
            "quarter close",
        )
        again = http.post(f"{path}:pause", headers=olga, json={})
        assert again.status_code == 400  # FAILED_PRECONDITION
        assert "already paused" in again.text

        # Resumed by an admin.
        resumed = http.post(f"{path}:resume", headers=admin, json={"note": "closed"})
        assert resumed.status_code == 200, resumed.text
        task = http.get(path, headers=viewer).json()
        assert task.get("paused", False) is False
        assert (task["resumed_by"], task["resume_note"]) == ("ada", "closed")
        not_paused = http.post(f"{path}:resume", headers=olga, json={})
        assert not_paused.status_code == 400
        assert "is not paused" in not_paused.text

        # Trigger: one run now.
        assert http.post(f"{path}:trigger", headers=viewer, json={}).status_code == 403
        triggered = http.post(f"{path}:trigger", headers=olga, json={})
        assert triggered.status_code == 200, triggered.text
        result = triggered.json()["result_data"]
        assert result["outcome"] == "started"
        run = wait_for(
            http,
            f"/v1/tasks/{result['run_task_id']}",
            viewer,
            lambda body: body.get("status") == "completed",
        )
        assert (run["status"], run["run_origin"]) == ("completed", "trigger")

        # Backfill three days, one after another; a window too large names end_ns.
        too_large = http.post(
            f"{path}:backfill",
            headers=olga,
            json={"start_ns": str(utc_ns(2020, 1, 1)), "end_ns": str(utc_ns(2026, 1, 1))},
        )
        assert too_large.status_code == 400
        assert too_large.text.count("end_ns") >= 1
        backfilled = http.post(
            f"{path}:backfill",
            headers=olga,
            json={
                "start_ns": str(utc_ns(2026, 3, 27)),
                "end_ns": str(utc_ns(2026, 3, 30)),
                "overlap_policy": "OVERLAP_POLICY_BUFFER_ALL",
            },
        )
        assert backfilled.status_code == 200, backfilled.text
        assert backfilled.json()["result_data"]["occurrences"] == "3"
        runs = wait_for(
            http,
            "/v1/tasks",
            viewer,
            lambda body: (
                sum(
                    t["status"] == "completed" and t.get("run_origin") == "backfill"
                    for t in body.get("tasks", [])
                )
                == 3
            ),
        )
        backfilled_ids = sorted(
            t["task_id"] for t in runs["tasks"] if t.get("run_origin") == "backfill"
        )
        assert backfilled_ids == [
            "e2e-nightly-20260327T013000Z",
            "e2e-nightly-20260328T013000Z",
            "e2e-nightly-20260329T010000Z",  # 03:00 CEST, the end of the gap
        ]

        # What is not a live schedule.
        one_off = http.post(
            "/v1/tasks",
            headers=olga,
            json={
                "task_type": "test_record",
                "parameters": {"ledger": ledger},
                "scheduled_time_ns": str(time.time_ns() + 3600 * NS),
            },
        ).json()["resource_id"]
        refused = http.post(f"/v1/tasks/{one_off}:pause", headers=olga, json={})
        assert refused.status_code == 400
        assert "one-off task" in refused.text
        assert http.get("/v1/tasks/nope:upcoming", headers=viewer).status_code == 404
        bad_zone = http.post(
            "/v1/tasks",
            headers=olga,
            json={"task_type": "test_record", "cron_schedule": "0 3 * * *", "time_zone": "Paris"},
        )
        assert bad_zone.status_code == 400
        assert "time_zone" in bad_zone.text
