"""The SQL that `SqliteStore` runs: a table per collection holding each document as JSON, fields
read with `json_extract`, queries compiled to SQL text (cached per query shape) and their bound
parameters, and the JSON codec of the documents.

Collection and field names are validated by the port's checks before they reach SQL text;
values are always bound parameters.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from tai_common.ports import (
    DOC_ID,
    Cursor,
    Document,
    Filter,
    IndexSpec,
    Op,
    Order,
    Page,
    Query,
    check_collection,
    check_field,
    cursor_of,
    split_collection,
)

# The collection tables of the file, including those another process created.
TABLES_SQL: Final = (
    "SELECT substr(name, 3) FROM sqlite_master "
    "WHERE type = 'table' AND name LIKE 'c\\_%' ESCAPE '\\'"
)

# Compact, and strict about NaN/Infinity, which SQLite's JSON functions reject as malformed.
encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
decode_json = json.JSONDecoder().decode


# A namespace's tables end in this, then the namespace with "_" for "-" (names have no "_"
# and no "--", so the mapping is one-to-one).
NAMESPACE_TABLE_INFIX: Final = "__ns__"


def _table_suffix(namespace: str) -> str:
    return f"{NAMESPACE_TABLE_INFIX}{namespace.replace('-', '_')}"


def flat_name(collection: str) -> str:
    """`collection` as one identifier: itself at the root, `<collection>__ns__<namespace>` for
    a namespace's (`namespaces/<namespace>/<collection>`)."""
    namespace, name = split_collection(check_collection(collection))
    if namespace is None:
        return name
    return name + _table_suffix(namespace)


def namespace_tables_sql(namespace: str) -> tuple[str, tuple[str]]:
    """The statement (and its parameter) listing the tables of `namespace`'s collections."""
    pattern = "c\\_%" + _table_suffix(namespace).replace("_", "\\_")
    return (
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '\\'",
        (pattern,),
    )


def table_name(collection: str) -> str:
    """The table of `collection`."""
    return f"c_{flat_name(collection)}"


def _expr(field_path: str) -> str:
    """The SQL expression for a field: exactly the text `ensure_indexes` puts in an index."""
    if check_field(field_path) == DOC_ID:
        return "id"
    return f"json_extract(data, '$.{field_path}')"


@functools.lru_cache(maxsize=4096)
def create_table_sql(collection: str) -> str:
    """Creates the table of `collection` unless it exists."""
    table = table_name(collection)
    return f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, data TEXT NOT NULL)"


@functools.lru_cache(maxsize=4096)
def get_sql(collection: str) -> str:
    """Reads one document by id."""
    return f"SELECT id, data FROM {table_name(collection)} WHERE id = ?"


@functools.lru_cache(maxsize=4096)
def get_many_sql(collection: str) -> str:
    """Reads the documents whose ids a JSON array (the one parameter) lists."""
    # One parameter (a JSON array of ids) whatever the number of ids: one statement shape, and
    # no SQLITE_MAX_VARIABLE_NUMBER limit.
    table = table_name(collection)
    return f"SELECT id, data FROM {table} WHERE id IN (SELECT value FROM json_each(?))"


WriteKind = Literal["create", "set", "delete"]


@functools.lru_cache(maxsize=4096)
def write_sql(kind: WriteKind, collection: str) -> str:
    """Creates, sets (upserts) or deletes one document by id."""
    table = table_name(collection)
    if kind == "create":
        return f"INSERT INTO {table} (id, data) VALUES (?, ?)"
    if kind == "set":
        # An upsert rather than INSERT OR REPLACE: the row keeps its rowid, so replacing a
        # document does not delete and re-insert every index entry.
        return (
            f"INSERT INTO {table} (id, data) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data"
        )
    return f"DELETE FROM {table} WHERE id = ?"


@functools.lru_cache(maxsize=4096)
def expiry_index_sql(collection: str) -> str:
    """The partial index on `expires_at_ns` that the expiry sweep scans."""
    # Partial: documents without an expiry (most collections) add nothing to it. The name cannot
    # collide with ensure_indexes' (those end in a hex digest).
    field = _expr("expires_at_ns")
    return (
        f"CREATE INDEX IF NOT EXISTS ix_{flat_name(collection)}_expiry "
        f"ON {table_name(collection)} ({field}) "
        f"WHERE {field} IS NOT NULL"
    )


@functools.lru_cache(maxsize=4096)
def delete_expired_sql(collection: str) -> str:
    """Deletes at most a limit of documents expired by a time (both parameters)."""
    table = table_name(collection)
    field = _expr("expires_at_ns")
    # The IS NOT NULL term repeats the index's WHERE, which lets SQLite pick the partial index.
    return (
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
        f"WHERE {field} IS NOT NULL AND {field} <= ? LIMIT ?)"
    )


