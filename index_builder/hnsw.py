"""Building and measuring HNSW graphs: pure functions over numpy arrays.

Everything here works on vectors in memory; reading snapshots and publishing versions is
`index_builder.publish`. Vectors are L2-normalised float32, so hnswlib's "ip" space
(distance = 1 - inner product) ranks by cosine similarity.
"""

from __future__ import annotations

import os

import numpy as np

from index_builder.loaded_index import SPACE, knn_padded

# hnswlib seeds its level generator; a fixed seed makes a rebuild of the same input the
# same graph (single-threaded; with threads the insertion order varies a little).
RANDOM_SEED = 100
# Exact search is done in blocks of queries so the score matrix stays small.
_EXACT_BLOCK_BYTES = 256 * 1024 * 1024


def build_threads(threads: int) -> int:
    """`index.threads` from config: 0 means every core."""
    return threads if threads > 0 else (os.cpu_count() or 1)


def new_graph(dim: int, max_elements: int, *, m: int, ef_construction: int, allow_replace_deleted: bool = False):
    """An empty hnswlib index in the inner-product space."""
    import hnswlib

    index = hnswlib.Index(space=SPACE, dim=dim)
    index.init_index(
        max_elements=max(max_elements, 1),
        M=m,
        ef_construction=ef_construction,
        random_seed=RANDOM_SEED,
        allow_replace_deleted=allow_replace_deleted,
    )
    return index


def build_graph(vectors: np.ndarray, *, m: int, ef_construction: int, threads: int, labels: np.ndarray | None = None):
    """A full HNSW build.

    Args:
      vectors: [n, dim] float32, L2-normalised.
      m, ef_construction: HNSW parameters (links per node, candidate list while inserting).
      threads: insertion threads (0 = every core).
      labels: [n] int labels; default 0..n-1 (label i = row i of the id map).

    Returns:
      The hnswlib.Index, sized exactly for n items, with allow_replace_deleted set so an
      incremental build can reuse deleted slots after loading it.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = new_graph(vectors.shape[1], len(vectors), m=m, ef_construction=ef_construction, allow_replace_deleted=True)
    if len(vectors):
        labels = np.arange(len(vectors)) if labels is None else labels
        index.add_items(vectors, labels, num_threads=build_threads(threads))
    return index


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, base_labels: np.ndarray | None = None) -> np.ndarray:
    """Exact inner-product top-k by brute force (the reference for recall).

    Args:
      base: [n, dim] float32 indexed vectors.
      queries: [q, dim] float32.
      k: neighbours per query (at most n).
      base_labels: [n] labels of the base rows; default 0..n-1.

    Returns:
      [q, k] labels, best first.
    """
    k = min(k, len(base))
    block = max(1, _EXACT_BLOCK_BYTES // (4 * max(len(base), 1)))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ base.T  # [b, n]
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + block] = np.take_along_axis(top, order, axis=1)
    return out if base_labels is None else np.asarray(base_labels)[out]


def held_aside_queries(vectors: np.ndarray, n: int, *, seed: int = 0, noise: float = 0.75) -> np.ndarray:
    """Validation queries: perturbed copies of randomly chosen stored vectors.

    Why perturbed copies: a stored vector used as a query finds itself at distance zero,
    which is the easiest case a graph has and inflates recall; uniform random vectors
    fall between the clusters real queries come from, the hardest and least realistic
    case. Holding real items out of the index would change what is published. A stored
    vector plus isotropic noise of norm `noise` (then renormalised; cosine about 0.8 to
    its source at the default) lands among the items, like a user or similar-item query,
    without being any of them, and needs nothing the snapshot does not already hold.

    Args:
      vectors: [n_items, dim] float32 stored vectors.
      n: number of queries (with replacement when n > n_items).
      seed: random seed (a fixed default makes validation figures reproducible).
      noise: norm of the added Gaussian noise, relative to the unit vectors.

    Returns:
      [n, dim] float32, L2-normalised.
    """
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=n, replace=n > len(vectors))
    dim = vectors.shape[1]
    queries = vectors[rows] + rng.normal(scale=noise / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k that the approximate top-k found; both [q, k] labels."""
    k = exact.shape[1]
    hits = sum(len(np.intersect1d(f[:k], e, assume_unique=True)) for f, e in zip(found, exact, strict=True))
    return hits / exact.size if exact.size else 1.0


def graph_recall(index, queries: np.ndarray, exact: np.ndarray, *, ef: int, threads: int) -> float:
    """recall@k of `index` searched with `ef` against exact labels [q, k]."""
    index.set_ef(ef)
    found, _ = knn_padded(index, queries, exact.shape[1], threads=build_threads(threads))
    return recall_at_k(found, exact)  # a missing answer (-1) counts as a miss
