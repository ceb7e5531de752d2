"""The streams' change feed: in revision order and without gaps, whatever order the bus brings
changes in and whichever it loses. The change log here is a list: the feed only needs the last
revision and the changes after one (tests/integration/governor covers it over a real store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tai_governor.feed import PolicyFeed
from tai_governor.policy import ActionTemplate, PolicyContent, PolicyState, PolicyVersion


def change(revision: int) -> PolicyVersion:
    return PolicyVersion(
        id=f"pol-{revision}",
        version=1,
        state=PolicyState.PROPOSED,
        content=PolicyContent(
            policy_type="operational",
            name=f"p{revision}",
            condition="signal.priority >= 8",
            action=ActionTemplate(action_type="page", target_service="oncall"),
        ),
        created_at_ns=revision,
        updated_at_ns=revision,
        created_by="alice",
        last_modified_by="alice",
        revision=revision,
    )


class ListLog:
    def __init__(self, revisions: range) -> None:
        self.changes = [change(r) for r in revisions]

    async def last_revision(self) -> int:
        return self.changes[-1].revision if self.changes else 0

    async def iter_changes_after(self, revision: int) -> AsyncIterator[PolicyVersion]:
        for policy in self.changes:
            if policy.revision > revision:
                yield policy


class Recorder:
    def __init__(self) -> None:
        self.published: list[int] = []
        self.recovered: list[int] = []

    def publish(self, policy: PolicyVersion) -> None:
        self.published.append(policy.revision)

    async def recover(self, policy: PolicyVersion) -> None:
        self.recovered.append(policy.revision)


async def started(log: ListLog, recorder: Recorder, **options: float) -> PolicyFeed:
    feed = PolicyFeed(log, recorder.publish, recorder.recover, **options)
    await feed.start()
    return feed


async def test_changes_out_of_order_are_published_in_order_once() -> None:
    log, recorder = ListLog(range(1, 3)), Recorder()
    feed = await started(log, recorder)
    log.changes += [change(r) for r in (3, 4, 5)]
    for revision in (4, 3, 5, 3, 2):  # 2 is older than the feed's start; 3 comes twice
        feed.offer(change(revision))
    assert recorder.published == [3, 4, 5]
    assert feed.revision == 5


async def test_a_lost_change_is_read_from_the_store_when_a_later_one_shows_the_gap() -> None:
    log, recorder = ListLog(range(1, 2)), Recorder()
    feed = await started(log, recorder, gap_wait_seconds=0.01, poll_seconds=60)
    log.changes += [change(r) for r in (2, 3, 4)]
    worker = asyncio.create_task(feed.run())
    try:
        feed.offer(change(2))
        feed.offer(change(4))  # 3 never comes on the bus
        async with asyncio.timeout(5):
            while recorder.published != [2, 3, 4]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        worker.cancel()
    assert recorder.recovered == [3]


async def test_a_lost_last_change_is_found_by_the_poll() -> None:
    log, recorder = ListLog(range(1, 4)), Recorder()
    feed = await started(log, recorder, poll_seconds=0.02)
    log.changes.append(change(4))  # committed, its event lost, nothing after it
    worker = asyncio.create_task(feed.run())
    try:
        async with asyncio.timeout(5):
            while recorder.published != [4]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        worker.cancel()
    assert recorder.recovered == [4]
