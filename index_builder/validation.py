"""Checks a snapshot and a built graph must pass before anything is published.

Two gates:
  * the snapshot: non-empty, dimension and count as its manifest says, finite,
    L2-normalised, made by a named model (serving pairs indexes and user embeddings by
    model version);
  * the graph: holds exactly the snapshot's items under the labels the id map names, and
    its recall@10 against exact search on held-aside queries is at least
    `index.min_recall_at_10` when searched with the ef it will be served with. For the
    story and creator indexes the queries are a sample of the user embeddings of the same
    model (`probe_queries`: what the index will answer); otherwise, and before the user
    dataflow has run for a new model, perturbed stored vectors (`hnsw.held_aside_queries`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from artifacts.embedding_snapshots import EmbeddingSnapshot
from index_builder import hnsw
from index_builder.errors import IndexValidationError

# Snapshot vectors must have unit norm within this (float32 towers end in an L2 normalisation).
NORM_TOLERANCE = 1e-3
RECALL_K = 10
# Stored vectors compared with the snapshot after a build (catches a wrong id map).
_MAPPING_PROBES = 256


def snapshot_where(snapshot: EmbeddingSnapshot) -> str:
    return f"{snapshot.manifest.kind}/{snapshot.manifest.version}"


def check_snapshot(snapshot: EmbeddingSnapshot) -> None:
    """Refuses a snapshot the index must not be built from.

    Raises:
      IndexValidationError: empty, dimension or count differ from the manifest, NaN or
        infinite values, vectors not L2-normalised, or no parents.model_version.
    """
    where = snapshot_where(snapshot)
    manifest = snapshot.manifest
    if len(snapshot) == 0:
        raise IndexValidationError(f"{where} is empty: nothing to index; check the dataflow that wrote it")
    if not snapshot.model_version:
        raise IndexValidationError(
            f"{where} names no parents.model_version; serving could not pair the index with user embeddings"
        )
    dim, count = manifest.params.get("dim"), manifest.metrics.get("count")
    if dim is None or int(dim) != snapshot.dim:
        raise IndexValidationError(f"{where}: vectors of dimension {snapshot.dim}, manifest says params.dim={dim}")
    if count is None or int(count) != len(snapshot):
        raise IndexValidationError(f"{where}: {len(snapshot)} rows, manifest says metrics.count={count}")
    bad = ~np.isfinite(snapshot.vectors).all(axis=1)
    if bad.any():
        examples = ", ".join(map(str, snapshot.ids[bad][:3]))
        raise IndexValidationError(
            f"{where}: {int(bad.sum())} vectors hold NaN or infinite values (e.g. {examples}); "
            "fix the tower or the dataflow and write a new snapshot"
        )
    norms = np.linalg.norm(snapshot.vectors, axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise IndexValidationError(
            f"{where}: {int(off.sum())} vectors are not L2-normalised (e.g. {snapshot.ids[row]} has norm "
            f"{norms[row]:.4f}); inner product would not be cosine similarity; normalise in the tower"
        )


def check_contents(graph, labels_to_ids: np.ndarray, row_labels: np.ndarray, snapshot: EmbeddingSnapshot) -> None:
    """Refuses a graph whose live items or stored vectors differ from the snapshot.

    Args:
      graph: the built hnswlib.Index.
      labels_to_ids: [labels] object array, None for dead labels.
      row_labels: [n] the label of each snapshot row.
      snapshot: what the graph must hold.
    """
    where = snapshot_where(snapshot)
    live = int(np.count_nonzero(np.not_equal(labels_to_ids, None)))
    if live != len(snapshot) or graph.dim != snapshot.dim:
        raise IndexValidationError(
            f"index for {where}: {live} live items of dimension {graph.dim}, snapshot has "
            f"{len(snapshot)} of dimension {snapshot.dim}"
        )
    if not np.array_equal(labels_to_ids[row_labels], snapshot.ids):
        raise IndexValidationError(f"index for {where}: the id map does not name the snapshot's ids under their labels")
    rows = np.linspace(0, len(snapshot) - 1, min(_MAPPING_PROBES, len(snapshot))).astype(int)
    stored = np.asarray(graph.get_items(row_labels[rows], return_type="numpy"), dtype=np.float32)
    if not np.array_equal(stored, snapshot.vectors[rows]):
        raise IndexValidationError(
            f"index for {where}: stored vectors differ from the snapshot's under the same labels"
        )


@dataclass(frozen=True)
class RecallCheck:
    """recall@10 of a graph at the ef it will be served with.

    Attributes:
      recall_at_10: at `ef` (the smallest ef found to pass, or the largest tried).
      queries: number of held-aside queries.
      query_source: what the queries were (`probe_queries`).
      k: 10, or fewer when the index holds fewer items.
      ef: the ef to serve with.
      tried: recall at each ef tried, in the order tried.
      seconds: time spent (exact search included).
    """

    recall_at_10: float
    queries: int
    k: int
    ef: int
    tried: dict[int, float]
    seconds: float
    query_source: str = "perturbed stored vectors"


def measure_recall(
    graph,
    vectors: np.ndarray,
    row_labels: np.ndarray,
    *,
    ef: int,
    max_ef: int,
    threshold: float,
    queries: int,
    threads: int,
    probe: tuple[np.ndarray, str] | None = None,
) -> RecallCheck:
    """recall@10 of `graph` against exact search, raising ef until it reaches `threshold`.

    Finds the ef to serve with by `smallest_passing_ef`. Raising ef costs latency, not
    correctness, so it is preferred to refusing the version; `check_recall` refuses it
    when even `max_ef` falls short.

    Args:
      graph: hnswlib.Index holding `vectors` under `row_labels` (plus deleted labels).
      vectors: [n, dim] float32 snapshot vectors.
      row_labels: [n] labels of those rows in the graph.
      ef, max_ef: first and largest search breadth to try.
      threshold: recall@10 that passes.
      queries: how many held-aside queries (capped at n: "all, if fewer items").
      threads: search threads (0 = every core).
      probe: (queries [q, dim], what they are) to use instead of perturbed stored vectors,
        e.g. the real queries of this index (`probe_queries`).
    """
    started = time.perf_counter()
    k = min(RECALL_K, len(vectors))
    if probe is not None:
        probe, source = probe
        n_queries = len(probe)
    else:
        n_queries = min(queries, len(vectors))
        probe, source = hnsw.held_aside_queries(vectors, n_queries), "perturbed stored vectors"
    exact = hnsw.exact_top_k(vectors, probe, k, base_labels=row_labels)
    served, tried = smallest_passing_ef(
        lambda at: hnsw.graph_recall(graph, probe, exact, ef=max(at, k), threads=threads), ef, max_ef, threshold
    )
    return RecallCheck(tried[served], n_queries, k, served, tried, time.perf_counter() - started, source)


# Once a doubling of ef passes, the ef between the last failing and the first passing one
# is narrowed down to within an eighth of the failing one (64 -> 128 -> 256 passing ends
# within 16 of the smallest passing ef, after three more measurements): the doubling alone
# served up to twice the breadth the recall rule needs, and a search costs about its ef.
EF_RESOLUTION = 8


def smallest_passing_ef(
    measure: Callable[[int], float], ef: int, max_ef: int, threshold: float
) -> tuple[int, dict[int, float]]:
    """(the ef to serve with, recall at each ef tried in order), looking for the smallest
    ef >= `ef` whose recall (`measure(ef)`) reaches `threshold`: doubling from `ef` (capped
    at `max_ef`) until one passes, then bisecting between the last that failed and the first
    that passed until they are within 1/EF_RESOLUTION of the failing one, and serving the
    passing end. Never below `ef` (the configured floor). When none passes, the largest
    tried (`max_ef`), which `check_recall` refuses."""
    tried: dict[int, float] = {}
    current = ef
    while True:
        tried[current] = measure(current)
        if tried[current] >= threshold or current >= max_ef:
            break
        current = min(current * 2, max_ef)
    if tried[current] < threshold or current == ef:
        return current, tried
    low, high = max(e for e in tried if e < current), current  # last failing, first passing
    while high - low > max(1, low // EF_RESOLUTION):
        middle = (low + high) // 2
        tried[middle] = measure(middle)
        low, high = (low, middle) if tried[middle] >= threshold else (middle, high)
    return high, tried


def probe_queries(
    users: EmbeddingSnapshot | None, model_version: str, n: int, *, seed: int = 0
) -> tuple[np.ndarray, str] | None:
    """The queries a story or creator index really answers: user embeddings of its model.

    A sample of `n` users (all when fewer) of the user snapshot LATEST names, when that
    snapshot comes from the same model as the index: they are held aside from the index
    by nature and have the distribution the service will query with, so recall on them
    is the recall users get. None (use perturbed stored vectors) when there is no such
    snapshot, e.g. before the user dataflow has run for a new model.
    """
    if users is None or not len(users) or users.model_version != model_version:
        return None
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(users), size=min(n, len(users)), replace=False)
    return users.vectors[np.sort(rows)], f"user embeddings {users.manifest.version}"


def check_recall(check: RecallCheck, threshold: float, where: str) -> None:
    """Raises IndexValidationError when recall@10 is below `threshold` at every ef tried."""
    if check.recall_at_10 < threshold:
        tried = ", ".join(f"{r:.4f} at ef={ef}" for ef, r in check.tried.items())
        raise IndexValidationError(
            f"index for {where}: recall@{check.k} {check.recall_at_10:.4f} on {check.queries} held-aside queries "
            f"is below index.min_recall_at_10={threshold} (tried {tried}); nothing was published. "
            "Raise index.m / index.ef_construction (or index.max_ef_search) and build again"
        )
