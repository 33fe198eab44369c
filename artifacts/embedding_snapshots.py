"""Embedding snapshots: what the Beam jobs write and the index builder and service read.

A snapshot is a version of `embeddings/users`, `embeddings/stories` or
`embeddings/creators`:

    ROOT/embeddings/<entity>/<snapshot>/part-00000-of-00004.parquet   id: string,
                                                                       embedding: fixed_size_list<float32>[dim]
    ...
    ROOT/embeddings/<entity>/<snapshot>/MANIFEST.json                  written last

Manifest fields the readers rely on:

    parents.model_version   the model whose tower made the vectors (serving only pairs an
                            index with user embeddings of the same model version)
    params.dim              vector dimension (128 with the embedded defaults)
    params.as_of            UTC seconds the features were computed as of
    metrics.count           number of rows over all shards

Vectors are L2-normalised float32 (the towers end in an L2 normalisation), so inner
product is cosine similarity. Ids are unique within a snapshot.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from artifacts.errors import CorruptArtifactError
from artifacts.manifest import Manifest
from artifacts.store import ArtifactKind

ID_COLUMN = "id"
EMBEDDING_COLUMN = "embedding"


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.parquet"


def embedding_table(ids: np.ndarray | list[str], vectors: np.ndarray) -> pa.Table:
    """ids [n] and vectors [n, dim] float32 as the snapshot's Arrow schema."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"vectors must be [{len(ids)}, dim], got {vectors.shape}")
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.table(
        {
            ID_COLUMN: pa.array(list(ids), type=pa.string()),
            EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )


def write_shard(ids: np.ndarray | list[str], vectors: np.ndarray) -> bytes:
    """One Parquet shard of a snapshot, as bytes (vectors are stored uncompressed)."""
    buffer = io.BytesIO()
    pq.write_table(embedding_table(ids, vectors), buffer, compression={ID_COLUMN: "zstd", EMBEDDING_COLUMN: "none"})
    return buffer.getvalue()


def table_to_arrays(table: pa.Table, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n] object array of str, vectors [n, dim] float32) from a snapshot table."""
    if set(table.column_names) < {ID_COLUMN, EMBEDDING_COLUMN}:
        raise CorruptArtifactError(
            f"{where}: columns {table.column_names}, expected {ID_COLUMN!r} and {EMBEDDING_COLUMN!r}"
        )
    ids = np.asarray(table[ID_COLUMN].to_pylist(), dtype=object)
    column = table[EMBEDDING_COLUMN].combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise CorruptArtifactError(
            f"{where}: column {EMBEDDING_COLUMN!r} is {column.type}, expected fixed_size_list<float>"
        )
    dim = column.type.list_size
    vectors = np.asarray(column.flatten(), dtype=np.float32).reshape(len(ids), dim)
    return ids, vectors


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: its arrays have no value equality
class EmbeddingSnapshot:
    """A whole snapshot in memory: ids [n], vectors [n, dim] float32, and its manifest."""

    ids: np.ndarray
    vectors: np.ndarray
    manifest: Manifest

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def model_version(self) -> str:
        return self.manifest.parents.get("model_version", "")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


def _check(ids: np.ndarray, vectors: np.ndarray, manifest: Manifest, where: str) -> None:
    count = manifest.metrics.get("count")
    if count is not None and int(count) != len(ids):
        raise CorruptArtifactError(f"{where}: {len(ids)} rows, manifest says {count}")
    dim = manifest.params.get("dim")
    if dim is not None and len(ids) and int(dim) != vectors.shape[1]:
        raise CorruptArtifactError(f"{where}: vectors of dimension {vectors.shape[1]}, manifest says {dim}")
    if len(np.unique(ids)) != len(ids):
        raise CorruptArtifactError(f"{where}: duplicate ids")


def _concat(parts: list[tuple[np.ndarray, np.ndarray]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, dtype=object), np.zeros((0, dim), np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_snapshot(kind: ArtifactKind, version: str | None = None) -> EmbeddingSnapshot:
    """Reads a complete snapshot (default: the one LATEST names), checking every shard.

    Raises UnknownVersionError / IncompleteVersionError for a missing or unfinished
    snapshot and CorruptArtifactError when a shard does not match the manifest.
    """
    version = version or kind.latest()
    if version is None:
        raise CorruptArtifactError(f"{kind.name} has no published snapshot (LATEST is missing)")
    manifest = kind.manifest(version)
    where = f"{kind.store.uri}/{kind.name}/{version}"
    parts = []
    for name in sorted(n for n in manifest.files if n.endswith(".parquet")):
        data = kind.read_file(version, name)  # size and sha256 checked
        parts.append(table_to_arrays(pq.read_table(io.BytesIO(data)), f"{where}/{name}"))
    ids, vectors = _concat(parts, int(manifest.params.get("dim", 0)))
    _check(ids, vectors, manifest, where)
    return EmbeddingSnapshot(ids, vectors, manifest)


def read_local_snapshot(directory: Path) -> EmbeddingSnapshot:
    """Reads a snapshot already downloaded (and verified) by `ArtifactKind.download`."""
    directory = Path(directory)
    manifest = Manifest.from_json((directory / "MANIFEST.json").read_bytes(), str(directory))
    parts = [
        table_to_arrays(pq.read_table(directory / name), str(directory / name))
        for name in sorted(n for n in manifest.files if n.endswith(".parquet"))
    ]
    ids, vectors = _concat(parts, int(manifest.params.get("dim", 0)))
    _check(ids, vectors, manifest, str(directory))
    return EmbeddingSnapshot(ids, vectors, manifest)


def publish_snapshot(
    kind: ArtifactKind,
    version: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    model_version: str,
    as_of: int,
    shards: int = 1,
    parents: dict[str, str] | None = None,
    params: dict | None = None,
    metrics: dict | None = None,
    reason: str,
    run_id: str | None = None,
):
    """Writes a snapshot from arrays in memory and moves LATEST (for tests, tools and
    benchmarks; the Beam jobs write their shards from the workers)."""
    if not kind.is_complete(version):
        bounds = np.linspace(0, len(ids), shards + 1).astype(int)
        with kind.new_version(
            version,
            parents={"model_version": model_version, **(parents or {})},
            params={"dim": int(vectors.shape[1]), "as_of": int(as_of), **(params or {})},
        ) as writer:
            for i in range(shards):
                writer.add_bytes(
                    shard_name(i, shards),
                    write_shard(ids[bounds[i] : bounds[i + 1]], vectors[bounds[i] : bounds[i + 1]]),
                )
            writer.metrics.update({"count": int(len(ids)), **(metrics or {})})
    return kind.publish(version, reason=reason, run_id=run_id)
