"""The jobs' input files: each footer checked before the pipeline starts and on the workers.

A damaged warehouse file (truncated, random bytes, the wrong schema) would otherwise
fail deep inside Beam's Parquet source with pyarrow's message and no file name, or, for
a column of the wrong type, quietly dead-letter every row of it. The checks read the
footer only (a few KiB at the end of the file, through Beam's file systems, so gs://
reads a range), and fail with the warehouse's own error: the file and what is wrong.
"""

from __future__ import annotations

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from warehouse import WarehouseMissingError
from warehouse.tables import check_parquet_schema, parse_parquet


def check_input_file(path: str, table: str) -> str:
    """Returns `path` if it is a readable Parquet file of warehouse `table`.

    Raises:
      WarehouseMissingError: the file does not exist.
      WarehouseSchemaError: it is not Parquet (truncated, random bytes) or its schema is
        not the table's (a column missing, or of a type the table cannot hold).
    """
    try:
        with FileSystems.open(
            path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
        ) as f:
            metadata = parse_parquet(f, pq.read_metadata, path)
    except FileNotFoundError:
        raise WarehouseMissingError(
            f"{path} does not exist; write the warehouse first (ebr data generate, or ebr data convert movielens|kuairand)"
        ) from None
    check_parquet_schema(table, metadata, path)
    return path


def check_input_files(files: dict[str, list[str]]) -> None:
    """Checks every input of a run (`JobPlan.files`: warehouse table -> paths)."""
    for table, paths in files.items():
        for path in paths:
            check_input_file(path, table)
