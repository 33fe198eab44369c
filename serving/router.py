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
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from artifacts import ArtifactStore
from config import EbrConfig
from index_builder.sharding import merge_top_k, shard_count, shard_of
from serving.api import RetrieveRequest, RetrieveResponse, SimilarRequest
from serving.deps import ServingConfigDep, api_dependencies
from serving.gatekeeper import Gatekeeper
from serving.metrics import LATENCY_BUCKETS
from serving.profile_store import RedisUsers, meta_key, snapshot_meta
from serving.query_checks import checked_embedding, checked_k
from serving.responses import PROMETHEUS_TEXT, ApiError, add_error_handlers, json_response, liveness
from serving.state import COLLECTIONS, INDEX_KINDS, USER_EMBEDDINGS, UserEmbeddings, load_user_embeddings, now_iso

log = logging.getLogger(__name__)

# User snapshots kept in memory: the one paired with the pinned story set, and the newest.
KEEP_USER_SNAPSHOTS = 2


class RouterMetrics:
    """Prometheus metrics of the router, in a registry of its own.

    ebr_router_requests_total{endpoint,status}, ebr_router_request_seconds{endpoint}
    ebr_router_shard_attempts_total{shard,result}   ok / error / timeout / wrong_version
    ebr_router_hedges_total{shard}                  attempts started because one was slow
    ebr_router_coverage                             histogram of the answers' coverage
    ebr_router_fanout_overhead_seconds              fan-out + merge minus the slowest shard
    ebr_router_pinned_info{collection,version,model_version}
    ebr_router_replica_healthy{shard,replica}
    ebr_router_switches_total{collection}
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("ebr_router_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "ebr_router_request_seconds",
            "Request latency inside the router",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "ebr_router_shard_attempts", "Requests to shard replicas", ["shard", "result"], registry=r
        )
        self.hedges = Counter("ebr_router_hedges", "Hedged attempts (a replica was slow)", ["shard"], registry=r)
        self.coverage = Histogram(
            "ebr_router_coverage", "Share of shards in an answer", buckets=(0.25, 0.5, 0.75, 0.99, 1.0), registry=r
        )
        self.overhead = Histogram(
            "ebr_router_fanout_overhead_seconds",
            "Fan-out and merge time beyond the slowest shard",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pinned = Gauge(
            "ebr_router_pinned_info",
            "The pinned shard-set versions (value 1)",
            ["collection", "version", "model_version"],
            registry=r,
        )
        self.healthy = Gauge(
            "ebr_router_replica_healthy",
            "1 while the replica passes its health check",
            ["shard", "replica"],
            registry=r,
        )
        self.switches = Counter("ebr_router_switches", "Moves of a pinned version", ["collection"], registry=r)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class Replica:
    """One shard server, as the health checks last saw it."""

    url: str
    shard: int
    healthy: bool = False
    reason: str = "not checked yet"
    held: dict[str, frozenset[str]] = field(default_factory=dict)  # collection -> versions
    current: dict[str, str] = field(default_factory=dict)  # collection -> the version its LATEST named
    # collection -> version -> (commit sequence, model version, dim, items, memory bytes) of what it holds
    versions: dict[str, dict[str, tuple[int, str, int, int, int]]] = field(default_factory=dict)
    checked_at: str | None = None

    def holds(self, collection: str, version: str) -> bool:
        return self.healthy and version in self.held.get(collection, ())

    def describe(self) -> dict:
        return {
            "url": self.url,
            "shard": self.shard,
            "healthy": self.healthy,
            "reason": self.reason,
            "held": {c: sorted(v) for c, v in self.held.items()},
            "current": dict(self.current),
            "checked_at": self.checked_at,
        }


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


@dataclass(frozen=True)
class ShardAnswer:
    shard: int
    status: int  # 200, or 404 (unknown id on /v1/vector)
    payload: dict | None
    replica: str | None
    attempts: int
    seconds: float


class Router:
    """Holds the replica health, the pins and the user snapshots; fans requests out."""

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
        self.replicas = [[Replica(url, shard) for url in urls] for shard, urls in enumerate(self.rcfg.replicas)]
        self._turn = [itertools.count() for _ in range(self.shards)]
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
        self._http = httpx.AsyncClient(limits=limits, headers=headers, timeout=self.rcfg.health_timeout_s)
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
        await asyncio.gather(*(self._check(replica) for replicas in self.replicas for replica in replicas))

    async def _check(self, replica: Replica) -> None:
        try:
            response = await self._http.get(f"{replica.url}/v1/shard", timeout=self.rcfg.health_timeout_s)
            body = orjson.loads(response.content) if response.status_code == 200 else None
            if body is None:
                raise RuntimeError(f"HTTP {response.status_code}")
            if (body.get("shard"), body.get("shards")) != (replica.shard, self.shards):
                raise RuntimeError(
                    f"it serves shard {body.get('shard')} of {body.get('shards')}, but router.replicas "
                    f"lists it under shard {replica.shard} of {self.shards}"
                )
            collections = body.get("collections", {})
            replica.held = {
                c: frozenset(v["version"] for v in info["versions"] if v.get("alive", True))
                for c, info in collections.items()
            }
            replica.current = {c: info["current"] for c, info in collections.items()}
            replica.versions = {
                c: {
                    v["version"]: (
                        int(v.get("sequence", 0)),
                        v.get("model_version", ""),
                        int(v.get("dim", 0)),
                        int(v.get("count", 0)),
                        int(v.get("memory_bytes", 0)),
                    )
                    for v in info["versions"]
                    if v.get("alive", True)
                }
                for c, info in collections.items()
            }
            replica.healthy, replica.reason = True, "ok"
        except Exception as err:  # noqa: BLE001 - any failure makes the replica unhealthy
            if replica.healthy:
                log.warning("router: replica %s of shard %d is unhealthy: %s", replica.url, replica.shard, err)
            replica.healthy, replica.reason = False, f"{type(err).__name__}: {err}"
        replica.checked_at = now_iso()
        self.metrics.healthy.labels(str(replica.shard), replica.url).set(1 if replica.healthy else 0)

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
                    if pinned is not None and self._covered(collection, pinned.version)
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

    def _covered(self, collection: str, version: str) -> bool:
        return all(any(r.holds(collection, version) for r in replicas) for replicas in self.replicas)

    def _common_set(self, collection: str) -> Pin | None:
        """The newest version (by commit order) a healthy replica of every shard holds, with
        user embeddings of its model loaded for stories; None if there is none."""
        seen: dict[str, tuple[int, str, int, int, int]] = {}
        for replicas in self.replicas:
            for replica in replicas:
                if replica.healthy:
                    seen.update(replica.versions.get(collection, {}))
        for version, (_, model, dim, _, _) in sorted(seen.items(), key=lambda item: -item[1][0]):
            if self._covered(collection, version) and (collection != "stories" or self._users_for(model) is not None):
                return Pin(collection, version, model, dim, now_iso())
        return None

    def _users_for(self, model: str) -> UserEmbeddings | RedisUsers | None:
        """The newest loaded user snapshot of `model`: LATEST's if it matches, else an older one."""
        if self.users_latest in self.users and self.users[self.users_latest].model_version == model:
            return self.users[self.users_latest]
        matching = [u for u in self.users.values() if u.model_version == model]
        return matching[-1] if matching else None

    # -- the fan-out -------------------------------------------------------------------

    def _candidates(self, shard: int, collection: str, version: str) -> list[Replica]:
        """Replicas to try, in turn: healthy ones holding the version, rotated per request
        (spreads the load), then the others (a health check may be stale)."""
        replicas = self.replicas[shard]
        start = next(self._turn[shard]) % len(replicas)
        rotated = replicas[start:] + replicas[:start]
        good = [r for r in rotated if r.holds(collection, version)]
        return good + [r for r in rotated if r not in good]

    async def ask_shard(self, shard: int, path: str, body: dict, version: str, deadline: float) -> ShardAnswer | None:
        """One shard's answer for `version`: the first good answer of up to max_attempts
        replicas (the next one started at once on an error, or after hedge_after_ms); None
        when none answered by the deadline."""
        collection = path.rsplit("/", 1)[1]
        candidates = self._candidates(shard, collection, version)[: self.rcfg.max_attempts]
        payload = orjson.dumps(body)
        started = time.perf_counter()
        pending: dict[asyncio.Task, Replica] = {}
        tried = 0

        def launch() -> None:
            nonlocal tried
            replica = candidates[tried]
            tried += 1
            pending[asyncio.create_task(self._attempt(replica, path, payload, version, deadline))] = replica

        launch()
        try:
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = min(remaining, self.rcfg.hedge_after_ms / 1000) if tried < len(candidates) else remaining
                done, _ = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # slow: hedge on the next replica, keep waiting for both
                    if tried < len(candidates):
                        self.metrics.hedges.labels(str(shard)).inc()
                        launch()
                    continue
                for task in done:
                    replica = pending.pop(task)
                    result = task.result()
                    if isinstance(result, tuple):
                        return ShardAnswer(
                            shard, result[0], result[1], replica.url, tried, time.perf_counter() - started
                        )
                    self.metrics.attempts.labels(str(shard), result).inc()
                if not pending and tried < len(candidates):
                    launch()
            for _ in pending:
                self.metrics.attempts.labels(str(shard), "timeout").inc()
            return None
        finally:
            for task in pending:
                task.cancel()

    async def _attempt(self, replica: Replica, path: str, payload: bytes, version: str, deadline: float):
        """(status, body) of a good answer, or the name of the failure."""
        import httpx

        try:
            response = await self._http.post(
                f"{replica.url}{path}", content=payload, timeout=max(0.001, deadline - time.monotonic())
            )
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as err:
            replica.healthy, replica.reason = False, f"{type(err).__name__}: {err} (until its next health check)"
            return "error"
        if response.status_code == 404 and path.startswith("/v1/vector/"):
            self.metrics.attempts.labels(str(replica.shard), "ok").inc()
            return 404, None
        if response.status_code != 200:
            if response.status_code in (409, 503):  # it no longer holds the version / is reloading
                replica.healthy, replica.reason = False, f"HTTP {response.status_code} (until its next health check)"
            return "error"
        body = orjson.loads(response.content)
        if body.get("version") != version:  # never merged: another generation
            return "wrong_version"
        self.metrics.attempts.labels(str(replica.shard), "ok").inc()
        return 200, body

    async def search(self, pin: Pin, query: np.ndarray, k: int, exclude: list[str], deadline: float) -> dict:
        """Fans the query out to every shard for `pin.version` and merges: the answer body
        without `served` (items, coverage, per-shard details)."""
        body = {"embedding": query.tolist(), "k": k, "exclude": exclude, "version": pin.version}
        path = f"/v1/search/{pin.collection}"
        started = time.perf_counter()
        answers = await asyncio.gather(
            *(self.ask_shard(s, path, body, pin.version, deadline) for s in range(self.shards))
        )
        got = [a for a in answers if a is not None]
        merged = merge_top_k([[(i, s) for i, s in a.payload["items"]] for a in got], k)
        if got:
            self.metrics.overhead.observe(max(0.0, time.perf_counter() - started - max(a.seconds for a in got)))
        coverage = len(got) / self.shards
        self.metrics.coverage.observe(coverage)
        return {
            "items": [{"id": item_id, "score": score} for item_id, score in merged],
            "coverage": coverage,
            "shards": [
                {"shard": a.shard, "version": a.payload["version"], "replica": a.replica, "attempts": a.attempts}
                for a in got
            ],
            "missing_shards": [s for s, a in enumerate(answers) if a is None],
        }

    async def stored_vector(self, pin: Pin, item_id: str, deadline: float) -> np.ndarray | None:
        shard = shard_of(item_id, self.shards)
        answer = await self.ask_shard(
            shard, f"/v1/vector/{pin.collection}", {"id": item_id, "version": pin.version}, pin.version, deadline
        )
        if answer is None:
            raise ApiError(
                503,
                "shard_unavailable",
                f"shard {shard} (which holds {item_id!r}) did not answer within "
                f"router.deadline_ms={self.rcfg.deadline_ms:g}",
            )
        if answer.status == 404:
            return None
        return np.asarray(answer.payload["vector"], dtype=np.float32)

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


