"""Keeps the PolicyBook current: policy events from the bus as they come, and a full listing
from the Governor at start, every few minutes, and whenever the book stays behind the
Governor's revision (an event was missed: lost in an outage, or published while this replica
was not subscribed). The Governor's HealthCheck reports its revision; asking every
`check_seconds` costs one small call."""

from __future__ import annotations

import asyncio
import logging

from tai.v1 import events_pb2, governor_pb2
from tai_client import (
    ChannelOptions,
    GovernorClient,
    PermissionDenied,
    TaiError,
    Unauthenticated,
    open_channel,
)
from tai_client import NotFound as ClientNotFound
from tai_common.core import NotFound, Unavailable
from tai_common.messaging import events

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
        check_seconds: float = 2.0,
    ) -> None:
        self._book = book
        self._target = governor_target
        self._options = channel_options
        self._resync_seconds = resync_seconds
        self._retry_seconds = retry_seconds
        self._check_seconds = check_seconds
        self._loaded = asyncio.Event()

    async def on_policy_event(self, event: events_pb2.Event) -> None:
        """Bus handler of this replica's subscription to `tai-policies`."""
        payload = events.unpack(event, events_pb2.PolicyEvent)
        self._book.apply(payload.policy)

    async def load(self) -> None:
        """Reads every live policy from the Governor; retries until it answers (cancel it to
        give up, e.g. when the service is asked to stop while starting)."""
        attempt = 0
        while True:
            try:
                await self._load_once()
                log.info("loaded %d active policies from the Governor", len(self._book))
                self._loaded.set()
                return
            except TaiError as error:
                attempt += 1
                if attempt == 1 or attempt % 30 == 0:
                    self._log_refusal(error)
                await asyncio.sleep(self._retry_seconds)

    def _log_refusal(self, error: TaiError) -> None:
        code = error.code
        if isinstance(error, Unauthenticated | PermissionDenied):
            # Not a Governor still starting: this service's credentials are refused, and
            # retrying alone will not fix it.
            log.error(
                "the Governor at %s refuses this service's policy listing (%s: %s); give it a "
                "token with the viewer role (TAI_SERVICE_TOKEN or TAI_SERVICE_TOKEN_FILE) or "
                "a certificate (TAI_TLS_*); retrying",
                self._target,
                code.name,
                error.message,
            )
            return
        log.warning(
            "cannot list policies from the Governor at %s yet (%s); retrying",
            self._target,
            code.name,
        )

    async def run(self) -> None:
        """Resyncs every `resync_seconds`, and when the book is still behind the revision the
        Governor had reached one check earlier (a worker). Waits for `load` to succeed first:
        until then, `load` does the asking."""
        await self._loaded.wait()
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self._resync_seconds
        target = 0
        while True:
            await asyncio.sleep(self._check_seconds)
            try:
                if self._book.revision < target or loop.time() >= next_full:
                    if self._book.revision < target:
                        log.warning(
                            "policy book at revision %d, the Governor was at %d: an event was "
                            "missed; listing the policies again",
                            self._book.revision,
                            target,
                        )
                    await self._load_once()
                    next_full = loop.time() + self._resync_seconds
                target = await self._governor_revision()
            except TaiError as error:
                log.warning("policy resync failed (%s); keeping the current set", error.code)

    async def fetch_policy(self, policy_id: str, version: int) -> governor_pb2.Policy:
        """One stored policy version from the Governor (`version` 0: the latest)."""
        try:
            async with open_channel(self._target, self._options) as channel:
                return await GovernorClient(channel, self._options).get(policy_id, version=version)
        except ClientNotFound as error:
            raise NotFound("policy", f"{policy_id} v{version}" if version else policy_id) from error
        except TaiError as error:
            raise Unavailable(
                f"cannot read policy {policy_id!r} from the Governor ({error.code.name}); "
                "retry shortly"
            ) from error

    async def _governor_revision(self) -> int:
        async with open_channel(self._target, self._options) as channel:
            status = await GovernorClient(channel, self._options).health()
        for detail in status.details:
            name, _, value = detail.partition("=")
            if name == "policy_revision":
                return int(value)
        return 0

    async def _load_once(self) -> None:
        # The revision first: the listing that follows reflects at least every change up to it.
        revision = await self._governor_revision()
        async with open_channel(self._target, self._options) as channel:
            client = GovernorClient(channel, self._options)
            live: list[governor_pb2.Policy] = [
                p async for p in client.list_all(states=list(LIVE_STATES))
            ]
        self._book.replace_all(live, as_of_revision=revision)
