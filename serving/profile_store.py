"""The user profile store of the router: user embeddings in Redis, keyed by snapshot version.

The embedded default keeps the user snapshot in the router's memory (`serving.state`);
100M users × 128 float32 are 51 GB, past one process. With `router.user_store = "redis"`
the router reads each user's vector from Redis instead:

    <prefix>:<snapshot>:v:<user_id>   the vector: dim float32, little-endian (512 bytes at 128-d)
    <prefix>:<snapshot>:meta          hash {model_version, dim, count, loaded_at}, written LAST

The snapshot version is part of every key, so a router pinned to a story set of model m
reads only vectors of a snapshot of model m (the consistency rule of DESIGN.md), while a
newer snapshot is being loaded beside it; a snapshot counts only once its `meta` exists
(like a version's MANIFEST.json). `load_snapshot` is what the user dataflow's publish
step calls (`ebr profiles load` from the command line); `delete_snapshot` removes an old
one (its meta first, so no router starts on a half-deleted snapshot).

Memory: each vector costs its 512 bytes plus Redis' per-key overhead (~60-80 bytes with
the key itself), about 60 GB for 100M users: past one machine, Redis Cluster spreads the
keys over its hash slots (a user's key names one slot; the router asks the node that
owns it), and replicas of each primary serve reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from artifacts.embedding_snapshots import EmbeddingSnapshot

# Vectors written per pipeline round trip while loading.
LOAD_BATCH = 5_000


def vector_key(prefix: str, snapshot: str, user_id: str) -> str:
    return f"{prefix}:{snapshot}:v:{user_id}"


def meta_key(prefix: str, snapshot: str) -> str:
    return f"{prefix}:{snapshot}:meta"


def load_snapshot(client, snapshot: EmbeddingSnapshot, *, prefix: str, batch: int = LOAD_BATCH) -> int:
    """Writes every vector of `snapshot` under its version, then its meta; returns the count.

    Idempotent: a rerun rewrites the same bytes. `client` is a `redis.Redis`.
    """
    version = snapshot.manifest.version
    vectors = np.ascontiguousarray(snapshot.vectors, dtype="<f4")
    for start in range(0, len(snapshot), batch):
        pipe = client.pipeline(transaction=False)
        for user_id, vector in zip(snapshot.ids[start : start + batch], vectors[start : start + batch], strict=True):
            pipe.set(vector_key(prefix, version, str(user_id)), vector.tobytes())
        pipe.execute()
    client.hset(
        meta_key(prefix, version),
        mapping={
            "model_version": snapshot.model_version,
            "dim": snapshot.dim,
            "count": len(snapshot),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return len(snapshot)


def snapshot_meta(client, version: str, *, prefix: str) -> dict | None:
    """The meta of a loaded snapshot ({model_version, dim, count, loaded_at}), or None."""
    raw = client.hgetall(meta_key(prefix, version))
    if not raw:
        return None
    meta = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
    }
    return {**meta, "dim": int(meta["dim"]), "count": int(meta["count"])}


def delete_snapshot(client, version: str, *, prefix: str) -> int:
    """Deletes a snapshot's keys, its meta first; returns how many vectors were deleted."""
    client.delete(meta_key(prefix, version))
    deleted = 0
    keys = []
    for key in client.scan_iter(match=vector_key(prefix, version, "*"), count=10_000):
        keys.append(key)
        if len(keys) >= LOAD_BATCH:
            deleted += client.delete(*keys)
            keys = []
    if keys:
        deleted += client.delete(*keys)
    return deleted


@dataclass(frozen=True, eq=False)
class RedisUsers:
    """One complete snapshot in Redis, looked up by user id (the router's `users`).

    `client` is a `redis.asyncio.Redis` of the router's event loop.
    """

    version: str
    model_version: str
    dim: int
    count: int
    prefix: str
    client: object

    async def lookup(self, user_id: str) -> np.ndarray | None:
        """[dim] float32, or None for a user the snapshot does not hold."""
        raw = await self.client.get(vector_key(self.prefix, self.version, user_id))
        if raw is None:
            return None
        vector = np.frombuffer(raw, dtype="<f4")
        if vector.shape != (self.dim,):
            raise ValueError(
                f"{vector_key(self.prefix, self.version, user_id)} holds {len(raw)} bytes, not {self.dim} float32"
            )
        return vector.astype(np.float32)
