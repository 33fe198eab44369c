"""Clustered synthetic embeddings for tests and benchmarks.

Uniform random unit vectors are a worst case for HNSW (no neighbourhood structure, every
point nearly orthogonal to every other); tower outputs are clustered by topic, language
and creator. These vectors have that shape: cluster centres with Zipf-like sizes, points
spread around them, L2-normalised.
"""

from __future__ import annotations

import numpy as np


def clustered_vectors(n: int, dim: int, *, clusters: int = 100, spread: float = 0.5, seed: int = 0) -> np.ndarray:
    """[n, dim] float32 L2-normalised vectors around `clusters` centres.

    Args:
      n, dim: shape.
      clusters: number of centres; sizes follow 1/rank (a few big topics, a long tail).
      spread: norm of each point's Gaussian offset from its centre (the centres are unit
        vectors), so cosine to the centre is about 1/sqrt(1 + spread**2).
      seed: random seed.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1)
    assignment = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    block = 100_000  # bounded temporary memory at 1M x 128
    for start in range(0, n, block):
        rows = assignment[start : start + block]
        noise = rng.normal(scale=spread / np.sqrt(dim), size=(len(rows), dim)).astype(np.float32)
        part = centres[rows] + noise
        out[start : start + block] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def story_ids(start: int, n: int) -> np.ndarray:
    """[n] ids "s<number>" for rows start..start+n-1."""
    return np.asarray([f"s{i}" for i in range(start, start + n)], dtype=object)
