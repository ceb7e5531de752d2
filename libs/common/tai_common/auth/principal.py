"""The caller of the current request, as established by the auth interceptor."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from tai_common.core.namespace import ALL_NAMESPACES, DEFAULT_NAMESPACE, namespace_or_none


class Role(IntEnum):
    """Roles are ordered: each includes the ones below it."""

    VIEWER = 1  # reads and streams
    OPERATOR = 2  # proposes policies; signals, actions, tasks, silences
    APPROVER = 3  # approves or rejects actions that wait for approval
    ADMIN = 4  # enforces and revokes policies; cancels others' tasks; reads the audit log

    @classmethod
    def parse(cls, name: str) -> Role | None:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            return None


@dataclass(frozen=True)
class Principal:
    """`kind` is "user" (a bearer token), "service" (a peer certificate) or "anonymous"
    (authentication off).

    `namespaces` maps each namespace the caller holds to its role there ("*": every
    namespace); None for a token without the namespaces claim, which holds "default" only, with
    `role`. Anonymous callers hold `role` everywhere; services hold no role (their calls are
    allowed by method, in every namespace)."""

    name: str
    role: Role | None
    kind: str = "user"
    namespaces: Mapping[str, Role] | None = None

    def role_in(self, namespace: str) -> Role | None:
        """The caller's role in `namespace` (its own grant or the "*" one, the higher)."""
        if self.kind != "user":
            return self.role
        grants = self.namespaces if self.namespaces is not None else {DEFAULT_NAMESPACE: self.role}
        held = [r for r in (grants.get(namespace), grants.get(ALL_NAMESPACES)) if r is not None]
        return max(held) if held else None

    def held_namespaces(self) -> frozenset[str]:
        """The namespaces named in the caller's grants ("*" included)."""
        if self.kind != "user":
            return frozenset({ALL_NAMESPACES})
        if self.namespaces is None:
            return frozenset({DEFAULT_NAMESPACE}) if self.role else frozenset()
        return frozenset(self.namespaces)

    def has(self, role: Role, namespace: str | None = None) -> bool:
        """Whether the caller holds at least `role` in `namespace` (default: the namespace the
        current call works in)."""
        held = self.role_in(namespace or namespace_or_none() or DEFAULT_NAMESPACE)
        return held is not None and held >= role


ANONYMOUS = Principal("anonymous", Role.ADMIN, kind="anonymous")

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "tai_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The caller of the request being handled (ANONYMOUS when authentication is off)."""
    return _current.get()


def set_current_principal(principal: Principal) -> None:
    _current.set(principal)
