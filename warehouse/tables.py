"""Reading and writing the warehouse: Parquet tables under `ROOT/warehouse/`.

    warehouse/users/part-00000.parquet
    warehouse/stories/part-00000.parquet
    warehouse/creators/part-00000.parquet
    warehouse/events/dt=YYYY-MM-DD/part-00000.parquet   one partition per UTC day
    warehouse/_SOURCE.json                              what wrote it (generator, converter)
    warehouse/_truth/...                                synthetic worlds only: the oracle

The same code reads a local directory or `gs://` (through the artifact store's backends),
and every table is validated against `warehouse.schema` on the way in and out.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from artifacts.backend import Backend, open_backend
from warehouse.schema import KEYS, TABLES, WarehouseSchemaError, validate_table

if TYPE_CHECKING:
    from config import EbrConfig

_DAY_PARTITION = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
SECONDS_PER_DAY = 86_400


class WarehouseMissingError(FileNotFoundError):
    """A table or the whole warehouse has not been written yet."""


def day_of(ts: int) -> date:
    return datetime.fromtimestamp(ts, UTC).date()


def day_start_ts(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


class Warehouse:
    def __init__(self, backend: Backend, prefix: str = "warehouse"):
        self.backend = backend
        self.prefix = prefix

    @classmethod
    def from_config(cls, cfg: EbrConfig) -> Warehouse:
        return cls(open_backend(cfg.root, cfg.gcs, lock_timeout_s=cfg.store.lock_timeout_s))

    @classmethod
    def open(cls, root_uri: str) -> Warehouse:
        return cls(open_backend(root_uri))

    @property
    def uri(self) -> str:
        return f"{self.backend.uri}/{self.prefix}"

    def _key(self, *parts: str) -> str:
        return self.backend.join(self.prefix, *parts)

    # -- writing ------------------------------------------------------------------------

    def write_table(self, table: str, data: pa.Table) -> None:
        """Writes users, stories or creators whole (validated first)."""
        if table not in KEYS:
            raise WarehouseSchemaError(f"write_table takes one of {', '.join(KEYS)}, not {table!r}")
        data = validate_table(table, data, f"{table} (being written)")
        self._write_parquet(self._key(table, "part-00000.parquet"), data)

    def write_events(self, events: pa.Table) -> list[date]:
        """Writes events into one partition per UTC day; returns the days written.

        A day's partition is replaced whole, so writing the same day again is idempotent.
        """
        events = validate_table("events", events, "events (being written)")
        days = pc.floor(pc.divide(pc.cast(events["ts"], pa.float64()), SECONDS_PER_DAY))
        written = []
        for day_number in sorted(set(pc.unique(days).to_pylist())):
            day = date(1970, 1, 1) + timedelta(days=int(day_number))
            part = events.filter(pc.equal(days, day_number))
            part = part.take(pc.sort_indices(part, [("ts", "ascending"), ("user_id", "ascending")]))
            self._write_parquet(self._key("events", f"dt={day.isoformat()}", "part-00000.parquet"), part)
            written.append(day)
        return written

    def write_json(self, name: str, body: dict[str, Any]) -> None:
        self.backend.write_bytes(self._key(name), (json.dumps(body, indent=2, default=str) + "\n").encode())

    def write_parquet(self, name: str, data: pa.Table) -> None:
        """An unvalidated side table (e.g. `_truth/users.parquet`)."""
        self._write_parquet(self._key(name), data)

    def clear(self) -> int:
        """Deletes the whole warehouse; returns the number of objects removed."""
        objects = list(self.backend.list_objects(self.prefix))
        for obj in objects:
            self.backend.delete(obj.key)
        return len(objects)

    def _write_parquet(self, key: str, data: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(data, buffer, compression="zstd", row_group_size=256 * 1024)
        self.backend.write_bytes(key, buffer.getvalue())

    # -- reading ------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.backend.exists(self._key("users", "part-00000.parquet"))

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table:
        """users, stories or creators, validated (only `columns` when given)."""
        if table not in KEYS:
            raise WarehouseSchemaError(f"read_table takes one of {', '.join(KEYS)}, not {table!r}")
        key = self._key(table, "part-00000.parquet")
        data = self._read_parquet(key)
        data = validate_table(table, data, f"{self.backend.uri}/{key}")
        return data.select(columns) if columns else data

    def event_days(self) -> list[date]:
        """The days that have an event partition (listed, not read)."""
        days = []
        for name in self.backend.list_children(self._key("events")):
            match = _DAY_PARTITION.match(name)
            if match:
                try:
                    days.append(date.fromisoformat(match.group(1)))
                except ValueError as err:
                    raise WarehouseSchemaError(
                        f"{self.uri}/events/{name} is not a day partition: {err}; "
                        "rename or remove it (partitions are dt=YYYY-MM-DD, UTC days)"
                    ) from None
        return sorted(days)

    def event_files(self, start: date | None = None, end: date | None = None) -> list[str]:
        """URIs of the event partitions with start <= day < end (for Beam's ParquetIO)."""
        return [f"{self.uri}/events/dt={day.isoformat()}/part-00000.parquet" for day in self._days_between(start, end)]

    def iter_events(
        self, start: date | None = None, end: date | None = None, columns: list[str] | None = None
    ) -> Iterator[tuple[date, pa.Table]]:
        """Events one day at a time (start <= day < end), validated: for streaming readers."""
        for day in self._days_between(start, end):
            key = self._key("events", f"dt={day.isoformat()}", "part-00000.parquet")
            data = validate_table("events", self._read_parquet(key), f"{self.backend.uri}/{key}")
            yield day, (data.select(columns) if columns else data)

    def read_events(
        self, start: date | None = None, end: date | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        parts = [t for _, t in self.iter_events(start, end, columns)]
        if not parts:
            raise WarehouseMissingError(f"no event partitions in {self.uri}/events between {start} and {end}")
        return pa.concat_tables(parts)

    def read_json(self, name: str) -> dict[str, Any]:
        return json.loads(self._read_bytes(self._key(name)))

    def read_parquet(self, name: str) -> pa.Table:
        return self._read_parquet(self._key(name))

    def summary(self) -> dict[str, Any]:
        """Row counts, event days and the source description: what `ebr data show` prints."""
        days = self.event_days()
        counts = {}
        for table in KEYS:
            counts[table] = self._checked_metadata(table, self._key(table, "part-00000.parquet")).num_rows
        counts["events"] = sum(
            self._checked_metadata("events", self._key("events", f"dt={d.isoformat()}", "part-00000.parquet")).num_rows
            for d in days
        )
        try:
            source = self.read_json("_SOURCE.json")
        except FileNotFoundError:
            source = {}
        return {
            "uri": self.uri,
            "rows": counts,
            "first_day": days[0].isoformat() if days else None,
            "last_day": days[-1].isoformat() if days else None,
            "days": len(days),
            "source": source,
        }

    def _days_between(self, start: date | None, end: date | None) -> list[date]:
        return [d for d in self.event_days() if (start is None or d >= start) and (end is None or d < end)]

    def _read_bytes(self, key: str) -> bytes:
        try:
            return self.backend.read_bytes(key)
        except FileNotFoundError:
            raise WarehouseMissingError(
                f"{self.backend.uri}/{key} does not exist; write the warehouse first "
                "(ebr data generate, or ebr data convert movielens|kuairand)"
            ) from None

    def _read_parquet(self, key: str) -> pa.Table:
        return self._parse_parquet(key, pq.read_table)

    def _checked_metadata(self, table: str, key: str) -> pq.FileMetaData:
        """The footer of one table's file, its schema checked (the rows are not read)."""
        metadata = self._parse_parquet(key, pq.read_metadata)
        check_parquet_schema(table, metadata, f"{self.backend.uri}/{key}")
        return metadata

    def _parse_parquet(self, key: str, reader):
        # Local files are read in place (memory-mapped); remote ones through the backend.
        path = self.backend.local_path(key)
        source = path if path is not None and path.is_file() else pa.BufferReader(self._read_bytes(key))
        return parse_parquet(source, reader, f"{self.backend.uri}/{key}")


def parse_parquet(source, reader, where: str):
    """`reader(source)` (e.g. `pq.read_table`), or a `WarehouseSchemaError` naming `where`.

    A truncated file or random bytes fail on the footer (ArrowInvalid); pages that do
    not decode fail as OSError. Either way the message says which file.
    """
    try:
        return reader(source)
    except (pa.ArrowException, OSError) as err:
        problem = " ".join(str(err).split())  # pyarrow's messages span lines
        raise WarehouseSchemaError(
            f"{where} is not a readable Parquet file: {problem}; rewrite it (ebr data generate "
            "--overwrite, or ebr data convert ... --overwrite) or restore it from a copy"
        ) from None


def check_parquet_schema(table: str, metadata: pq.FileMetaData, where: str) -> None:
    """Checks a file's footer against `table`'s schema (columns present, types readable)
    without reading a row; raises `WarehouseSchemaError` naming `where`."""
    validate_table(table, metadata.schema.to_arrow_schema().empty_table(), where)


__all__ = [
    "TABLES",
    "Warehouse",
    "WarehouseMissingError",
    "check_parquet_schema",
    "day_of",
    "day_start_ts",
    "parse_parquet",
]