# A bound parameter's source: (_FILTER, filter index, value index or -1 for a scalar filter),
# (_CURSOR, cursor index, 0) or (_LIMIT, 0, 0). Cached with the SQL text, so building the
# parameters of a call never re-derives the SQL.
_Slot = tuple[int, int, int]
_FILTER, _CURSOR, _LIMIT = 0, 1, 2

# What the SQL of a filter depends on: field, op, number of non-null values (0 for `== None`),
# whether a null is among the values.
FilterShape = tuple[str, str, int, bool]
# An ordering key column: SQL expression, descending, index of its value in a cursor.
_KeyColumn = tuple[str, bool, int]


@dataclass(frozen=True, slots=True)
class Sql:
    """SQL text, and where each of its bound parameters comes from."""

    text: str
    slots: tuple[_Slot, ...]


def filter_shape(f: Filter) -> FilterShape:
    """What the SQL of `f` depends on (not its values), the key of the cached SQL text."""
    if f.op is Op.IN:
        present = sum(value is not None for value in f.value)
        return (f.field, f.op.value, present, present < len(f.value))
    if f.value is None:
        if f.op is not Op.EQ:
            raise ValueError(f"filter on {f.field!r}: only == accepts None")
        return (f.field, f.op.value, 0, True)
    return (f.field, f.op.value, 1, False)


def _filter_sql(index: int, shape: FilterShape) -> tuple[str, list[_Slot]]:
    field_path, op, present, has_null = shape
    expr = _expr(field_path)
    if op == Op.IN.value:
        parts: list[str] = []
        if present:
            parts.append(f"{expr} IN ({', '.join('?' * present)})")
        if has_null:
            parts.append(f"{expr} IS NULL")
        text = parts[0] if len(parts) == 1 else f"({' OR '.join(parts)})"
        return text, [(_FILTER, index, j) for j in range(present)]
    if not present:
        return f"{expr} IS NULL", []
    sql_op = "=" if op == Op.EQ.value else op
    return f"{expr} {sql_op} ?", [(_FILTER, index, -1)]


@functools.lru_cache(maxsize=1024)
def _key_columns(order: tuple[tuple[str, bool], ...]) -> tuple[_KeyColumn, ...]:
    """The columns results are sorted by: the order fields, then the id in the direction of the
    last order field. An explicit DOC_ID order ends the key (ids are unique)."""
    key: list[_KeyColumn] = []
    for index, (field_path, descending) in enumerate(order):
        key.append((_expr(field_path), descending, index))
        if field_path == DOC_ID:
            return tuple(key)
    key.append(("id", order[-1][1] if order else False, len(order)))
    return tuple(key)


def _after_sql(column: _KeyColumn, null: bool) -> tuple[str | None, list[_Slot]]:
    """`column` comes strictly after the cursor's value, in SQLite's order (NULL is smallest:
    first ascending, last descending). None when nothing can come after."""
    expr, descending, index = column
    if null:
        return (None, []) if descending else (f"{expr} IS NOT NULL", [])
    if descending and expr != "id":  # ids are never null
        return f"({expr} < ? OR {expr} IS NULL)", [(_CURSOR, index, 0)]
    if descending:
        return f"{expr} < ?", [(_CURSOR, index, 0)]
    return f"{expr} > ?", [(_CURSOR, index, 0)]


def _keyset_sql(key: tuple[_KeyColumn, ...], nulls: tuple[bool, ...]) -> tuple[str, list[_Slot]]:
    """Rows after the cursor: (k1 after) OR (k1 = AND k2 after) OR …, each column honouring
    its own direction, NULL-safe."""
    clauses: list[str] = []
    slots: list[_Slot] = []
    for position, column in enumerate(key):
        after, after_slots = _after_sql(column, nulls[position])
        if after is None:
            continue
        parts: list[str] = []
        for (expr, _, index), null in zip(key[:position], nulls, strict=False):
            if null:
                parts.append(f"{expr} IS NULL")
            else:
                parts.append(f"{expr} = ?")
                slots.append((_CURSOR, index, 0))
        parts.append(after)
        slots.extend(after_slots)
        clauses.append(" AND ".join(parts))
    if not clauses:
        return "0", []
    text = " OR ".join(f"({clause})" for clause in clauses)
    first_expr, first_descending, first_index = key[0]
    if not first_descending and not nulls[0]:
        # Redundant with the disjunction, but a plain range on the leading column lets SQLite
        # seek in the index instead of scanning every row of the previous pages.
        return f"{first_expr} >= ? AND ({text})", [(_CURSOR, first_index, 0), *slots]
    return f"({text})", slots


