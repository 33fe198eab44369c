"""The shard router (`ebr route`): the retrieval service's public API over shard servers.

    client ──► router: user id ──► user embedding (the user snapshot in memory, of the
               pinned set's model) ──► fan out to ONE replica of EVERY shard, concurrently,
               each asked for k from the pinned version ──► merge by score (heap), each id
               once ──► {items, served, coverage}

**One generation per request.** A shard set is one version of `indexes/<collection>` (one
manifest, one LATEST), so its version name is its generation. The router pins one version
per collection; a request reads the pinned state once and asks every shard for *that*
version (shard servers keep the previous versions loaded, `serving.shard_keep_versions`),
and an answer that names another version is discarded like an error. So no answer ever
merges two generations, during a rollout or a rollback.

**Switching.** The router follows LATEST, but moves its pin to a new version only when
every shard has a healthy replica that holds it (and, for the story index, a user snapshot
of the same model is loaded, the consistency rule of DESIGN.md). A shard that lags (still
downloading, or failing to load) keeps the router on the old set until it catches up.

**Failures.** Every request has a deadline (`router.deadline_ms`). A shard's replica that
errs, refuses the connection or answers with another version is replaced at once by the
next replica of that shard; one that has not answered after `router.hedge_after_ms` is
hedged (asked on another replica too; the first good answer wins), up to
`router.max_attempts` per shard. A replica that failed is skipped until its next health
check passes. The answer's `coverage` is the share of shards that answered; below
`serving.min_coverage` the router answers 503 instead.

**Replicas** come from `router.replicas` (one list of URLs per shard, static), checked
every `router.health_interval_s` on `/v1/shard`, which says which shard the replica is (a
replica listed under the wrong shard, or of a set of another size, is never asked) and
which versions it holds. README, "Running at scale", shows how a Kubernetes headless
Service or a DNS SRV record fills the same lists.

The parts: this module's `Router` follows the store and decides the pins; the replicas and
their health checks are `serving.replicas`, the hedged fan-out and the merge
`serving.fanout`, the metrics `serving.router_metrics`, and the HTTP app with
`build_router` and `serve_router` (`ebr route`) `serving.router_app`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from artifacts import ArtifactStore
from config import EbrConfig
from index_builder.sharding import shard_count
from serving.fanout import FanOut
from serving.profile_store import RedisUsers, meta_key, snapshot_meta
from serving.replicas import ReplicaPool
from serving.router_metrics import RouterMetrics
from serving.state import COLLECTIONS, INDEX_KINDS, USER_EMBEDDINGS, UserEmbeddings, load_user_embeddings, now_iso
from serving.wire import WireClient

log = logging.getLogger(__name__)

# User snapshots kept in memory: the one paired with the pinned story set, and the newest.
KEEP_USER_SNAPSHOTS = 2


@dataclass(frozen=True)
class Pin:
    """The shard-set version a collection is answered from."""

    collection: str
    version: str
    model_version: str
    dim: int
    since: str


@dataclass(frozen=True, eq=False)
class RouterState:
    """What a request reads once: the pinned versions and the user snapshot paired with them."""

    generation: int
    pins: MappingProxyType  # collection -> Pin
    users: UserEmbeddings | RedisUsers | None  # of the story pin's model


class Router:
    """Holds the pins and the user snapshots, follows the store, and owns the replica pool
    (`pool`, its health checks) and the fan-out (`fanout`) that answer requests."""

    def __init__(
        self,
        cfg: EbrConfig,
        metrics: RouterMetrics | None = None,
        *,
        poll_interval_s: float | None = None,
        name: str | None = None,
    ):
        self.cfg = cfg
        self.name = name or cfg.router.model_name
        self.rcfg = cfg.router
        if not self.rcfg.replicas:
            raise ValueError(
                "router.replicas is empty: give one list of shard-server URLs per shard, e.g. "
                '--set \'router.replicas=[["http://127.0.0.1:8101"],["http://127.0.0.1:8102"]]\''
            )
        self.shards = len(self.rcfg.replicas)
        self.metrics = metrics or RouterMetrics()
        self.store = ArtifactStore.from_config(cfg)
        self.poll_interval_s = poll_interval_s or cfg.serving.poll_interval_s
        from serving.server import cache_dir_of

        self.cache_dir = Path(cache_dir_of(cfg)) / "router" / self.name
        self.pool = ReplicaPool(self.rcfg.replicas, self.metrics, self.rcfg.health_timeout_s)
        self.replicas = self.pool.grid  # [shard][replica]
        self.fanout = FanOut(self.pool, self.rcfg, self.metrics)
        self.latest: dict[str, dict] = {}  # collection -> {version, model_version, shards} of its LATEST
        self.refused: dict[tuple[str, str], str] = {}
        self.notes: dict[str, str] = {}  # collection -> why the pin did not move
        self.users: dict[str, UserEmbeddings | RedisUsers] = {}  # version -> snapshot
        self.users_latest: str | None = None
        self.users_note: str | None = None  # why the newest user snapshot is not usable yet
        self._redis = self._redis_sync = None  # router.user_store = "redis"
        self.store_error: str | None = None
        self.last_poll_at: str | None = None
        self._last_poll_ok: float | None = None
        self._state = RouterState(0, MappingProxyType({}), None)
        self._tasks: list[asyncio.Task] = []
        self._http = None

    @property
    def state(self) -> RouterState:
        return self._state

    # -- background: health checks and the store ----------------------------------------

    async def start(self) -> None:
        import httpx

        limits = httpx.Limits(
            max_connections=self.rcfg.max_connections * sum(map(len, self.replicas)),
            max_keepalive_connections=self.rcfg.max_connections * sum(map(len, self.replicas)),
        )
        headers = {"content-type": "application/json"}
        if self.cfg.serving.token:
            headers["authorization"] = f"Bearer {self.cfg.serving.token}"
        self._http = self.fanout.http = httpx.AsyncClient(
            limits=limits, headers=headers, timeout=self.rcfg.health_timeout_s
        )
        self.fanout.wire = WireClient(self.cfg.serving.token or None, connect_timeout_s=self.rcfg.health_timeout_s)
        if self.rcfg.user_store == "redis":
            import redis
            import redis.asyncio

            self._redis = redis.asyncio.Redis.from_url(self.rcfg.redis_url, socket_timeout=self.rcfg.deadline_ms / 1000)
            self._redis_sync = redis.Redis.from_url(self.rcfg.redis_url, socket_timeout=self.rcfg.health_timeout_s)
        self._tasks = [
            asyncio.create_task(self._health_loop(), name="ebr-router-health"),
            asyncio.create_task(self._store_loop(), name="ebr-router-store"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        if self._http is not None:
            await self._http.aclose()
        if self.fanout.wire is not None:
            self.fanout.wire.close()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis_sync.close()

    async def _health_loop(self) -> None:
        while True:
            await self.check_replicas()
            self.decide()
            await asyncio.sleep(self.rcfg.health_interval_s)

    async def _store_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.poll_store)
                self.store_error = None
                self.last_poll_at, self._last_poll_ok = now_iso(), time.monotonic()
            except Exception as err:  # noqa: BLE001 - the store may be down: keep what is pinned
                self.store_error = f"{type(err).__name__}: {err}"
                log.warning("router: cannot read the store (%s); the pinned sets keep serving", err)
            self.decide()
            await asyncio.sleep(self.poll_interval_s)

    async def check_replicas(self) -> None:
        await self.pool.check_all(self._http)

    def poll_store(self) -> None:
        """LATEST of every index kind (manifest: model, shard count) and of the user
        embeddings; a new user snapshot is downloaded (sha256) and loaded beside the old."""
        for collection in COLLECTIONS:
            kind = self.store.kind(INDEX_KINDS[collection])
            version = kind.latest()
            if version is None or self.latest.get(collection, {}).get("version") == version:
                continue
            manifest = kind.manifest(version)
            # Replaced, never mutated: decide() reads these on the event loop meanwhile.
            self.latest = {
                **self.latest,
                collection: {
                    "version": version,
                    "model_version": manifest.parents.get("model_version", ""),
                    "shards": shard_count(manifest),
                    "dim": int(manifest.params.get("dim", 0)),
                },
            }
        users_kind = self.store.kind(USER_EMBEDDINGS)
        version = users_kind.latest()
        if version is not None and version not in self.users:
            if self.rcfg.user_store == "redis":
                self._add_redis_users(version, users_kind.manifest(version).parents.get("model_version", ""))
            else:
                directory = users_kind.download(version, self.cache_dir / "users")
                self.users = {**self.users, version: load_user_embeddings(directory)}
                log.info("router: loaded user embeddings %s", version)
        if version in self.users:
            self.users_note = None
        self.users_latest = version

    def _add_redis_users(self, version: str, model: str) -> None:
        """Uses a user snapshot from Redis once its meta (written last) is there."""
        meta = snapshot_meta(self._redis_sync, version, prefix=self.rcfg.redis_prefix)
        if meta is None:
            self.users_note = (
                f"embeddings/users/{version} is not in the Redis profile store {self.rcfg.redis_url} yet "
                f"(no {meta_key(self.rcfg.redis_prefix, version)}); load it with `ebr profiles load`"
            )
            return
        if meta["model_version"] != model:
            self.users_note = (
                f"Redis holds embeddings/users/{version} of model {meta['model_version']!r}, its manifest "
                f"says {model!r}: not used; load it again"
            )
            return
        self.users = {
            **self.users,
            version: RedisUsers(version, model, meta["dim"], meta["count"], self.rcfg.redis_prefix, self._redis),
        }
        log.info("router: user embeddings %s in Redis (%d users)", version, meta["count"])

    def decide(self) -> None:
        """Moves each collection's pin to its LATEST once every shard has a healthy replica
        holding it (and, for stories, user embeddings of its model are loaded)."""
        old = self._state
        pins = dict(old.pins)
        for collection, latest in self.latest.items():
            version, model = latest["version"], latest["model_version"]
            pinned = pins.get(collection)
            if pinned is not None and pinned.version == version:
                self.notes.pop(collection, None)
                continue
            if latest["shards"] != self.shards:
                self.notes[collection] = (
                    f"indexes/{collection}/{version} is a set of {latest['shards']} shard(s), but "
                    f"router.replicas lists {self.shards}: not served; publish a set built with "
                    f"index.shards={self.shards} or change router.replicas"
                )
                if (collection, version) not in self.refused:
                    log.error("router: %s", self.notes[collection])
                    self.refused[(collection, version)] = self.notes[collection]
                continue
            lagging = [s for s in range(self.shards) if not any(r.holds(collection, version) for r in self.replicas[s])]
            if lagging:
                fallback = (
                    None
                    if pinned is not None and self.pool.covered(collection, pinned.version)
                    else self._common_set(collection)
                )
                if fallback is not None and (pinned is None or fallback.version != pinned.version):
                    # Nothing pinned yet (a router started during a rollout), or the pinned set is
                    # no longer held by every shard: the newest set every shard still holds.
                    pins[collection] = fallback
                    self.metrics.switches.labels(collection).inc()
                    log.info(
                        "router: %s answers from %s, the newest set every shard holds, until %s is",
                        collection,
                        fallback.version,
                        version,
                    )
                    pinned = fallback
                self.notes[collection] = (
                    f"indexes/{collection}/{version} is not yet held by a healthy replica of shard(s) "
                    f"{lagging}; answering from {pinned.version if pinned else 'nothing'}"
                )
                continue
            if collection == "stories" and self._users_for(model) is None:
                self.notes[collection] = (
                    f"no user embeddings of model {model!r} loaded yet for indexes/stories/{version}"
                )
                continue
            pins[collection] = Pin(collection, version, model, latest["dim"], now_iso())
            self.notes.pop(collection, None)
            self.metrics.switches.labels(collection).inc()
            log.info("router: %s now answers from %s (model %s)", collection, version, model)
        stories = pins.get("stories")
        users = self._users_for(stories.model_version) if stories else None
        if pins != dict(old.pins) or users is not old.users:
            self._state = RouterState(old.generation + 1, MappingProxyType(pins), users)
            self.metrics.pinned.clear()
            for pin in pins.values():
                self.metrics.pinned.labels(pin.collection, pin.version, pin.model_version).set(1)
            keep = {v for v in (self.users_latest, users.version if users else None) if v}
            stale = [v for v in self.users if v not in keep][: max(0, len(self.users) - KEEP_USER_SNAPSHOTS)]
            self.users = {v: u for v, u in self.users.items() if v not in stale}

    def _common_set(self, collection: str) -> Pin | None:
        """The newest version (by commit order) a healthy replica of every shard holds, with
        user embeddings of its model loaded for stories; None if there is none."""
        seen: dict[str, tuple[int, str, int, int, int]] = {}
        for replicas in self.replicas:
            for replica in replicas:
                if replica.healthy:
                    seen.update(replica.versions.get(collection, {}))
        for version, (_, model, dim, _, _) in sorted(seen.items(), key=lambda item: -item[1][0]):
            if self.pool.covered(collection, version) and (
                collection != "stories" or self._users_for(model) is not None
            ):
                return Pin(collection, version, model, dim, now_iso())
        return None

    def _users_for(self, model: str) -> UserEmbeddings | RedisUsers | None:
        """The newest loaded user snapshot of `model`: LATEST's if it matches, else an older one."""
        if self.users_latest in self.users and self.users[self.users_latest].model_version == model:
            return self.users[self.users_latest]
        matching = [u for u in self.users.values() if u.model_version == model]
        return matching[-1] if matching else None

    def describe(self) -> dict:
        state = self._state
        return {
            "model": self.name,
            "root": self.store.uri,
            "ready": self.ready_reason() is None,
            "shards": self.shards,
            "generation": state.generation,
            "pinned": {c: vars(p) for c, p in state.pins.items()},
            "user_embeddings": None
            if state.users is None
            else {
                "version": state.users.version,
                "model_version": state.users.model_version,
                "count": state.users.count,
            },
            "latest": dict(self.latest),
            "user_embeddings_latest": self.users_latest,
            "user_store": self.rcfg.user_store,
            "user_embeddings_note": self.users_note,
            "waiting": dict(self.notes),
            "refused": [
                {"kind": INDEX_KINDS[c], "collection": c, "version": v, "reason": r, "at": None}
                for (c, v), r in self.refused.items()
            ],
            # The single service's fields, so its clients (`ebr query versions`) read a router too.
            "served": self._served(state),
            "last_poll_at": self.last_poll_at,
            "seconds_since_last_successful_poll": -1.0
            if self._last_poll_ok is None
            else time.monotonic() - self._last_poll_ok,
            "last_reload": {
                "action": "waiting" if self.notes else ("swapped" if state.pins else "empty"),
                "detail": "; ".join(self.notes.values()) or (self.ready_reason() or "serving the newest sets"),
            },
            "store_error": self.store_error,
            "replicas": [[r.describe() for r in replicas] for replicas in self.replicas],
        }

    def _served(self, state: RouterState) -> dict | None:
        """The pinned sets and user embeddings in the shape of the single service's `served`."""
        stories = state.pins.get("stories")
        if stories is None:
            return None
        components = {}
        for collection, pin in state.pins.items():
            count = memory = 0
            for replicas in self.replicas:  # one healthy replica per shard reports its part
                held = next(
                    (
                        r.versions[collection][pin.version]
                        for r in replicas
                        if r.healthy and pin.version in r.versions.get(collection, {})
                    ),
                    None,
                )
                if held is not None:
                    count, memory = count + held[3], memory + held[4]
            components[INDEX_KINDS[collection]] = {
                "version": pin.version,
                "model_version": pin.model_version,
                "served_since": pin.since,
                "count": count,
                "dim": pin.dim,
                "memory_bytes": memory,
                "shards": self.shards,
            }
        users = state.users
        if users is not None:
            components[USER_EMBEDDINGS] = {
                "version": users.version,
                "model_version": users.model_version,
                "served_since": stories.since,
                "count": int(users.count),
                "dim": int(users.dim),
                "memory_bytes": int(getattr(users, "memory_bytes", 0)),
            }
        return {
            "generation": state.generation,
            "model_version": stories.model_version,
            "dim": stories.dim,
            "since": stories.since,
            "components": components,
        }

    def ready_reason(self) -> str | None:
        """Why the router cannot answer /v1/retrieve/stories now (None: it can)."""
        state = self._state
        pin = state.pins.get("stories")
        if pin is None:
            return self.notes.get("stories") or "no story shard set is held by a healthy replica of every shard yet"
        if state.users is None:
            return f"no user embeddings of model {pin.model_version!r} loaded" + (
                f" ({self.users_note})" if self.users_note else ""
            )
        up = sum(1 for replicas in self.replicas if any(r.holds("stories", pin.version) for r in replicas))
        if up / self.shards < self.cfg.serving.min_coverage:
            return (
                f"only {up} of {self.shards} shards have a healthy replica holding {pin.version} "
                f"(serving.min_coverage={self.cfg.serving.min_coverage:g})"
            )
        return None
