"""Ids: random (`UuidFactory`) or time-ordered (`TimeOrderedIds`, for the SQLite store's
B-trees), both `<prefix>-<32 hex digits>`, and which one the factory gives each store."""

from __future__ import annotations

import re
import time

from tai_common import factory
from tai_common.core import ServiceSettings, TimeOrderedIds, UuidFactory

ID = re.compile(r"^act-[0-9a-f]{32}$")


def test_both_kinds_have_the_same_shape_and_never_repeat() -> None:
    for ids in (UuidFactory(), TimeOrderedIds()):
        made = [ids.new_id("act") for _ in range(10_000)]
        assert all(ID.fullmatch(i) for i in made)
        assert len(set(made)) == len(made)


def test_time_ordered_ids_sort_by_creation_time_across_milliseconds() -> None:
    ids = TimeOrderedIds()
    made = []
    for _ in range(5):
        made.append(ids.new_id("act"))
        time.sleep(0.002)
    assert made == sorted(made)
    # Their first 12 hex digits are the Unix time in milliseconds.
    assert abs(int(made[-1][4:16], 16) - time.time_ns() // 1_000_000) < 1_000


def test_the_sqlite_store_gets_time_ordered_ids_and_firestore_random_ones() -> None:
    assert isinstance(factory.open_ids(ServiceSettings(store="sqlite:///x.db")), TimeOrderedIds)
    assert isinstance(factory.open_ids(ServiceSettings(store="firestore://p")), UuidFactory)
