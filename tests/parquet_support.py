"""Damaging a Parquet file the ways a warehouse file gets damaged, for the reader tests."""

import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DAMAGES = ["truncated", "random bytes", "corrupt pages", "wrong schema"]


def damage_parquet(path: Path, how: str) -> str:
    """Damages a Parquet file in place; returns (a regex of) what readers must say is wrong.

    "truncated" keeps the first half (the footer is lost), "random bytes" replaces it,
    "corrupt pages" inverts every byte before the footer (which stays readable), and
    "wrong schema" rewrites it with its first column as int64.
    """
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif how == "corrupt pages":
        footer = struct.unpack("<I", data[-8:-4])[0]  # ... footer, its length (4 bytes), PAR1
        body = bytes(b ^ 0xFF for b in data[4 : len(data) - 8 - footer])
        path.write_bytes(data[:4] + body + data[len(data) - 8 - footer :])
    else:
        table = pq.read_table(path)
        first = table.column_names[0]
        pq.write_table(table.set_column(0, first, pa.array(range(len(table)), pa.int64())), path)
        return rf"column '{first}'.*: type int64, expected string"
    return "is not a readable Parquet file"
