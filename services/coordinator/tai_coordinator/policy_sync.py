"""Keeps the PolicyBook current: policy events from the bus as they come, and a full listing
from the Governor at start and every few minutes (in case an event was missed)."""

from __future__ import annotations

import asyncio
import logging

import grpc
from tai.v1 import events_pb2, governor_pb2
from tai_client import ChannelOptions, GovernorClient, open_channel
from tai_common.bus import events

from tai_coordinator.policy_book import LIVE_STATES, PolicyBook

log = logging.getLogger(__name__)


class PolicySync:
    def __init__(
        self,
        book: PolicyBook,
        governor_target: str,
        channel_options: ChannelOptions,
        resync_seconds: float = 300.0,
        retry_seconds: float = 1.0,
    ) -> None:
        self._book = book
        self._target = governor_target
        self._options = channel_options
        self._resync_seconds = resync_seconds
        self._retry_seconds = retry_seconds

    async def on_policy_event(self, event: events_pb2.Event) -> None:
        """Bus handler of this replica's subscription to `tai-policies`."""
        payload = events.unpack(event, events_pb2.PolicyEvent)
        self._book.apply(payload.policy)

    async def load(self) -> None:
        """Reads every live policy from the Governor; retries until it answers."""
        attempt = 0
        while True:
            try:
                await self._load_once()
                log.info("loaded %d active policies from the Governor", len(self._book))
                return
            except grpc.aio.AioRpcError as error:
                attempt += 1
                if attempt == 1 or attempt % 30 == 0:
                    log.warning(
                        "cannot list policies from the Governor at %s yet (%s); retrying",
                        self._target,
                        error.code().name,
                    )
                await asyncio.sleep(self._retry_seconds)

    async def run(self) -> None:
        """Periodic full resync (a worker)."""
        while True:
            await asyncio.sleep(self._resync_seconds)
            try:
                await self._load_once()
            except grpc.aio.AioRpcError as error:
                log.warning("policy resync failed (%s); keeping the current set", error.code())

    async def _load_once(self) -> None:
        async with open_channel(self._target, self._options) as channel:
            client = GovernorClient(channel, self._options)
            live: list[governor_pb2.Policy] = [
                p async for p in client.list_all(states=list(LIVE_STATES))
            ]
        self._book.replace_all(live)
