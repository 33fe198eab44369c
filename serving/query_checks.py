"""Checks of a query's `k` and embedding, the same in the service, the router and the shard servers."""

from __future__ import annotations

import numpy as np

from config import ServingConfig
from serving.responses import ApiError

# Refused above this L2 norm: inner products with unit vectors must stay far from float32's
# 3.4e38, where hnswlib's float32 sums overflow to inf and the answers come back unsorted.
MAX_EMBEDDING_NORM = 1e18


def checked_k(k: int | None, cfg: ServingConfig) -> int:
    """`k`, or serving.default_k when None; 422 invalid_k outside 1..serving.max_k."""
    k = cfg.default_k if k is None else k
    if not 1 <= k <= cfg.max_k:
        raise ApiError(422, "invalid_k", f"k must be between 1 and {cfg.max_k} (serving.max_k), got {k}")
    return k


def checked_embedding(embedding: list[float], dim: int) -> np.ndarray:
    """[dim] float32 query vector; 422 invalid_embedding for another length, NaN or
    infinite values (in float32) or a norm whose scores would overflow float32."""
    if len(embedding) != dim:
        raise ApiError(
            422, "invalid_embedding", f"embedding has {len(embedding)} values; the served model's vectors have {dim}"
        )
    with np.errstate(over="ignore"):
        query = np.asarray(embedding, dtype=np.float32)
    if not np.isfinite(query).all():
        # Checked after the float32 cast: 1e39 is a finite Python float but inf in float32.
        bad = np.flatnonzero(~np.isfinite(query))[:10].tolist()
        raise ApiError(
            422, "invalid_embedding", f"embedding has NaN or infinite (in float32) values at positions {bad}"
        )
    norm = float(np.linalg.norm(np.asarray(embedding, dtype=np.float64)))  # float64: 3e38 squared is finite
    if norm > MAX_EMBEDDING_NORM:
        raise ApiError(
            422,
            "invalid_embedding",
            f"embedding has L2 norm {norm:.3g}, above {MAX_EMBEDDING_NORM:.0e}: "
            "its scores would overflow float32; send the L2-normalised vector",
        )
    return query