def create_router_app(cfg: EbrConfig, routers: dict[str, Router]) -> FastAPI:
    """The router's ASGI app: the retrieval service's routes, answered by fan-out.

    `routers` maps a model name to its Router (its own root, shard servers, pins and user
    embeddings: one consistent pair per model); a request picks one with `?model=NAME`,
    default `router.model_name`.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        for router in routers.values():
            await router.start()
        try:
            yield
        finally:
            for router in routers.values():
                await router.close()

    app = FastAPI(
        title="EBR retrieval router",
        version="1",
        lifespan=lifespan,
        description="The retrieval API over shard servers: one shard-set generation per answer, merged "
        "top-K, `coverage` = the share of shards that answered.",
    )
    app.state.serving_config = cfg.serving  # serving.deps.ServingConfigDep
    app.state.model_routers = ModelRouters(routers, cfg.router.model_name)  # ModelRoutersDep
    app.state.request_read_timeout_s = cfg.serving.request_read_timeout_s

    add_error_handlers(app, validation_details=False)
    app.include_router(liveness)
    app.include_router(router_probes)
    app.include_router(router_api, dependencies=api_dependencies(cfg.serving))
    app.add_middleware(Gatekeeper, cfg=cfg.serving, metrics=routers[cfg.router.model_name].metrics)
    return app


@dataclass(frozen=True)
class ModelRouters:
    """The app's Router per model name; `pick(None)` is the default model's."""

    routers: dict[str, Router]
    default: str

    def pick(self, model: str | None) -> Router:
        router = self.routers.get(model or self.default)
        if router is None:
            raise ApiError(
                404, "unknown_model", f"unknown model {model!r}; this router serves {', '.join(self.routers)}"
            )
        return router


def model_routers(request: Request) -> ModelRouters:
    return request.app.state.model_routers


# The routers, not one of them: a handler picks its model's after its body has been
# validated (a dependency that raised unknown_model would answer before a 422).
ModelRoutersDep = Annotated[ModelRouters, Depends(model_routers)]

router_probes = APIRouter()
router_api = APIRouter(prefix="/v1")


@router_probes.get("/readyz")
async def readyz(models: ModelRoutersDep, model: str | None = None) -> Response:
    router = models.pick(model)
    reason = router.ready_reason()
    state = router.state
    pin = state.pins.get("stories")
    body = {
        "ready": reason is None,
        "model": router.name,
        "generation": state.generation,
        "model_version": pin.model_version if pin else None,
    }
    if reason is not None:
        body["reason"] = reason
    return json_response(body, 200 if reason is None else 503)


@router_probes.get("/metrics")
async def prometheus(models: ModelRoutersDep) -> Response:
    return Response(models.pick(None).metrics.exposition(), media_type=PROMETHEUS_TEXT)


@router_api.get("/versions", summary="pinned shard sets, LATEST, user embeddings, replica health")
async def versions(models: ModelRoutersDep, model: str | None = None) -> Response:
    return json_response(
        {**models.pick(model).describe(), "models": {name: r.describe() for name, r in models.routers.items()}}
    )


@router_api.post(
    "/retrieve/{collection}",
    response_model=RetrieveResponse,
    summary="top-K of a collection for a user id or an embedding, merged over every shard",
)
async def retrieve(
    collection: str, body: RetrieveRequest, models: ModelRoutersDep, serving: ServingConfigDep, model: str | None = None
) -> Response:
    router = models.pick(model)
    deadline = time.monotonic() + router.rcfg.deadline_ms / 1000
    state = router.state  # read once: one generation for the whole request
    pin = _pin_of(state, collection, router)
    k = checked_k(body.k, serving)
    if (body.user_id is None) == (body.embedding is None):
        raise ApiError(422, "invalid_request", "give exactly one of user_id or embedding")
    users = state.users
    if body.user_id is not None:
        if users is None or users.model_version != pin.model_version:
            raise ApiError(
                503,
                "not_ready",
                f"no user embeddings of model {pin.model_version!r} are loaded for {collection} {pin.version}",
            )
        query = await _user_vector(users, body.user_id)
        if query is None:
            raise ApiError(
                404,
                "unknown_user",
                f"user {body.user_id!r} is not in the served user embeddings "
                f"({users.version}, model {users.model_version})",
            )
    else:
        query = checked_embedding(body.embedding, pin.dim)
    answer = await router.search(pin, query, k, body.exclude, deadline)
    return _respond(router, state, pin, collection, k, answer, serving.min_coverage)


@router_api.post(
    "/similar/{collection}",
    response_model=RetrieveResponse,
    summary="items closest to one item (the item itself excluded), merged over every shard",
)
async def similar(
    collection: str, body: SimilarRequest, models: ModelRoutersDep, serving: ServingConfigDep, model: str | None = None
) -> Response:
    router = models.pick(model)
    deadline = time.monotonic() + router.rcfg.deadline_ms / 1000
    state = router.state
    pin = _pin_of(state, collection, router)
    k = checked_k(body.k, serving)
    query = await router.stored_vector(pin, body.id, deadline)
    if query is None:
        raise ApiError(404, "unknown_id", f"{collection} index {pin.version} holds no id {body.id!r}")
    answer = await router.search(pin, query, k, [body.id, *body.exclude], deadline)
    return _respond(router, state, pin, collection, k, answer, serving.min_coverage)


async def _user_vector(users: UserEmbeddings | RedisUsers, user_id: str) -> np.ndarray | None:
    if not isinstance(users, RedisUsers):
        return users.vector(user_id)
    from redis.exceptions import RedisError

    try:
        return await users.lookup(user_id)
    except RedisError as err:
        raise ApiError(
            503,
            "user_store_unavailable",
            f"the Redis profile store did not answer ({type(err).__name__}: {err}); retry shortly",
        ) from None


def _pin_of(state: RouterState, collection: str, router: Router) -> Pin:
    if collection not in INDEX_KINDS:
        raise ApiError(
            404, "unknown_collection", f"unknown collection {collection!r}; use one of {', '.join(COLLECTIONS)}"
        )
    pin = state.pins.get(collection)
    if pin is None:
        why = router.notes.get(collection) or f"no {collection} shard set is published or held by every shard yet"
        raise ApiError(503, "not_ready" if collection == "stories" else "collection_not_served", why)
    return pin


def _respond(
    router: Router, state: RouterState, pin: Pin, collection: str, k: int, answer: dict, min_coverage: float
) -> Response:
    if answer["coverage"] < min_coverage or not answer["shards"]:
        raise ApiError(
            503,
            "insufficient_coverage",
            f"{len(answer['shards'])} of {len(answer['shards']) + len(answer['missing_shards'])} shards answered "
            f"(shards {answer['missing_shards']} did not, within the deadline), below serving.min_coverage="
            f"{min_coverage:g}",
        )
    users = state.users
    return json_response(
        {
            "collection": collection,
            "k": k,
            "model": router.name,
            "items": answer["items"],
            "coverage": answer["coverage"],
            "served": {
                "generation": state.generation,
                "model_version": pin.model_version,
                "index_version": pin.version,
                "user_embeddings_version": users.version if users is not None else None,
            },
            "shards": answer["shards"],
            "missing_shards": answer["missing_shards"],
        }
    )


def build_router(cfg: EbrConfig, *, poll_interval_s: float | None = None) -> tuple[FastAPI, Router]:
    """The app and the Router of the default model (`app.state.routers` has every model's).

    The default model is `root` + `router.replicas`; each of `router.models` has its own
    root and replicas (e.g. a candidate model in shadow, or the other arm of an A/B split).
    """
    metrics = RouterMetrics()
    routers = {cfg.router.model_name: Router(cfg, metrics, poll_interval_s=poll_interval_s)}
    for name, model in cfg.router.models.items():
        own = cfg.model_copy(
            update={
                "root": model.root,
                "router": cfg.router.model_copy(update={"replicas": model.replicas, "models": {}}),
            }
        )
        routers[name] = Router(own, metrics, poll_interval_s=poll_interval_s, name=name)
    app = create_router_app(cfg, routers)
    app.state.routers = routers
    return app, routers[cfg.router.model_name]


def serve_router(cfg: EbrConfig, *, host: str, port: int) -> None:
    """`ebr route` in the foreground until interrupted."""
    import sys

    import uvicorn

    from serving.server import SWITCH_INTERVAL_S, uvicorn_config

    sys.setswitchinterval(SWITCH_INTERVAL_S)  # the store poll thread must not hold the loop for 5 ms at a time
    app, _ = build_router(cfg)
    uvicorn.Server(uvicorn_config(app, host, port, cfg.serving.request_read_timeout_s)).run()
