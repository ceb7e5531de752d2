"""The shared field checks: each names the field (or the offending map key) and says why."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tai_common.core import InvalidArgument, PageRequest, encode_page_token, page_scope
from tai_common.core.units import ms_to_ns, ns_to_seconds, seconds_to_ns
from tai_common.core.validation import (
    check_id,
    check_length,
    check_map,
    check_not_negative,
    check_range,
    check_service_name,
    check_size,
    require_id,
)


def _refusal(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        call()
    return caught.value.field, caught.value.reason


def test_ids() -> None:
    check_id("a-1.b_c:d", "id")
    assert _refusal(lambda: check_id("-a", "id")) == (
        "id",
        "must start with a letter or digit and contain only letters, digits and . _ : -",
    )
    assert _refusal(lambda: check_id("a" * 129, "task_id")) == (
        "task_id",
        "must be at most 128 characters",
    )
    check_id("a" * 200, "task_id", limit=200)
    assert _refusal(lambda: require_id("", "task_id")) == ("task_id", "is required")


def test_service_names() -> None:
    check_service_name("billing-api", "target_service")
    assert _refusal(lambda: check_service_name("", "target_service")) == (
        "target_service",
        "is required",
    )
    field, message = _refusal(lambda: check_service_name("Billing", "action.target_service"))
    assert field == "action.target_service"
    assert message.startswith("must be a service name")


def test_lengths_sizes_ranges() -> None:
    assert _refusal(lambda: check_length("source", "x" * 5, 4)) == (
        "source",
        "must be at most 4 characters (got 5)",
    )
    assert _refusal(lambda: check_size("payload", b"xyz", 2)) == (
        "payload",
        "must be at most 2 bytes (got 3)",
    )
    assert _refusal(lambda: check_range("priority", 11, 1, 10)) == (
        "priority",
        "must be between 1 and 10 (got 11)",
    )
    assert _refusal(lambda: check_not_negative("timestamp_ns", -1)) == (
        "timestamp_ns",
        "must not be negative",
    )
    check_range("priority", 10, 1, 10)
    check_not_negative("timestamp_ns", 0)


def test_maps_name_the_offending_key() -> None:
    def check(values: dict[str, str]) -> None:
        check_map("parameters", values, max_entries=2, max_value_length=3, max_key_length=4)

    check({"k": "abc"})
    assert _refusal(lambda: check({"a": "", "b": "", "c": ""})) == (
        "parameters",
        "must have at most 2 entries (got 3)",
    )
    assert _refusal(lambda: check({"": "x"})) == ("parameters", "keys must not be empty")
    assert _refusal(lambda: check({"toolong": "x"})) == (
        "parameters['toolong'…]",
        "key is longer than 4 characters",
    )
    assert _refusal(lambda: check({"k": "abcd"})) == (
        "parameters['k']",
        "value is longer than 3 characters",
    )


def test_a_page_token_serves_only_its_own_listing() -> None:
    scope = page_scope("tasks", "pending", "", "")
    assert scope == "tasks|pending||"
    token = encode_page_token(("t-1",), scope)
    page = PageRequest.parse(0, token, scope)
    assert page.start_after == ("t-1",)
    assert page.size == 100
    assert page.next_token(None) == ""
    assert _refusal(lambda: PageRequest.parse(0, token, page_scope("tasks", "failed", "", ""))) == (
        "page_token",
        "belongs to a request with different filters",
    )
    assert _refusal(lambda: PageRequest.parse(-1, "", scope))[0] == "page_size"


def test_units() -> None:
    assert seconds_to_ns(1.5) == 1_500_000_000
    assert ms_to_ns(2) == 2_000_000
    assert ns_to_seconds(250_000_000) == 0.25
