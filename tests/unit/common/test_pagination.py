"""Page tokens round-trip and refuse what they did not produce."""

from __future__ import annotations

import pytest
from tai_common.core import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    InvalidArgument,
    decode_page_token,
    encode_page_token,
    page_size,
)


def test_round_trip() -> None:
    token = encode_page_token(("security", 42, "pol-9"), scope="q1")
    assert decode_page_token(token, scope="q1") == ("security", 42, "pol-9")


def test_last_page_has_no_token() -> None:
    assert encode_page_token(None, scope="q1") == ""
    assert decode_page_token("", scope="q1") is None


@pytest.mark.parametrize("token", ["not-base64!", "e30", "eyJzIjoicTEifQ"])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument):
        decode_page_token(token, scope="q1")


def test_a_token_from_another_query_is_refused() -> None:
    token = encode_page_token(("a",), scope="q1")
    with pytest.raises(InvalidArgument, match="different filters"):
        decode_page_token(token, scope="q2")


def test_page_sizes() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(7) == 7
    with pytest.raises(InvalidArgument):
        page_size(-1)
    with pytest.raises(InvalidArgument):
        page_size(MAX_PAGE_SIZE + 1)
