"""Pure functions over Arrow record batches: validation with reasons, and key buckets.

The jobs move *columnar batches* (Parquet row groups as `pyarrow.Table`, feature
batches as numpy arrays) rather than one element per row: a Python runner spends
microseconds per element and step, which at millions of rows would cost more than the
towers themselves. Bad rows are still handled one by one: each becomes a `DeadLetter`
with the reason, and the batch goes on without it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class DeadLetter:
    """A record the job could not use: where it came from, its id, why, and the record."""

    source: str  # "users", "stories", "events", "creators"
    id: str | None
    reason: str
    record: str = ""  # the row as JSON, truncated

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source, "id": self.id, "reason": self.reason, "record": self.record}, sort_keys=True
        )


@dataclass(frozen=True)
class FeatureBatch:
    """Tower inputs for `ids` ([n]), as `models.features` builds them, plus an optional
    `group` ([n], e.g. each story's creator id) carried through inference."""

    ids: np.ndarray
    features: dict[str, np.ndarray]
    group: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class EmbeddingBatch:
    """ids [n] (str) and their vectors [n, dim] float32, plus the optional `group` [n]."""

    ids: np.ndarray
    vectors: np.ndarray
    group: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


# -- key buckets ----------------------------------------------------------------------------


def key_buckets(ids, buckets: int) -> np.ndarray:
    """Bucket of each id: crc32 of its UTF-8 bytes modulo `buckets`.

    Stable across processes and machines (Python's `hash` of a str is salted per
    process, which would scatter one user's rows over buckets on a distributed runner).
    For Arrow arrays the hash is computed once per distinct id (an events column repeats
    each user and story many times).
    """
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        encoded = pc.dictionary_encode(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
        distinct = key_buckets(encoded.dictionary.to_pylist(), buckets)
        return distinct[encoded.indices.to_numpy(zero_copy_only=False)]
    return np.fromiter((zlib.crc32(i.encode()) % buckets for i in ids), dtype=np.int64, count=len(ids))


def split_by_bucket(table: pa.Table, column: str, buckets: int) -> Iterator[tuple[int, pa.Table]]:
    """(bucket, rows of that bucket) for every bucket present in `table`."""
    if not len(table):
        return
    bucket = key_buckets(table[column], buckets)
    order = np.argsort(bucket, kind="stable")
    edges = np.flatnonzero(np.diff(bucket[order])) + 1
    for rows in np.split(order, edges):
        yield int(bucket[rows[0]]), table.take(pa.array(rows))


# -- validation -----------------------------------------------------------------------------

# A column's expected type: the Arrow type, or a predicate with a description.
TypeCheck = pa.DataType | tuple[Callable[[pa.DataType], bool], str]


@dataclass(frozen=True)
class RowRules:
    """What a usable row of one source looks like.

    Attributes:
      source: the table's name, for dead letters and counters.
      id_column: the row's id (must be a non-null string).
      columns: every column the job reads, with its type; nulls are refused in all but
        the `nullable` ones.
      row_checks: extra checks over the whole batch: each returns a boolean mask of bad
        rows and the reason (e.g. a content embedding of the wrong size).
    """

    source: str
    id_column: str
    columns: dict[str, TypeCheck]
    row_checks: tuple[Callable[[pa.Table], tuple[np.ndarray, str]], ...] = field(default_factory=tuple)
    nullable: frozenset[str] = frozenset()


def _type_ok(actual: pa.DataType, expected: TypeCheck) -> tuple[bool, str]:
    if isinstance(expected, pa.DataType):
        return actual == expected or (pa.types.is_large_string(actual) and expected == pa.string()), str(expected)
    check, description = expected
    return check(actual), description


def validate_rows(table: pa.Table, rules: RowRules) -> tuple[pa.Table, list[DeadLetter]]:
    """Splits a batch into the usable rows and dead letters (first reason found wins).

    A missing column or a column of the wrong type makes every row of the batch a dead
    letter with that reason; nulls and `row_checks` reject single rows.
    """
    n = len(table)
    reasons = np.full(n, None, dtype=object)
    for name, expected in rules.columns.items():
        if name not in table.column_names:
            reasons[:] = f"column {name!r} is missing"
            break
        ok, description = _type_ok(table.schema.field(name).type, expected)
        if not ok:
            reasons[:] = f"column {name!r} has type {table.schema.field(name).type}, expected {description}"
            break
    else:
        for name in (c for c in rules.columns if c not in rules.nullable):
            nulls = np.asarray(pc.is_null(table[name]).to_numpy(zero_copy_only=False), dtype=bool)
            reasons[nulls & (reasons == None)] = f"{name} is missing"  # noqa: E711 (elementwise)
        for check in rules.row_checks:
            unchecked = reasons == None  # noqa: E711
            if not unchecked.any():
                break
            bad, reason = check(table)
            reasons[np.asarray(bad, dtype=bool) & unchecked] = reason
    bad_rows = np.flatnonzero(reasons != None)  # noqa: E711
    if not len(bad_rows):
        return table, []
    ids = table[rules.id_column] if rules.id_column in table.column_names else pa.nulls(n)
    letters = [DeadLetter(rules.source, _id_or_none(ids[r]), str(reasons[r]), _row_json(table, r)) for r in bad_rows]
    good = np.setdiff1d(np.arange(n), bad_rows)
    return table.take(pa.array(good, type=pa.int64())), letters


def _id_or_none(scalar: pa.Scalar) -> str | None:
    value = scalar.as_py()
    return None if value is None else str(value)


def _row_json(table: pa.Table, row: int, limit: int = 2000) -> str:
    values = {name: table[name][row].as_py() for name in table.column_names}
    return json.dumps(values, default=str)[:limit]


def list_size_check(column: str, size: int) -> Callable[[pa.Table], tuple[np.ndarray, str]]:
    """Rows whose list column does not hold exactly `size` finite numbers."""

    def check(table: pa.Table) -> tuple[np.ndarray, str]:
        lengths = pc.list_value_length(table[column]).to_numpy(zero_copy_only=False)
        bad = lengths != size
        flat = pc.list_flatten(table[column]).to_numpy(zero_copy_only=False).astype(np.float64)
        owners = np.repeat(np.arange(len(table)), np.nan_to_num(lengths).astype(np.int64))
        nonfinite = np.zeros(len(table), dtype=bool)
        nonfinite[owners[~np.isfinite(flat)]] = True
        return bad | nonfinite, f"{column} must hold {size} finite numbers"

    return check


def dead_letters_for_vectors(
    ids: np.ndarray, vectors: np.ndarray, dim: int, source: str
) -> tuple[np.ndarray, list[DeadLetter]]:
    """(mask of usable rows, dead letters) for tower outputs: NaN/inf or the wrong size."""
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        width = vectors.shape[1] if vectors.ndim == 2 else vectors.shape
        return np.zeros(len(ids), dtype=bool), [
            DeadLetter(source, str(i), f"embedding has dimension {width}, expected {dim}") for i in ids
        ]
    finite = np.isfinite(vectors).all(axis=1)
    return finite, [DeadLetter(source, str(i), "embedding has NaN or infinite values") for i in ids[~finite]]
