"""Page tokens for list RPCs: an opaque, URL-safe encoding of a store cursor (the values that
resume a query, `tai_common.ports.Cursor`; a plain tuple here, so the core needs no port)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from tai_common.core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int, field: str = "page_size") -> int:
    """The page size to use: the default for 0, the request's otherwise (1..MAX_PAGE_SIZE)."""
    if requested < 0:
        raise InvalidArgument(field, "must not be negative")
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument(field, f"must be at most {MAX_PAGE_SIZE}")
    return requested or DEFAULT_PAGE_SIZE


def encode_page_token(cursor: tuple[Any, ...] | None, scope: str) -> str:
    """A token for the page after `cursor`; empty on the last page. `scope` ties the token to
    the query it came from (e.g. its filters), so it cannot be replayed against another."""
    if cursor is None:
        return ""
    raw = json.dumps({"s": scope, "c": list(cursor)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, scope: str, field: str = "page_token") -> tuple[Any, ...] | None:
    """The cursor in `token` (None for an empty token)."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
        cursor = decoded["c"]
        token_scope = decoded["s"]
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise InvalidArgument(field, "is not a token from a previous response") from error
    if token_scope != scope or not isinstance(cursor, list):
        raise InvalidArgument(field, "belongs to a request with different filters")
    return tuple(cursor)


def page_scope(query: str, *filters: object) -> str:
    """The scope of a page token: the query's name and its filters, so a token from one
    listing is refused by another (`encode_page_token`)."""
    return "|".join((query, *(str(f) for f in filters)))


@dataclass(frozen=True)
class PageRequest:
    """One page of a listing, as a request asks for it: its size and where it starts."""

    scope: str
    size: int
    start_after: tuple[Any, ...] | None

    @classmethod
    def parse(cls, requested_page_size: int, page_token: str, scope: str) -> PageRequest:
        """Raises `InvalidArgument` naming `page_size` or `page_token`."""
        return cls(scope, page_size(requested_page_size), decode_page_token(page_token, scope))

    def next_token(self, cursor: tuple[Any, ...] | None) -> str:
        """The token for the page after `cursor` ("" on the last page)."""
        return encode_page_token(cursor, self.scope)
