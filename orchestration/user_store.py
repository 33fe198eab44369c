"""The user dataflow's last step: the router's Redis profile store gets the run's user snapshot.

With `router.user_store = "redis"` the router (`ebr route`) reads each request's user
vector from Redis, under keys that carry the snapshot version (`serving.profile_store`),
and uses a snapshot only once its meta is there. ebr_user_embeddings' `load_user_store`
task calls `load_user_store` with the run's snapshot once check_snapshot has passed: the
load `ebr profiles load --snapshot S` runs (`profile_store.load_snapshot`: every vector,
then the meta, last). The Beam job has moved `embeddings/users` LATEST already; until
this task has written the meta a router keeps answering from the older, complete
snapshot, so it never pairs an index with half a snapshot.

With the embedded default (`"memory"`) the router holds the snapshot in its own memory
and there is nothing to load: `load_user_store` says so and the task is skipped. The
task is in the DAG either way (parsing reads no pipeline configuration); it decides when
it runs.
"""

from __future__ import annotations

import logging
from typing import Any

from artifacts import USER_EMBEDDINGS, ArtifactStore
from config import EbrConfig

log = logging.getLogger(__name__)


class UserStoreError(RuntimeError):
    """Redis could not be reached or refused a write; the message names the URL."""


def load_user_store(cfg: EbrConfig, snapshot: str) -> dict[str, Any]:
    """Loads `embeddings/users/<snapshot>` into Redis when the router reads users from there.

    Idempotent: a snapshot whose meta is there already, with the same model and count,
    is not written again (the meta is written last, so it implies every vector).

    Returns {"loaded", "snapshot", "detail"} and, when loaded, {"count", "redis_url",
    "meta_key", "model_version", "reused"}; "loaded" is False (with the reason in
    "detail") when `router.user_store` is not "redis".

    Raises:
      UserStoreError: Redis is unreachable or refused a write.
      UnknownVersionError, IncompleteVersionError, CorruptArtifactError: the snapshot
        is not a complete version of embeddings/users.
    """
    rcfg = cfg.router
    if rcfg.user_store != "redis":
        detail = (
            f'router.user_store is "{rcfg.user_store}": the router holds the user snapshot in its own '
            'memory, so there is no Redis profile store to load (set router.user_store = "redis" to use one)'
        )
        log.info("embeddings/users/%s: %s", snapshot, detail)
        return {"loaded": False, "snapshot": snapshot, "detail": detail}

    import redis

    from artifacts.embedding_snapshots import read_snapshot
    from serving import profile_store

    users = read_snapshot(ArtifactStore.from_config(cfg).kind(USER_EMBEDDINGS), snapshot)
    client = redis.Redis.from_url(rcfg.redis_url)
    try:
        meta = profile_store.snapshot_meta(client, snapshot, prefix=rcfg.redis_prefix)
        reused = meta is not None and meta["model_version"] == users.model_version and meta["count"] == len(users)
        count = len(users) if reused else profile_store.load_snapshot(client, users, prefix=rcfg.redis_prefix)
    except redis.exceptions.RedisError as err:
        raise UserStoreError(
            f"the Redis profile store at {rcfg.redis_url} (router.redis_url): {err}; is it running (`make redis`)?"
        ) from None
    finally:
        client.close()
    key = profile_store.meta_key(rcfg.redis_prefix, snapshot)
    detail = (
        f"{count} user vectors of model {users.model_version} "
        f"{'were in Redis already' if reused else 'loaded into Redis'} at {rcfg.redis_url} ({key})"
    )
    log.info("embeddings/users/%s: %s", snapshot, detail)
    return {
        "loaded": True,
        "snapshot": snapshot,
        "count": count,
        "redis_url": rcfg.redis_url,
        "meta_key": key,
        "model_version": users.model_version,
        "reused": reused,
        "detail": detail,
    }
