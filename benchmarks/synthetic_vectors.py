"""Clustered synthetic embeddings for the benchmarks and the tests (not installed: benchmark data).

Uniform random unit vectors are a worst case for HNSW (no neighbourhood structure, every
point nearly orthogonal to every other), and so are isotropic blobs around centres: in
128 dimensions a blob is locally as structureless as uniform noise. Tower outputs are
clustered by topic, language and creator and vary along few directions within a
cluster. These vectors have that shape: centres with Zipf-like cluster sizes, each
cluster spread over its own random `intrinsic_dim`-dimensional subspace, plus a little
isotropic noise, then L2-normalised.
"""

from __future__ import annotations

import numpy as np


def clustered_vectors(
    n: int,
    dim: int,
    *,
    clusters: int = 100,
    intrinsic_dim: int = 16,
    spread: float = 0.7,
    noise: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """[n, dim] float32 L2-normalised vectors around `clusters` centres.

    Args:
      n, dim: shape.
      clusters: number of centres (unit vectors); sizes follow 1/rank (a few big topics,
        a long tail).
      intrinsic_dim: dimension of each cluster's subspace (capped at dim).
      spread: expected norm of a point's offset within its cluster's subspace.
      noise: expected norm of the isotropic Gaussian noise added on top.
      seed: random seed (same arguments, same vectors).
    """
    rng = np.random.default_rng(seed)
    rank = min(intrinsic_dim, dim)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1)
    assignment = rng.choice(clusters, size=n, p=weights / weights.sum())
    order = np.argsort(assignment, kind="stable")
    bounds = np.searchsorted(assignment[order], np.arange(clusters + 1))
    out = np.empty((n, dim), dtype=np.float32)
    for cluster in range(clusters):
        rows = order[bounds[cluster] : bounds[cluster + 1]]
        if not len(rows):
            continue
        basis = rng.normal(size=(rank, dim)) / np.sqrt(dim)  # rows of about unit norm
        offsets = rng.normal(scale=spread / np.sqrt(rank), size=(len(rows), rank)) @ basis
        jitter = rng.normal(scale=noise / np.sqrt(dim), size=(len(rows), dim))
        points = centres[cluster] + offsets + jitter
        out[rows] = points / np.linalg.norm(points, axis=1, keepdims=True)
    return out


def story_ids(start: int, n: int) -> np.ndarray:
    """[n] ids "s<number>" for rows start..start+n-1."""
    return np.asarray([f"s{i}" for i in range(start, start + n)], dtype=object)
