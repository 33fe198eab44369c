"""Reading the raw files of real data sets, with errors that name the file and the problem."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


class SourceFileError(ValueError):
    """A raw input file is missing or malformed; the message names it and says what is wrong."""


def require_file(directory: Path, name: str, what: str) -> Path:
    path = Path(directory) / name
    if not path.is_file():
        raise SourceFileError(f"{what}: {path} is missing (expected in {directory})")
    return path


def require_glob(directory: Path, pattern: str, what: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(str(Path(directory) / pattern)))
    if not paths:
        raise SourceFileError(f"{what}: no file matches {Path(directory) / pattern}")
    return paths


def read_delimited(
    path: Path,
    columns: list[str],
    *,
    delimiter: str,
    header: bool,
    types: dict[str, pa.DataType] | None = None,
    encoding: str = "utf8",
) -> pa.Table:
    """Reads a delimited text file into a table with `columns`, or says why it cannot.

    With `header=False` the file must have exactly len(columns) fields per line; with
    `header=True` it must have at least `columns` (extra columns are kept).
    """
    read_options = pacsv.ReadOptions(column_names=None if header else columns, encoding=encoding, block_size=64 << 20)
    convert_options = pacsv.ConvertOptions(column_types=types or {}, strings_can_be_null=False)
    try:
        if len(delimiter) == 1:
            parse_options = pacsv.ParseOptions(delimiter=delimiter, quote_char=False if not header else '"')
            table = pacsv.read_csv(path, read_options, parse_options, convert_options)
        else:  # multi-character separators ("::" in MovieLens 1M): split in Python
            table = _read_multichar(path, columns, delimiter, encoding, types or {})
    except (pa.ArrowInvalid, UnicodeDecodeError, ValueError) as err:
        raise SourceFileError(f"{path} is malformed: {err}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise SourceFileError(f"{path} lacks column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}")
    return table


def _read_multichar(path, columns, delimiter, encoding, types) -> pa.Table:
    rows = []
    with open(path, encoding=encoding) as f:
        for line_number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(delimiter)
            if len(fields) != len(columns):
                raise ValueError(
                    f"line {line_number} has {len(fields)} fields separated by {delimiter!r}, "
                    f"expected {len(columns)} ({', '.join(columns)})"
                )
            rows.append(fields)
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    for name, dtype in types.items():
        table = table.set_column(table.column_names.index(name), name, table[name].cast(dtype))
    return table


def min_by_key(keys: np.ndarray, values: np.ndarray) -> dict[int, int]:
    """The smallest value per key (e.g. each user's first event time)."""
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    first = np.concatenate([[True], keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, bool)
    return dict(zip(keys[first].tolist(), values[first].tolist(), strict=True))
