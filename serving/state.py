"""What the service answers from: one frozen `ServedState` holding a consistent set.

A state holds the story index, the user embeddings and the optional creator and user
indexes, all made by one model version. Request handlers read the service's state
reference once and use only that object, so a request that started before a swap ends
on the state it started with, and no answer ever mixes two versions. The reloader builds
a new state beside the old one and swaps the single reference; the old state is freed by
reference counting when its last request finishes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import numpy as np

from artifacts import COLLECTIONS as COLLECTIONS  # re-exported: app, router and shard server read it here
from artifacts import INDEX_KINDS, STORY_INDEX, USER_EMBEDDINGS, CorruptArtifactError
from artifacts.embedding_snapshots import EmbeddingSnapshot, read_local_snapshot
from index_builder.loaded_index import LoadedIndex
from serving.searcher import IndexProcess

# Kinds the service reads (named in artifacts.kinds). The story index and the user
# embeddings are required (they make the consistent pair); the other two indexes are
# served when published.
OPTIONAL_INDEXES = {c: kind for c, kind in INDEX_KINDS.items() if kind != STORY_INDEX}


class InconsistentVersionsError(CorruptArtifactError):
    """Loaded parts disagree (dimension or model version): the set is refused."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, eq=False)
class UserEmbeddings(EmbeddingSnapshot):
    """A user embedding snapshot in memory, looked up by user id.

    vectors: [n, dim] float32, L2-normalised, read-only; row_of maps a user id to its row.
    """

    row_of: Mapping[str, int]

    @property
    def count(self) -> int:
        return len(self.vectors)

    @property
    def memory_bytes(self) -> int:
        # The vectors plus a rough 100 bytes per dict entry and id string.
        return int(self.vectors.nbytes + 100 * len(self.row_of))

    def vector(self, user_id: str) -> np.ndarray | None:
        """[dim] float32, or None for an unknown user."""
        row = self.row_of.get(user_id)
        return None if row is None else self.vectors[row]


def load_user_embeddings(directory: Path) -> UserEmbeddings:
    """Reads a downloaded (checksum-verified) snapshot and checks what the checksum cannot.

    Raises CorruptArtifactError when a vector has NaN/inf or the snapshot is empty, so a
    bad snapshot is refused before it can be served.
    """
    snapshot = read_local_snapshot(directory)
    where = f"embeddings/users/{snapshot.manifest.version}"
    if not len(snapshot):
        raise CorruptArtifactError(f"{where} is empty: no user could be looked up")
    if not np.isfinite(snapshot.vectors).all():
        bad = int((~np.isfinite(snapshot.vectors).all(axis=1)).sum())
        raise CorruptArtifactError(f"{where}: {bad} vectors contain NaN or inf; re-run the user dataflow")
    vectors = np.ascontiguousarray(snapshot.vectors, dtype=np.float32)
    vectors.setflags(write=False)  # shared by concurrent requests; nobody may change it
    row_of = {str(user_id): row for row, user_id in enumerate(snapshot.ids)}
    return UserEmbeddings(snapshot.ids, vectors, snapshot.manifest, MappingProxyType(row_of))


@dataclass(frozen=True, eq=False)
class Component:
    """One served part and since when (UTC ISO time of the swap that brought it in)."""

    kind: str
    version: str
    model_version: str
    served_since: str
    value: LoadedIndex | IndexProcess | UserEmbeddings

    @property
    def count(self) -> int:
        return int(self.value.count)

    @property
    def memory_bytes(self) -> int:
        return int(self.value.memory_bytes)

    def describe(self) -> dict:
        out = {
            "version": self.version,
            "model_version": self.model_version,
            "served_since": self.served_since,
            "count": self.count,
            "dim": int(self.value.dim),
            "memory_bytes": self.memory_bytes,
        }
        if not isinstance(self.value, UserEmbeddings):
            out["ef"] = int(self.value.ef)
        if isinstance(self.value, IndexProcess):
            out["searcher_pid"] = self.value.pid
            out["searcher_rss_bytes"] = self.value.process_rss_bytes
        return out


@dataclass(frozen=True, eq=False)
class ServedState:
    """A consistent set: every component comes from one model version and has one dimension.

    Immutable; `components` maps a kind ("indexes/stories", "embeddings/users",
    optionally "indexes/creators", "indexes/users") to its component.
    """

    generation: int
    components: Mapping[str, Component]
    since: str
    since_monotonic: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        check_consistent(self.components)

    @property
    def model_version(self) -> str:
        return self.components[STORY_INDEX].model_version

    @property
    def dim(self) -> int:
        return int(self.stories.dim)

    @property
    def stories(self) -> LoadedIndex:
        return self.components[STORY_INDEX].value  # type: ignore[return-value]

    @property
    def users(self) -> UserEmbeddings:
        return self.components[USER_EMBEDDINGS].value  # type: ignore[return-value]

    def index(self, collection: str) -> LoadedIndex | IndexProcess | None:
        component = self.components.get(INDEX_KINDS[collection])
        return None if component is None else component.value  # type: ignore[return-value]

    def versions(self) -> dict[str, str]:
        """kind -> version, for comparing with the LATEST pointers."""
        return {kind: c.version for kind, c in self.components.items()}

    def describe(self) -> dict:
        return {
            "generation": self.generation,
            "model_version": self.model_version,
            "dim": self.dim,
            "since": self.since,
            "components": {kind: c.describe() for kind, c in sorted(self.components.items())},
        }


def check_consistent(components: Mapping[str, Component]) -> None:
    """Raises InconsistentVersionsError unless the set may be served together."""
    for required in (STORY_INDEX, USER_EMBEDDINGS):
        if required not in components:
            raise InconsistentVersionsError(f"a served set needs {required}; it is missing")
    models = {kind: c.model_version for kind, c in components.items()}
    if len(set(models.values())) != 1:
        raise InconsistentVersionsError(f"components come from different model versions: {models}")
    dims = {kind: int(c.value.dim) for kind, c in components.items()}
    if len(set(dims.values())) != 1:
        raise InconsistentVersionsError(f"components have different dimensions: {dims}")
