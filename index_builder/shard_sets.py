"""Building, validating and writing a shard set (`index.shards = S > 1`).

    snapshot ──split by crc32(id) % S──► S sub-snapshots ──► S graphs (full, or incremental
    from the same shard of the previous set) ──► recall@10 of the MERGED answer against
    exact search over the whole snapshot ──► one version: every shard's files in one manifest

The recall gate is the one users see: the router asks every shard for k and keeps the k
best, so the set is validated exactly that way, with one ef for every shard (found as for
an unsharded build: `validation.smallest_passing_ef`). A shard is updated incrementally under the
same rules as an unsharded index (`builder`), each shard deciding on its own; if the merged
answer of a set with incremental shards fails the gate, those shards are rebuilt from
scratch before the set is refused. The layout and the hash are in `sharding`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifacts import ArtifactKind, Manifest
from artifacts.embedding_snapshots import EmbeddingSnapshot
from artifacts.errors import ArtifactError
from config import IndexConfig
from index_builder import hnsw, validation
from index_builder.builder import (
    BuiltIndex,
    PreviousIndex,
    apply_update,
    build_full,
    full_build_reason,
    plan_refusal,
    plan_update,
)
from index_builder.errors import IndexValidationError
from index_builder.loaded_index import IDS_FILE, INDEX_FILE, SPACE, knn_padded, read_header, read_ids, write_ids
from index_builder.sharding import SHARD_HASH, download_shard, shard_file, shard_rows

log = logging.getLogger(__name__)


@dataclass
class BuiltShardSet:
    """S built graphs and where each shard's rows sit in the whole snapshot.

    Attributes:
      shards: [S] BuiltIndex, one per shard.
      rows: [S] arrays: snapshot row of each of the shard's rows.
      reasons: why each shard was built in full ("" for an incremental one).
    """

    shards: list[BuiltIndex]
    rows: list[np.ndarray]
    reasons: list[str]

    @property
    def mode(self) -> str:
        modes = {b.mode for b in self.shards}
        return modes.pop() if len(modes) == 1 else "mixed"

    @property
    def previous(self) -> str | None:
        return next((b.previous for b in self.shards if b.previous), None)

    @property
    def detail(self) -> str:
        parts = [f"shard {i}: {b.detail}" for i, b in enumerate(self.shards)]
        return f"set of {len(self.shards)} shards by {SHARD_HASH}(id) % {len(self.shards)} (" + "; ".join(parts) + ")"


def split_rows(snapshot: EmbeddingSnapshot, shards: int) -> tuple[list[EmbeddingSnapshot], list[np.ndarray]]:
    """The sub-snapshot of each shard and its rows in the whole snapshot.

    Raises:
      IndexValidationError: a shard would hold no item (fewer items than shards, or ids that
        all hash alike): lower index.shards.
    """
    which = shard_rows(snapshot.ids, shards)
    parts, rows = [], []
    for shard in range(shards):
        own = np.flatnonzero(which == shard)
        if not len(own):
            raise IndexValidationError(
                f"{validation.snapshot_where(snapshot)}: shard {shard} of index.shards={shards} would hold no item "
                f"({len(snapshot)} items in all); lower index.shards"
            )
        parts.append(
            EmbeddingSnapshot(snapshot.ids[own], np.ascontiguousarray(snapshot.vectors[own]), snapshot.manifest)
        )
        rows.append(own)
    return parts, rows


def build_shard_set(
    kind: ArtifactKind, snapshot: EmbeddingSnapshot, cfg: IndexConfig, *, full: bool, workdir: Path, probe=None
) -> tuple[BuiltShardSet, validation.RecallCheck]:
    """Builds every shard (incremental where possible) and validates the merged answer.

    Raises:
      IndexValidationError: the merged recall@10 stays below index.min_recall_at_10 even
        with every shard built from scratch.
    """
    parts, rows = split_rows(snapshot, cfg.shards)
    reason = "full build requested" if full else None
    latest = None
    if reason is None:
        latest = kind.latest()
        try:
            reason = full_build_reason(kind.manifest(latest) if latest else None, snapshot, cfg)
        except ArtifactError as err:
            reason = f"previous index {latest} unreadable ({err})"
    built: list[BuiltIndex] = []
    reasons: list[str] = []
    for shard, part in enumerate(parts):
        shard_reason = reason
        if shard_reason is None:
            previous, shard_reason = _open_previous_shard(kind, latest, shard, cfg.shards, workdir / "previous")
            if shard_reason is None:
                plan = plan_update(previous, part)
                shard_reason = plan_refusal(plan, cfg)
                if shard_reason is None:
                    built.append(apply_update(previous, part, plan, cfg))
                    reasons.append("")
                    continue
            previous = None  # free the previous graph before building a new one
        built.append(build_full(part, cfg, reason=shard_reason or ""))
        reasons.append(shard_reason or "")
    result = BuiltShardSet(built, rows, reasons)
    for one, part in zip(result.shards, parts, strict=True):
        validation.check_contents(one.graph, one.labels_to_ids, one.row_labels, part)
    recall = measure_merged_recall(result, snapshot, cfg, probe)
    where = validation.snapshot_where(snapshot)
    if recall.recall_at_10 < cfg.min_recall_at_10 and result.mode != "full":
        log.warning(
            "%s: the merged answer of the updated shards failed validation (recall@10 %.4f); rebuilding them from scratch",
            where,
            recall.recall_at_10,
        )
        for shard, part in enumerate(parts):
            if result.shards[shard].mode == "incremental":
                result.shards[shard] = build_full(
                    part, cfg, reason="the incremental update failed the merged recall gate"
                )
                result.reasons[shard] = "the incremental update failed the merged recall gate"
        recall = measure_merged_recall(result, snapshot, cfg, probe)
    validation.check_recall(recall, cfg.min_recall_at_10, where)
    return result, recall


def _open_previous_shard(kind: ArtifactKind, version: str, shard: int, shards: int, directory: Path):
    """Shard `shard` of the previous set, downloaded (sha256 checked) and loaded for writing.

    Returns (previous, None), or (None, why this shard is built in full instead).
    """
    import hnswlib

    try:
        local = download_shard(kind, version, shard, shards, directory)
        manifest = Manifest.from_json((local / "MANIFEST.json").read_bytes(), str(local))
        graph = hnswlib.Index(space=SPACE, dim=int(manifest.params["dim"]))
        graph.load_index(str(local / INDEX_FILE), allow_replace_deleted=True)
        labels_to_ids = read_ids(local / IDS_FILE)
    except (ArtifactError, RuntimeError, KeyError, ValueError, OSError) as err:
        log.warning("%s/%s shard %d cannot be updated incrementally: %s", kind.name, version, shard, err)
        return None, f"previous index {version} shard {shard} unreadable ({err})"
    if graph.element_count > len(labels_to_ids) or read_header(local / INDEX_FILE).dim != graph.dim:
        return None, f"previous index {version} shard {shard}: graph, id map and manifest disagree"
    return PreviousIndex(manifest, graph, labels_to_ids, index_file=local / INDEX_FILE), None


def merged_search(built: BuiltShardSet, queries: np.ndarray, k: int, *, ef: int, threads: int) -> np.ndarray:
    """What the router answers: each shard's top-k at `ef`, merged by score.

    Returns:
      [q, k] snapshot rows, best first (-1 where the set holds fewer than k items).
    """
    found_rows, found_scores = [], []
    for one, rows in zip(built.shards, built.rows, strict=True):
        kk = min(k, len(rows))
        one.graph.set_ef(max(ef, kk))
        labels, distances = knn_padded(one.graph, queries, kk, threads=hnsw.build_threads(threads))
        row_of_label = np.full(len(one.labels_to_ids), -1, dtype=np.int64)
        row_of_label[one.row_labels] = rows
        found_rows.append(np.where(labels >= 0, row_of_label[np.maximum(labels, 0)], -1))
        found_scores.append(np.where(labels >= 0, 1.0 - distances, -np.inf))
    all_rows, all_scores = np.concatenate(found_rows, axis=1), np.concatenate(found_scores, axis=1)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_rows, order, axis=1)


def measure_merged_recall(
    built: BuiltShardSet, snapshot: EmbeddingSnapshot, cfg: IndexConfig, probe=None
) -> validation.RecallCheck:
    """recall@10 of the merged answer against exact search over the whole snapshot, at the
    smallest ef (the same for every shard) found to reach index.min_recall_at_10
    (`validation.smallest_passing_ef`)."""
    started = time.perf_counter()
    k = min(validation.RECALL_K, len(snapshot))
    if probe is not None:
        queries, source = probe
    else:
        queries = hnsw.held_aside_queries(snapshot.vectors, min(cfg.validation_queries, len(snapshot)))
        source = "perturbed stored vectors"
    exact = hnsw.exact_top_k(snapshot.vectors, queries, k)
    ef, tried = validation.smallest_passing_ef(
        lambda at: hnsw.recall_at_k(merged_search(built, queries, k, ef=at, threads=cfg.threads), exact),
        cfg.ef_search,
        max(cfg.max_ef_search, cfg.ef_search),
        cfg.min_recall_at_10,
    )
    return validation.RecallCheck(tried[ef], len(queries), k, ef, tried, time.perf_counter() - started, source)


def write_shard_set(
    kind: ArtifactKind,
    version: str,
    snapshot: EmbeddingSnapshot,
    built: BuiltShardSet,
    recall: validation.RecallCheck,
    cfg: IndexConfig,
    workdir: Path,
) -> Manifest:
    """Writes one version holding every shard's files; the manifest is written last."""
    shards = len(built.shards)
    parents = {"model_version": snapshot.model_version, "embedding_snapshot": snapshot.manifest.version}
    if built.previous:
        parents["previous_index"] = built.previous
    params = {
        "space": SPACE,
        "dim": snapshot.dim,
        "M": cfg.m,
        "ef_construction": cfg.ef_construction,
        "ef_search": recall.ef,
        "count": len(snapshot),
        "mode": built.mode,
        "shards": shards,
        "shard_hash": SHARD_HASH,
        "shard_counts": [len(rows) for rows in built.rows],
        "shard_modes": [b.mode for b in built.shards],
    }
    index_bytes = 0
    build_seconds = sum(b.build_seconds for b in built.shards)
    with kind.new_version(version, parents=parents, params=params) as writer:
        for shard, one in enumerate(built.shards):
            folder = workdir / f"shard-{shard}"
            folder.mkdir(parents=True, exist_ok=True)
            one.graph.save_index(str(folder / INDEX_FILE))
            write_ids(folder / IDS_FILE, one.labels_to_ids)
            index_bytes += (folder / INDEX_FILE).stat().st_size
            writer.add_file(shard_file(shard, shards, INDEX_FILE), folder / INDEX_FILE)
            writer.add_file(shard_file(shard, shards, IDS_FILE), folder / IDS_FILE)
        writer.metrics.update(
            {
                "recall_at_10": round(recall.recall_at_10, 6),
                "recall_at_10_of": "the merged answer of every shard against exact search over the whole snapshot",
                "recall_at_10_by_ef": {str(ef): round(r, 6) for ef, r in recall.tried.items()},
                "validation_queries": recall.queries,
                "validation_query_source": recall.query_source,
                "validation_seconds": round(recall.seconds, 3),
                "build_seconds": round(build_seconds, 3),
                "vectors_per_second": round(sum(b.touched for b in built.shards) / max(build_seconds, 1e-9), 1),
                "bytes_per_vector": round(index_bytes / max(len(snapshot), 1), 1),
                "build_detail": built.detail,
                "deleted_fraction": max(float(b.stats.get("deleted_fraction", 0.0)) for b in built.shards),
                "shard_stats": [b.stats for b in built.shards],
            }
        )
    return writer.manifest
