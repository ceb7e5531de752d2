"""GetPolicies filters over real gRPC, on the embedded store and on Firestore (emulator):
repeated state filters and `enabled_only`, page after page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from governor_helpers import DRY_RUN, ENFORCED, PROPOSED, REVOKED, propose
from support.rpc_errors import expect_error, field_violations
from support.running import RunningGovernor
from tai.v1 import governor_pb2

ALL_STATES = (PROPOSED, DRY_RUN, ENFORCED, REVOKED)


async def paged_ids(governor: RunningGovernor, page_size: int = 2, **filters: Any) -> list[str]:
    """Every id the listing returns, page by page, in the order received."""
    ids: list[str] = []
    token = ""
    while True:
        page = await governor.client.list_page(page_size=page_size, page_token=token, **filters)
        assert len(page.policies) <= page_size
        ids.extend(p.id for p in page.policies)
        token = page.next_page_token
        if not token:
            return ids


async def one_in_each_state(governor: RunningGovernor) -> dict[int, list[str]]:
    """Two policies in each state, plus a disabled ENFORCED one and a disabled DRY_RUN one."""
    by_state: dict[int, list[str]] = {state: [] for state in ALL_STATES}
    for i in range(2):
        by_state[PROPOSED].append((await propose(governor, name=f"proposed-{i}")).resource_id)
        dry = (await propose(governor, name=f"dry-{i}")).resource_id
        await governor.client.enforce(dry, dry_run=True)
        by_state[DRY_RUN].append(dry)
        enforced = (await propose(governor, name=f"enforced-{i}")).resource_id
        await governor.client.enforce(enforced)
        by_state[ENFORCED].append(enforced)
        revoked = (await propose(governor, name=f"revoked-{i}")).resource_id
        await governor.client.enforce(revoked)
        await governor.client.revoke(revoked, reason="replaced")
        by_state[REVOKED].append(revoked)
    return by_state


async def test_a_repeated_state_filter_matches_like_its_distinct_values(
    governor_on_each_store: RunningGovernor,
) -> None:
    governor = governor_on_each_store
    by_state = await one_in_each_state(governor)
    everything = sorted(i for ids in by_state.values() for i in ids)

    assert sorted(await paged_ids(governor, states=[ENFORCED] * 50)) == sorted(by_state[ENFORCED])
    assert sorted(await paged_ids(governor, states=list(ALL_STATES) * 20)) == everything
    revoked_or_proposed: Sequence[int] = [REVOKED, PROPOSED, REVOKED] * 40
    assert sorted(await paged_ids(governor, states=revoked_or_proposed)) == sorted(
        by_state[REVOKED] + by_state[PROPOSED]
    )


async def test_an_unknown_state_among_repeated_ones_names_its_index(
    governor_on_each_store: RunningGovernor,
) -> None:
    states = [ENFORCED] * 40 + [governor_pb2.POLICY_STATE_UNSPECIFIED]
    error = await expect_error(
        governor_on_each_store.client.list_page(states=states),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_violations(error) == ["states[40]"]


async def test_enabled_only_lists_exactly_the_policies_in_force(
    governor_on_each_store: RunningGovernor,
) -> None:
    governor = governor_on_each_store
    by_state = await one_in_each_state(governor)
    disabled = (await propose(governor, name="disabled", enabled=False)).resource_id
    await governor.client.enforce(disabled)
    disabled_dry = (await propose(governor, name="disabled-dry", enabled=False)).resource_id
    await governor.client.enforce(disabled_dry, dry_run=True)
    in_force = sorted(by_state[ENFORCED] + by_state[DRY_RUN])

    listed = await paged_ids(governor, page_size=1, enabled_only=True)
    assert len(listed) == len(set(listed)), "a policy was listed twice across pages"
    assert sorted(listed) == in_force
    assert sorted(await paged_ids(governor, page_size=3, enabled_only=True)) == in_force

    # Combined with a state filter, both apply.
    assert sorted(await paged_ids(governor, enabled_only=True, states=[ENFORCED])) == sorted(
        by_state[ENFORCED]
    )
    assert await paged_ids(governor, enabled_only=True, states=[PROPOSED, REVOKED]) == []
    # Without enabled_only, disabled and retired policies are still listed.
    assert set(await paged_ids(governor, states=[ENFORCED])) == {*by_state[ENFORCED], disabled}