@functools.lru_cache(maxsize=1024)
def _select_sql(
    collection: str,
    filters: tuple[FilterShape, ...],
    order: tuple[tuple[str, bool], ...],
    cursor_nulls: tuple[bool, ...] | None,
    limited: bool,
) -> Sql:
    where: list[str] = []
    slots: list[_Slot] = []
    for index, shape in enumerate(filters):
        text, filter_slots = _filter_sql(index, shape)
        where.append(text)
        slots.extend(filter_slots)
    key = _key_columns(order)
    if cursor_nulls is not None:
        text, keyset_slots = _keyset_sql(key, cursor_nulls)
        where.append(text)
        slots.extend(keyset_slots)
    sql = f"SELECT id, data FROM {table_name(collection)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY " + ", ".join(f"{expr} DESC" if desc else expr for expr, desc, _ in key)
    if limited:
        sql += " LIMIT ?"
        slots.append((_LIMIT, 0, 0))
    return Sql(sql, tuple(slots))


@functools.lru_cache(maxsize=4096)
def count_sql(collection: str, filters: tuple[FilterShape, ...]) -> Sql:
    """Counts the documents that match filters of these shapes."""
    where: list[str] = []
    slots: list[_Slot] = []
    for index, shape in enumerate(filters):
        text, filter_slots = _filter_sql(index, shape)
        where.append(text)
        slots.extend(filter_slots)
    sql = f"SELECT count(*) FROM {table_name(collection)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return Sql(sql, tuple(slots))


def index_sql(spec: IndexSpec) -> str:
    """Creates the index `spec` declares, over the same expressions queries use."""
    if spec.descending and len(spec.descending) != len(spec.fields):
        raise ValueError("IndexSpec.descending needs one flag per field, or none")
    if not spec.fields:
        raise ValueError("IndexSpec needs at least one field")
    descending = spec.descending or (False,) * len(spec.fields)
    # The trailing id makes the index deliver ties in the order queries ask for them.
    key = _key_columns(tuple(zip(spec.fields, descending, strict=True)))
    columns = ", ".join(f"{expr} DESC" if desc else expr for expr, desc, _ in key)
    # Field paths map onto identifiers ambiguously (a.b vs a_b), so the name carries a digest.
    digest = hashlib.sha256(columns.encode()).hexdigest()[:12]
    table = table_name(spec.collection)
    name = f"ix_{flat_name(spec.collection)}_{digest}"
    return f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"


def _bind(value: Any, what: str) -> Any:
    if isinstance(value, dict | list | tuple):
        raise TypeError(f"{what}: only scalar values can be compared, got {type(value).__name__}")
    return value


def _bind_cursor(value: Any) -> Any:
    # json_extract yields an object or array as its compact JSON text; compare against the same.
    if isinstance(value, dict | list | tuple):
        return encode_json(value)
    return value


def bind_parameters(
    sql: Sql,
    filters: Sequence[Filter],
    cursor: Cursor | None = None,
    limit: int | None = None,
) -> list[Any]:
    """The bound parameters of `sql` from the values of the filters, cursor and limit."""
    values = [[v for v in f.value if v is not None] if f.op is Op.IN else f.value for f in filters]
    parameters: list[Any] = []
    for source, index, position in sql.slots:
        if source == _FILTER:
            value = values[index] if position < 0 else values[index][position]
            parameters.append(_bind(value, f"filter on {filters[index].field!r}"))
        elif source == _CURSOR:
            assert cursor is not None
            parameters.append(_bind_cursor(cursor[index]))
        else:
            assert limit is not None
            # One row more than asked tells whether another page follows.
            parameters.append(limit + 1)
    return parameters


def compile_select(query: Query) -> tuple[Sql, list[Any]]:
    """The SQL of `query` (cached per shape) and its bound parameters."""
    order = tuple((o.field, o.descending) for o in query.order_by)
    nulls: tuple[bool, ...] | None = None
    if query.start_after is not None:
        cursor = query.start_after
        nulls = tuple(cursor[index] is None for _, _, index in _key_columns(order))
    sql = _select_sql(
        query.collection,
        tuple(filter_shape(f) for f in query.filters),
        order,
        nulls,
        query.limit is not None,
    )
    return sql, bind_parameters(sql, query.filters, query.start_after, query.limit)


def page_of(rows: Sequence[Any], limit: int | None, order_by: Sequence[Order]) -> Page:
    """The page of a query's rows (one more than `limit` was read: it tells a next page follows)."""
    more = limit is not None and len(rows) > limit
    documents = [Document(row[0], decode_json(row[1])) for row in (rows[:limit] if more else rows)]
    return Page(documents, cursor_of(documents[-1], order_by) if more else None)
