"""The Governor's hot reads, through the cache: a policy's current version, and policy listings.

- `policy:<id>` holds the current version, stamped with the policy's version; an event of a
  newer version invalidates it (leaving a tombstone, so a slow reader cannot put the old one
  back).
- Listings are keyed by the change-log revision this replica knows of: every change moves the
  revision on, so a listing is never served from an older revision's entry. The revision is
  read from the store at start and advanced by this replica's commits and by the policy events
  it consumes (other replicas' commits), so a replica lags another's writes by the bus delay.

Cached values are JSON bytes (shared with other replicas through Redis). Decoding them is most
of a cached read's work, so the decoded value is remembered by the exact bytes it came from:
the same bytes always decode to the same value, whichever entry or replica they came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from cachetools import LRUCache
from tai_common.caching import ReadThrough
from tai_common.core.namespace import current_namespace
from tai_common.ports import Cache, Cursor

from tai_governor.policy import PolicyState, PolicyVersion
from tai_governor.repository import PolicyRepository

POLICY_TTL_SECONDS = 300.0
# Decoded values remembered, by their bytes: a few hundred policies and listing pages.
DECODED_ENTRIES = 1024
# A listing page, decoded: its policies and the cursor after them.
_Page = tuple[tuple[PolicyVersion, ...], Cursor | None]


class PolicyCache:
    def __init__(self, cache: Cache, repository: PolicyRepository) -> None:
        self._policies = ReadThrough(cache, "policy", POLICY_TTL_SECONDS)
        self._listings = ReadThrough(cache, "policies", POLICY_TTL_SECONDS)
        self._repo = repository
        self._decoded_policies: LRUCache[bytes, PolicyVersion] = LRUCache(DECODED_ENTRIES)
        self._decoded_pages: LRUCache[bytes, _Page] = LRUCache(DECODED_ENTRIES)
        # Per namespace: the last revision this replica knows of, which keys the listings (a
        # change moves it, so listings from before it are never served again).
        self._known_revisions: dict[str, int] = {}

    async def start(self) -> None:
        """Learns the current namespace's last revision (on first use of the namespace)."""
        namespace = current_namespace()
        self._known_revisions[namespace] = max(
            self._known_revisions.get(namespace, 0), await self._repo.last_revision()
        )

    async def known_revision(self) -> int:
        """The last revision this replica knows of in the current namespace."""
        namespace = current_namespace()
        if namespace not in self._known_revisions:
            await self.start()
        return self._known_revisions[namespace]

    async def changed(self, policy: PolicyVersion) -> None:
        """A new version was committed in the current namespace (here or, via the bus, on
        another replica)."""
        namespace = current_namespace()
        self._known_revisions[namespace] = max(
            self._known_revisions.get(namespace, 0), policy.revision
        )
        await self._policies.invalidate(policy.id, policy.version)

    async def current(self, policy_id: str) -> PolicyVersion | None:
        async def load() -> tuple[bytes, int] | None:
            policy = await self._repo.current(policy_id)
            if policy is None:
                return None
            return json.dumps(policy.to_doc()).encode(), policy.version

        raw = await self._policies.get(policy_id, load)
        if raw is None:
            return None
        policy = self._decoded_policies.get(raw)
        if policy is None:
            policy = self._decoded_policies[raw] = PolicyVersion.from_doc(json.loads(raw))
        return policy

    async def list_current(
        self,
        *,
        policy_type: str,
        enabled_only: bool,
        states: Sequence[PolicyState],
        limit: int,
        start_after: Cursor | None,
    ) -> tuple[list[PolicyVersion], Cursor | None]:
        revision = await self.known_revision()
        key = json.dumps([revision, policy_type, enabled_only, sorted(states), limit, start_after])

        async def load() -> tuple[bytes, int]:
            policies, cursor = await self._repo.list_current(
                policy_type=policy_type,
                enabled_only=enabled_only,
                states=states,
                limit=limit,
                start_after=start_after,
            )
            page = {"policies": [p.to_doc() for p in policies], "cursor": cursor}
            return json.dumps(page).encode(), revision

        raw = await self._listings.get(key, load)
        assert raw is not None  # a listing always loads
        decoded = self._decoded_pages.get(raw)
        if decoded is None:
            page = json.loads(raw)
            cursor = tuple(page["cursor"]) if page["cursor"] is not None else None
            decoded = self._decoded_pages[raw] = (
                tuple(PolicyVersion.from_doc(d) for d in page["policies"]),
                cursor,
            )
        policies, cursor = decoded
        return list(policies), cursor
