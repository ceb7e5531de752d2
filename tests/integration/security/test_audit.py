"""The audit trail is tamper-evident: `taictl audit verify` finds an edited record."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from support.secured import SecuredSuite
from tai_client import GovernorClient


def taictl(suite: SecuredSuite, *args: str) -> subprocess.CompletedProcess[str]:
    token = suite.issuer.token("auditor", ["admin"])
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from tai_client.cli import main; main()",
            "--target",
            suite.governor.target,
            "--token",
            token,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_verify_finds_an_edited_record(secured: SecuredSuite, sqlite_url: str) -> None:
    token = secured.issuer.token("alice", ["admin"])
    async with secured.channel(secured.governor.target, token) as channel:
        client = GovernorClient(channel)
        for i in range(4):
            receipt = await client.propose(policy_type="finance", name=f"budget-{i}")
        await client.enforce(receipt.resource_id)

    for _ in range(100):
        listed = await asyncio.to_thread(taictl, secured, "--json", "audit", "list")
        records = [json.loads(line) for line in listed.stdout.splitlines()]
        if len(records) >= 5:
            break
        await asyncio.sleep(0.1)
    assert listed.returncode == 0, listed.stderr
    assert [r["principal"] for r in records[:5]] == ["alice"] * 5

    intact = await asyncio.to_thread(taictl, secured, "audit", "verify")
    assert intact.returncode == 0, intact.stderr
    assert "intact" in intact.stdout

    # Someone with access to the database rewrites who did record 3.
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    with sqlite3.connect(database) as db:
        (data,) = db.execute(
            "SELECT data FROM c_audit_logs WHERE json_extract(data, '$.seq') = 3"
        ).fetchone()
        edited = json.loads(data)
        edited["principal"] = "mallory"
        db.execute(
            "UPDATE c_audit_logs SET data = ? WHERE json_extract(data, '$.seq') = 3",
            (json.dumps(edited),),
        )

    broken = await asyncio.to_thread(taictl, secured, "audit", "verify")
    assert broken.returncode == 2
    assert "BROKEN at record 3" in broken.stderr
