"""The checks every service applies to what a caller sends: ids, service names, lengths,
string maps, sizes and ranges. Each raises `InvalidArgument` naming the field, with the same
wording in every service."""

from __future__ import annotations

import re
from collections.abc import Mapping

from tai_common.core.errors import InvalidArgument

# Ids callers choose (policies, signals, actions, tasks) are used in keys, topics and URLs.
MAX_ID_LENGTH = 128
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
# What a target or source service may be called (at most 128 characters).
SERVICE_NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
# Map keys, types and short names.
MAX_KEY_LENGTH = 128


def check_id(value: str, field_name: str, limit: int = MAX_ID_LENGTH) -> None:
    """Raises `InvalidArgument` unless `value` is at most `limit` characters of ID_PATTERN."""
    if len(value) > limit:
        raise InvalidArgument(field_name, f"must be at most {limit} characters")
    if not ID_PATTERN.match(value):
        raise InvalidArgument(
            field_name,
            "must start with a letter or digit and contain only letters, digits and . _ : -",
        )


def require_id(value: str, field_name: str, limit: int = MAX_ID_LENGTH) -> None:
    """`check_id`, and the id must be given."""
    if not value:
        raise InvalidArgument(field_name, "is required")
    check_id(value, field_name, limit)


def check_service_name(value: str, field_name: str) -> None:
    """Raises `InvalidArgument` unless `value` is a (required) service name."""
    if not value:
        raise InvalidArgument(field_name, "is required")
    if not SERVICE_NAME_PATTERN.match(value):
        raise InvalidArgument(
            field_name,
            "must be a service name: lowercase letters, digits, '.', '_' or '-', "
            "at most 128 characters",
        )


def check_length(field_name: str, value: str, limit: int) -> None:
    """Raises `InvalidArgument` when `value` has more than `limit` characters."""
    if len(value) > limit:
        raise InvalidArgument(field_name, f"must be at most {limit} characters (got {len(value)})")


def check_size(field_name: str, value: bytes, limit: int) -> None:
    """Raises `InvalidArgument` when `value` has more than `limit` bytes."""
    if len(value) > limit:
        raise InvalidArgument(field_name, f"must be at most {limit} bytes (got {len(value)})")


def check_map(
    field_name: str,
    values: Mapping[str, str],
    *,
    max_entries: int,
    max_value_length: int,
    max_key_length: int = MAX_KEY_LENGTH,
) -> None:
    """Raises `InvalidArgument` for too many entries, an empty or long key, or a long value;
    the field names the offending key (`parameters['k']`)."""
    if len(values) > max_entries:
        raise InvalidArgument(
            field_name, f"must have at most {max_entries} entries (got {len(values)})"
        )
    for key, value in values.items():
        if not key:
            raise InvalidArgument(field_name, "keys must not be empty")
        if len(key) > max_key_length:
            raise InvalidArgument(
                f"{field_name}[{key[:32]!r}…]", f"key is longer than {max_key_length} characters"
            )
        if len(value) > max_value_length:
            raise InvalidArgument(
                f"{field_name}[{key!r}]", f"value is longer than {max_value_length} characters"
            )


def check_range(field_name: str, value: int, low: int, high: int) -> None:
    """Raises `InvalidArgument` unless `low <= value <= high`."""
    if not low <= value <= high:
        raise InvalidArgument(field_name, f"must be between {low} and {high} (got {value})")


def check_not_negative(field_name: str, value: int) -> None:
    """Raises `InvalidArgument` when `value` is below zero."""
    if value < 0:
        raise InvalidArgument(field_name, "must not be negative")
