"""The caller of the current request, as established by the auth interceptor."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import IntEnum


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
    (authentication off)."""

    name: str
    role: Role | None
    kind: str = "user"

    def has(self, role: Role) -> bool:
        return self.role is not None and self.role >= role


ANONYMOUS = Principal("anonymous", Role.ADMIN, kind="anonymous")

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "tai_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The caller of the request being handled (ANONYMOUS when authentication is off)."""
    return _current.get()


def set_current_principal(principal: Principal) -> None:
    _current.set(principal)
