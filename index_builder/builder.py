"""From an embedding snapshot to a validated graph: full builds and incremental updates.

An incremental build starts from the previous published version (same model version,
same HNSW parameters) and touches only what changed:

  * expired items (in the previous index, not in the snapshot) are `mark_deleted`: they
    vanish from answers at once; their slots stay in the graph as stepping stones;
  * items whose vector changed are deleted the same way and inserted again under a
    fresh label, like new items (see below for why not an in-place update);
  * new items get fresh labels and are inserted normally, which links them both ways
    to their neighbours. With `index.reuse_deleted_slots` they take over deleted slots
    instead (`replace_deleted=True`), which bounds memory but rewires the reused slot in
    place (nmslib/hnswlib#522): a few new items are then not found by their own vector
    (tests/test_index_incremental.py: 2 of 400 in their own top 10 at ef 64; none with
    fresh labels). hnswlib updates a moved item's vector in place the same way, which is
    why moved items take fresh labels too.

Labels are never reused: row i of `ids.parquet` stays label i, and dead labels are null
rows. `deleted_fraction` (dead labels over all labels: the deleted slots, or with slot
reuse the churn since the last full build) decides when to fall back to a full build
(`index.max_deleted_fraction`), as does a model change, a change of M or
ef_construction, or more than `index.max_changed_fraction` of items new, expired or
moved (an insertion costs the same either way, so past that a full build is as cheap
and yields a clean graph).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from artifacts.embedding_snapshots import EmbeddingSnapshot
from artifacts.manifest import Manifest
from config import IndexConfig
from index_builder import hnsw
from index_builder.loaded_index import read_level0


@dataclass
class BuiltIndex:
    """A graph that holds a snapshot, before validation and publishing.

    Attributes:
      graph: the hnswlib.Index.
      labels_to_ids: [labels] object array (row i = label i), None for dead labels.
      row_labels: [n] label of each snapshot row.
      mode: "full" or "incremental".
      build_seconds: time spent inserting/updating/deleting in the graph.
      touched: items inserted, updated or deleted (for vectors/second).
      stats: figures for the manifest (added, deleted, updated, deleted_fraction, ...).
      detail: one line saying what was done and why.
      previous: the version an incremental build started from.
    """

    graph: Any
    labels_to_ids: np.ndarray
    row_labels: np.ndarray
    mode: str
    build_seconds: float
    touched: int
    stats: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    previous: str | None = None


@dataclass
class PreviousIndex:
    """The published version an incremental build starts from, loaded for writing.

    Attributes:
      manifest: its manifest.
      graph: hnswlib.Index loaded with allow_replace_deleted=True (updated in place).
      labels_to_ids: [labels] object array, None for dead labels.
      index_file: the saved index it was loaded from; when given, stored vectors are read
        from it by memory map instead of hnswlib's slow `get_items`.
    """

    manifest: Manifest
    graph: Any
    labels_to_ids: np.ndarray
    index_file: Path | None = None

    @property
    def version(self) -> str:
        return self.manifest.version

    def stored_vector_chunks(self, labels: np.ndarray, chunk: int):
        """The vectors stored under live `labels`, `chunk` labels at a time, in order.

        From the saved file by memory map when there is one (see `read_level0`); a run of
        consecutive slots is read as a slice, not gathered row by row.
        """
        if self.index_file is None:
            for start in range(0, len(labels), chunk):
                yield np.asarray(
                    self.graph.get_items(labels[start : start + chunk], return_type="numpy"), dtype=np.float32
                )
            return
        slot_labels, vectors = read_level0(self.index_file)
        slot_of = np.full(len(self.labels_to_ids), -1, dtype=np.int64)
        slot_of[slot_labels] = np.arange(len(slot_labels))
        for start in range(0, len(labels), chunk):
            yield _rows(vectors, slot_of[labels[start : start + chunk]])


def _rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows], as a slice when `rows` are consecutive (no gather, no copy)."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (len(rows) == 1 or np.all(np.diff(rows) == 1)):
        return array[rows[0] : rows[-1] + 1]
    return array[rows]


# Rows compared at a time when diffing stored vectors: bounds the temporaries (64 MiB).
_DIFF_CHUNK = 1 << 17


def build_full(snapshot: EmbeddingSnapshot, cfg: IndexConfig, *, reason: str = "") -> BuiltIndex:
    """Builds a fresh graph of every snapshot row (label i = row i)."""
    started = time.perf_counter()
    graph = hnsw.build_graph(snapshot.vectors, m=cfg.m, ef_construction=cfg.ef_construction, threads=cfg.threads)
    seconds = time.perf_counter() - started
    n = len(snapshot)
    return BuiltIndex(
        graph=graph,
        labels_to_ids=np.asarray(snapshot.ids, dtype=object).copy(),
        row_labels=np.arange(n),
        mode="full",
        build_seconds=seconds,
        touched=n,
        stats={"added": n, "deleted": 0, "updated": 0, "deleted_fraction": 0.0, "deleted_slots": 0, "labels": n},
        detail=f"full build of {n} items" + (f" ({reason})" if reason else ""),
    )


@dataclass(frozen=True)
class UpdatePlan:
    """What an incremental build changes, worked out before touching the graph.

    Attributes:
      add_rows: [a] snapshot rows to insert under fresh labels: new items, then moved ones.
      delete_labels: [d] labels to mark deleted: expired items, then moved ones' old labels.
      new: how many of `add_rows` are new items (the rest moved).
      moved: how many items have a new vector.
      row_labels: [n] label of each snapshot row afterwards.
      labels_after: size of the label space afterwards.
      deleted_fraction: dead labels / labels afterwards.
      changed_fraction: (new + expired + moved) / n.
    """

    add_rows: np.ndarray
    delete_labels: np.ndarray
    new: int
    moved: int
    row_labels: np.ndarray
    labels_after: int
    deleted_fraction: float
    changed_fraction: float


def plan_update(previous: PreviousIndex, snapshot: EmbeddingSnapshot) -> UpdatePlan:
    """Diffs the previous index against the snapshot: ids by hash join, then stored vectors.

    An id in both whose vector changed is "moved": deleted under its old label and added
    under a new one, like an expired item plus a new one.
    """
    old_ids = pa.array(previous.labels_to_ids, type=pa.string())  # None: dead labels
    new_ids = pa.array(snapshot.ids, type=pa.string())
    labels = pc.fill_null(pc.index_in(new_ids, value_set=old_ids), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    kept_rows = np.flatnonzero(labels >= 0)
    add_rows = np.flatnonzero(labels < 0)
    live_and_gone = pc.and_(pc.is_valid(old_ids), pc.invert(pc.is_in(old_ids, value_set=new_ids)))
    delete_labels = np.flatnonzero(live_and_gone.to_numpy(zero_copy_only=False)).astype(np.int64)

    changed = np.zeros(len(kept_rows), dtype=bool)
    stored = previous.stored_vector_chunks(labels[kept_rows], _DIFF_CHUNK)
    for start, old in zip(range(0, len(kept_rows), _DIFF_CHUNK), stored, strict=True):
        new = _rows(snapshot.vectors, kept_rows[start : start + _DIFF_CHUNK])
        changed[start : start + len(old)] = np.any(old != new, axis=1)
    moved_rows = kept_rows[changed]
    expired = len(delete_labels)
    delete_labels = np.concatenate([delete_labels, labels[moved_rows]])

    add_rows = np.concatenate([add_rows, moved_rows])
    labels[add_rows] = len(old_ids) + np.arange(len(add_rows))
    labels_after = len(old_ids) + len(add_rows)
    dead_after = labels_after - len(snapshot)
    return UpdatePlan(
        add_rows=add_rows,
        delete_labels=delete_labels,
        new=len(add_rows) - len(moved_rows),
        moved=len(moved_rows),
        row_labels=labels,
        labels_after=labels_after,
        deleted_fraction=dead_after / labels_after if labels_after else 0.0,
        changed_fraction=(len(add_rows) + expired) / max(len(snapshot), 1),
    )


def full_build_reason(previous: Manifest | None, snapshot: EmbeddingSnapshot, cfg: IndexConfig) -> str | None:
    """Why an incremental build from the `previous` index version is not possible, or None.

    Decided from the manifest alone, before the previous index is downloaded.
    """
    if previous is None:
        return "no previous index"
    params, parents = previous.params, previous.parents
    if parents.get("model_version") != snapshot.model_version:
        return f"model changed from {parents.get('model_version')} to {snapshot.model_version}"
    if int(params.get("shards", 1)) != cfg.shards:
        return f"shard count changed from {params.get('shards', 1)} to index.shards={cfg.shards}"
    if int(params.get("dim", -1)) != snapshot.dim:
        return f"dimension changed from {params.get('dim')} to {snapshot.dim}"
    if (int(params.get("M", -1)), int(params.get("ef_construction", -1))) != (cfg.m, cfg.ef_construction):
        return (
            f"HNSW parameters changed from M={params.get('M')}, ef_construction={params.get('ef_construction')} "
            f"to M={cfg.m}, ef_construction={cfg.ef_construction}"
        )
    return None


def plan_refusal(plan: UpdatePlan, cfg: IndexConfig) -> str | None:
    """Why a planned update should be a full build instead, or None."""
    if plan.changed_fraction > cfg.max_changed_fraction:
        return (
            f"{plan.changed_fraction:.1%} of items are new, expired or moved, more than "
            f"index.max_changed_fraction={cfg.max_changed_fraction}"
        )
    if plan.deleted_fraction > cfg.max_deleted_fraction:
        return (
            f"deleted share {plan.deleted_fraction:.3f} would pass index.max_deleted_fraction="
            f"{cfg.max_deleted_fraction}"
        )
    return None


def apply_update(
    previous: PreviousIndex, snapshot: EmbeddingSnapshot, plan: UpdatePlan, cfg: IndexConfig
) -> BuiltIndex:
    """Applies `plan` to the previous graph in place and returns it as the new index."""
    graph = previous.graph
    threads = hnsw.build_threads(cfg.threads)
    started = time.perf_counter()
    for label in plan.delete_labels:
        graph.mark_deleted(int(label))
    if len(plan.add_rows):
        reuse = cfg.reuse_deleted_slots
        free_slots = graph.element_count - (len(snapshot) - len(plan.add_rows)) if reuse else 0
        needed = graph.element_count + max(0, len(plan.add_rows) - free_slots)
        if needed > graph.max_elements:
            graph.resize_index(needed)
        graph.add_items(
            snapshot.vectors[plan.add_rows], plan.row_labels[plan.add_rows], num_threads=threads, replace_deleted=reuse
        )
    if graph.max_elements > graph.element_count:
        graph.resize_index(graph.element_count)  # serve without spare capacity
    seconds = time.perf_counter() - started

    labels_to_ids = np.empty(plan.labels_after, dtype=object)
    labels_to_ids[: len(previous.labels_to_ids)] = previous.labels_to_ids
    labels_to_ids[plan.delete_labels] = None
    labels_to_ids[plan.row_labels[plan.add_rows]] = snapshot.ids[plan.add_rows]
    expired = len(plan.delete_labels) - plan.moved
    return BuiltIndex(
        graph=graph,
        labels_to_ids=labels_to_ids,
        row_labels=plan.row_labels,
        mode="incremental",
        build_seconds=seconds,
        touched=len(plan.add_rows) + len(plan.delete_labels),
        stats={
            "added": plan.new,
            "deleted": expired,
            "updated": plan.moved,
            "deleted_fraction": round(plan.deleted_fraction, 6),
            "deleted_slots": int(graph.element_count - len(snapshot)),
            "labels": plan.labels_after,
            "reuse_deleted_slots": cfg.reuse_deleted_slots,
        },
        detail=(
            f"incremental from {previous.version}: {plan.new} added, {expired} deleted, {plan.moved} moved"
            + (" (deleted slots reused)" if cfg.reuse_deleted_slots else "")
        ),
        previous=previous.version,
    )
