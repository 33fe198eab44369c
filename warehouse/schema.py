"""Schemas of the warehouse tables (DESIGN.md, "Warehouse tables") and their validation.

Every table that enters or leaves the warehouse goes through `validate_table`, which
either returns the table in canonical form (required columns first, in schema order, with
safe casts such as int32 -> int64 applied; extra columns kept after them) or raises a
`WarehouseSchemaError` that names the table, the column, the problem and the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class WarehouseSchemaError(ValueError):
    """A warehouse table does not match its schema; the message says where and how."""


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool = False
    doc: str = ""


_SIGNALS = ("view", "long_view", "boost", "favorite", "share", "skip")

SCHEMAS: dict[str, tuple[Column, ...]] = {
    "events": (
        Column("user_id", pa.string()),
        Column("story_id", pa.string()),
        Column("ts", pa.int64(), doc="UTC seconds of the impression"),
        *(Column(s, pa.bool_(), doc="engagement signal of the impression") for s in _SIGNALS),
        Column("watch_ratio", pa.float32(), doc="seconds watched / story duration (>= 0)"),
    ),
    "users": (
        Column("user_id", pa.string()),
        Column("country", pa.string()),
        Column("language", pa.string()),
        Column("age_bucket", pa.string()),
        Column("account_created_ts", pa.int64()),
    ),
    "stories": (
        Column("story_id", pa.string()),
        Column("creator_id", pa.string()),
        Column("created_ts", pa.int64()),
        Column("country", pa.string()),
        Column("language", pa.string()),
        Column("duration_s", pa.float32(), nullable=True, doc="null when the source lacks it"),
        Column("hashtags", pa.list_(pa.string())),
        Column("description", pa.string()),
        Column("content_embedding", pa.list_(pa.float32()), doc="same length in every row"),
    ),
    "creators": (
        Column("creator_id", pa.string()),
        Column("country", pa.string()),
        Column("language", pa.string()),
        Column("created_ts", pa.int64()),
        Column("follower_count", pa.int64()),
    ),
}

KEYS = {"users": "user_id", "stories": "story_id", "creators": "creator_id"}
TABLES = tuple(SCHEMAS)
EVENT_SIGNALS = _SIGNALS


def arrow_schema(table: str) -> pa.Schema:
    """The required columns of `table` as an Arrow schema (for writers and Beam's ParquetIO)."""
    return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in _columns(table)])


def validate_table(table: str, data: pa.Table, source: str = "") -> pa.Table:
    """Checks `data` against the schema of `table` and returns it in canonical form.

    Args:
      table: one of "events", "users", "stories", "creators".
      data: the table as read or about to be written.
      source: the file or URI it came from, for error messages.

    Raises:
      WarehouseSchemaError: a column is missing, has the wrong type, holds nulls where
        none are allowed, or holds values no reader can use (duplicate keys, NaN,
        negative watch ratios, embeddings of different lengths).
    """
    where = f" in {source}" if source else ""

    def fail(column: str, problem: str) -> WarehouseSchemaError:
        return WarehouseSchemaError(f"table '{table}', column '{column}'{where}: {problem}")

    columns = _columns(table)
    missing = [c.name for c in columns if c.name not in data.column_names]
    if missing:
        raise fail(
            missing[0],
            f"missing (required columns absent: {', '.join(missing)}; "
            f"present: {', '.join(data.column_names) or 'none'})",
        )

    arrays: dict[str, pa.ChunkedArray] = {}
    for col in columns:
        array = data.column(col.name)
        if array.type != col.type:
            array = _safe_cast(array, col.type, lambda p, c=col.name: fail(c, p))
        if not col.nullable and array.null_count:
            first = int(pc.index(pc.is_null(array), True).as_py())
            raise fail(col.name, f"{array.null_count} null value(s), first at row {first}")
        arrays[col.name] = array

    _check_values(table, arrays, fail)

    extras = [name for name in data.column_names if name not in arrays]
    names = [c.name for c in columns] + extras
    return pa.table([arrays[c.name] for c in columns] + [data.column(n) for n in extras], names=names)


def _columns(table: str) -> tuple[Column, ...]:
    try:
        return SCHEMAS[table]
    except KeyError:
        raise WarehouseSchemaError(f"unknown warehouse table {table!r}; tables are {', '.join(SCHEMAS)}") from None


def _safe_cast(array: pa.ChunkedArray, target: pa.DataType, fail) -> pa.ChunkedArray:
    """Casts only within a family (ints, floats, strings, lists): never text to numbers."""
    source = array.type
    families = [
        (pa.types.is_integer, pa.types.is_integer),
        (pa.types.is_floating, pa.types.is_floating),
        (pa.types.is_integer, pa.types.is_floating),
        (_is_string, _is_string),
        (pa.types.is_dictionary, _is_string),
        (_is_list, _is_list),
    ]
    if not any(src(source) and dst(target) for src, dst in families):
        raise fail(f"type {source}, expected {target}")
    try:
        # Floats narrow to float32 (precision is the point of the narrower type);
        # integers must fit exactly.
        return pc.cast(array, target, safe=not pa.types.is_floating(target))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise fail(f"type {source} cannot be read as {target}: {err}") from None


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _check_values(table: str, arrays: dict[str, pa.ChunkedArray], fail) -> None:
    key = KEYS.get(table)
    if key is not None and len(arrays[key]):
        unique = pc.count_distinct(arrays[key]).as_py()
        if unique != len(arrays[key]):
            counts = pc.value_counts(arrays[key])
            dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
            raise fail(key, f"{len(arrays[key]) - unique} duplicate id(s), e.g. {dup!r}")
    for name in ("ts", "created_ts", "account_created_ts"):
        # Seconds, not milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
        if name in arrays and len(arrays[name]) and pc.max(arrays[name]).as_py() >= 10**11:
            raise fail(name, "timestamps look like milliseconds; expected UTC seconds")
    if table == "events" and len(arrays["ts"]) and pc.min(arrays["ts"]).as_py() < 0:
        raise fail("ts", "negative event timestamp (expected UTC seconds since 1970)")
    if table == "events" and len(arrays["watch_ratio"]):
        ratios = arrays["watch_ratio"]
        if not pc.all(pc.is_finite(ratios)).as_py() or pc.min(ratios).as_py() < 0:
            raise fail("watch_ratio", "values must be finite and >= 0")
    if table == "stories" and len(arrays["content_embedding"]):
        embeddings = arrays["content_embedding"]
        lengths = pc.list_value_length(embeddings)
        low, high = pc.min(lengths).as_py(), pc.max(lengths).as_py()
        if low != high:
            raise fail("content_embedding", f"rows have different lengths ({low}..{high})")
        values = pc.list_flatten(embeddings)
        if len(values) and not np.isfinite(values.to_numpy(zero_copy_only=False)).all():
            raise fail("content_embedding", "contains NaN or infinite values")
