"""A shard server (`ebr serve --shard I/S`): shard I of every shard set, searched by vector.

    LATEST of indexes/<collection> ──► download_shard (sha256) ──► load (a new object, or an
    index process) ──► ShardState: per collection the current version + the ones before it

A shard server holds no user embeddings and pairs nothing: the router (`serving.router`)
looks the user up, fans out to one replica of every shard and merges. What the router
needs from a shard is that it answers *for a named version*: during a rollout shard 0
may already hold the new set while shard 1 is still loading it, and a router pinned to
the old set must still get shard 0's answer from the old set. So a shard server keeps
`serving.shard_keep_versions` versions of each collection loaded (the one LATEST names
and the ones served before it), answers `/v1/search/{collection}` from the version the
request names (409 `version_not_held` if it holds no such version), and reports what it
holds on `/v1/shard`, which is the router's health check.

A version whose shard count is not S (a set of another size, or an unsharded version
for S > 1) is refused with the reason and listed on `/v1/shard`; the server keeps what it
served. S = 1 serves unsharded versions (shard 0 of 1 is the whole index).

Routes: POST /v1/search/{collection}, POST /v1/vector/{collection} (a stored vector, for
the router's /v1/similar), GET /v1/shard, /v1/versions (the same), /healthz, /readyz,
/metrics. The router asks the same two questions over the shard wire (`serving.wire`,
`answer_wire`) on the port `/v1/shard` advertises (`serving.shard_wire_port`).
"""

from __future__ import annotations

import logging
import shutil
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import Field

from artifacts import ArtifactError, ArtifactStore
from config import EbrConfig, ServingConfig
from index_builder.loaded_index import LoadedIndex, load_index
from index_builder.sharding import ShardMismatchError, download_shard, shard_count
from serving import searcher, wire
from serving.api import _Body
from serving.deps import ServingConfigDep, api_dependencies
from serving.gatekeeper import Gatekeeper
from serving.metrics import ServingMetrics
from serving.poller import Poller
from serving.query_checks import checked_embedding, checked_k
from serving.refusals import PERMANENT_ERRORS
from serving.responses import PROMETHEUS_TEXT, ApiError, add_error_handlers, json_response, liveness
from serving.searcher import IndexProcess, SearcherDiedError, SearcherLoadError, open_index_process
from serving.state import COLLECTIONS, INDEX_KINDS, now_iso

log = logging.getLogger(__name__)


class ShardSearchRequest(_Body):
    """Top-k of this shard for a query vector, from one version of the collection."""

    embedding: list[float] = Field(description="the query vector (dim finite floats)")
    k: int | None = Field(None, description="results wanted, 1..serving.max_k")
    exclude: list[str] = Field(default_factory=list, description="ids never returned")
    version: str | None = Field(None, description="the shard-set version to answer from (default: the current one)")


class ShardVectorRequest(_Body):
    id: str
    version: str | None = None


@dataclass(frozen=True, eq=False)
class HeldVersion:
    """One version's shard, loaded: `value` is a LoadedIndex or an IndexProcess."""

    version: str
    model_version: str
    sequence: int
    served_since: str
    directory: Path
    value: LoadedIndex | IndexProcess

    @property
    def alive(self) -> bool:
        return getattr(self.value, "alive", True)

    def describe(self) -> dict:
        return {
            "version": self.version,
            "model_version": self.model_version,
            "sequence": self.sequence,
            "served_since": self.served_since,
            "count": int(self.value.count),
            "dim": int(self.value.dim),
            "ef": int(self.value.ef),
            "memory_bytes": int(self.value.memory_bytes),
            "alive": self.alive,
        }


@dataclass(frozen=True, eq=False)
class ShardState:
    """What requests read (once each): per collection, the current version and every held one."""

    generation: int
    current: MappingProxyType  # collection -> version
    held: MappingProxyType  # collection -> MappingProxyType(version -> HeldVersion), newest first

    def version(self, collection: str, version: str | None) -> HeldVersion | None:
        versions = self.held.get(collection)
        if not versions:
            return None
        return versions.get(version or self.current[collection])


@dataclass
class ShardHolder:
    """Polls LATEST of every collection and keeps shard `shard` of its newest versions loaded."""

    store: ArtifactStore
    cache_dir: Path
    metrics: ServingMetrics
    shard: int
    shards: int
    poll_interval_s: float = 5.0
    keep_versions: int = 2
    searcher: str = "process"
    reload_nice: int = 0
    reload_idle: bool = False
    refused: dict[tuple[str, str], str] = field(default_factory=dict)  # (collection, version) -> why
    errors: dict[str, str] = field(default_factory=dict)  # collection -> last transient error
    last_poll_at: str | None = None
    wire_port: int | None = None  # the shard wire's port once listening (serving.wire)

    def __post_init__(self) -> None:
        self._state = ShardState(0, MappingProxyType({}), MappingProxyType({}))
        self._thread: Poller | None = None

    @property
    def state(self) -> ShardState:
        return self._state

    @property
    def ready(self) -> bool:
        held = self._state.version("stories", None) if "stories" in self._state.current else None
        return held is not None and held.alive

    def start(self) -> None:
        if self._thread is None:
            self._thread = Poller.begin(
                self.poll_once,
                self.poll_interval_s,
                searcher=self.searcher,
                reload_nice=self.reload_nice,
                name="ebr-shard-reloader",
                logger=log,
                crash_message="shard poll crashed; the served state is unchanged",
            )

    def close(self) -> None:
        if self._thread is not None:
            self._thread.stop(30)
            self._thread = None
        self._state = ShardState(self._state.generation + 1, MappingProxyType({}), MappingProxyType({}))
        self.metrics.ready.set(0)

    def poll_once(self) -> bool:
        """One pass over every collection; True if the state changed."""
        state = self._state
        current, held = dict(state.current), {c: dict(v) for c, v in state.held.items()}
        changed = False
        for collection in COLLECTIONS:
            kind = self.store.kind(INDEX_KINDS[collection])
            for version, one in list(held.get(collection, {}).items()):
                if not one.alive:  # its index process died: load it again from the cache
                    log.warning(
                        "the shard %d index process of %s/%s died; restarting it", self.shard, collection, version
                    )
                    self.metrics.searcher_restarts.labels(kind.name).inc()
                    try:
                        held[collection][version] = HeldVersion(
                            one.version,
                            one.model_version,
                            one.sequence,
                            one.served_since,
                            one.directory,
                            self._open(one.directory, collection),
                        )
                    except Exception as err:  # noqa: BLE001 - dropped; LATEST brings it back if it is current
                        log.error("restarting %s/%s shard %d failed: %s", collection, version, self.shard, err)
                        del held[collection][version]
                    changed = True
            try:
                latest = kind.latest()
            except Exception as err:  # noqa: BLE001 - that collection stays as served
                self.errors[collection] = f"{type(err).__name__}: {err}"
                continue
            if latest is None or (collection, latest) in self.refused:
                continue
            if latest in held.get(collection, {}):
                if current.get(collection) != latest:  # a rollback to a version still held
                    current[collection], changed = latest, True
                continue
            try:
                loaded = self._load(kind, collection, latest)
            except PERMANENT_ERRORS as err:
                self.refused[(collection, latest)] = str(err)
                self.metrics.reloads.labels(kind.name, "failure").inc()
                self.metrics.refused_versions.labels(kind.name).inc()
                log.error("refused %s/%s for shard %d of %d: %s", kind.name, latest, self.shard, self.shards, err)
                continue
            except (ArtifactError, OSError, SearcherDiedError, SearcherLoadError) as err:  # retried at the next poll
                self.errors[collection] = f"{type(err).__name__}: {err}"
                self.metrics.reloads.labels(kind.name, "failure").inc()
                log.warning(
                    "loading %s/%s shard %d failed (%s); retried at the next poll", kind.name, latest, self.shard, err
                )
                continue
            self.errors.pop(collection, None)
            self.metrics.reloads.labels(kind.name, "success").inc()
            versions = {latest: loaded, **held.get(collection, {})}
            for stale in list(versions)[self.keep_versions :]:
                del versions[stale]  # its index process exits when the last request on it ends
            held[collection], current[collection], changed = versions, latest, True
            log.info(
                "shard %d/%d: serving %s/%s (model %s)",
                self.shard,
                self.shards,
                kind.name,
                latest,
                loaded.model_version,
            )
        self.last_poll_at = now_iso()
        self.metrics.poll_succeeded()
        if changed:
            self._state = ShardState(
                state.generation + 1,
                MappingProxyType(current),
                MappingProxyType({c: MappingProxyType(v) for c, v in held.items()}),
            )
            self.metrics.swaps.inc()
            self.metrics.show_served(
                {
                    INDEX_KINDS[c]: (
                        current[c],
                        held[c][current[c]].model_version,
                        int(held[c][current[c]].value.count),
                        int(held[c][current[c]].value.memory_bytes),
                    )
                    for c in current
                }
            )
            self._prune_cache()
        self.metrics.ready.set(1 if self.ready else 0)
        return changed

    def _load(self, kind, collection: str, version: str) -> HeldVersion:
        manifest = kind.manifest(version)
        found = shard_count(manifest)
        if found != self.shards:
            raise ShardMismatchError(
                f"{kind.name}/{version} is a set of {found} shard(s); this server serves shard {self.shard} of "
                f"{self.shards}: start it with --shard I/{found}, or publish a set built with index.shards={self.shards}"
            )
        directory = download_shard(kind, version, self.shard, self.shards, self._cache_of(collection))
        value = self._open(directory, collection)
        return HeldVersion(
            version, manifest.parents.get("model_version", ""), manifest.sequence, now_iso(), directory, value
        )

    def _open(self, directory: Path, collection: str) -> LoadedIndex | IndexProcess:
        if self.searcher == "process":
            return open_index_process(
                directory,
                collection,
                beside_served=bool(self._state.current),
                nice=self.reload_nice,
                idle=self.reload_idle,
            )
        return load_index(directory, collection, verify=False)  # download_shard checked every sha256

    def _cache_of(self, collection: str) -> Path:
        return self.cache_dir / f"shard-{self.shard}-of-{self.shards}" / collection

    def _prune_cache(self) -> None:
        for collection in COLLECTIONS:
            folder = self._cache_of(collection)
            if folder.is_dir():
                keep = set(self._state.held.get(collection, {}))
                for stale in folder.iterdir():
                    if stale.is_dir() and stale.name not in keep:
                        shutil.rmtree(stale, ignore_errors=True)

    def describe(self) -> dict:
        state = self._state
        return {
            "ready": self.ready,
            "shard": self.shard,
            "shards": self.shards,
            "generation": state.generation,
            "collections": {
                c: {"current": state.current[c], "versions": [h.describe() for h in state.held[c].values()]}
                for c in state.current
            },
            "refused": [{"collection": c, "version": v, "reason": r} for (c, v), r in self.refused.items()],
            "errors": dict(self.errors),
            "last_poll_at": self.last_poll_at,
            "wire": None if self.wire_port is None else {"port": self.wire_port},
        }


def create_shard_app(
    cfg: ServingConfig, holder: ShardHolder, *, start_reloader: bool = True, wire_host: str | None = None
) -> FastAPI:
    """The shard server's ASGI app. The lifespan starts and stops the holder's poller and,
    given `wire_host`, the shard wire on `serving.shard_wire_port` of that host."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        wire_server = None
        if wire_host is not None and cfg.shard_wire_port >= 0:
            wire_server = await wire.start_server(
                lambda meta, payload: answer_wire(holder, cfg, meta, payload),
                wire_host,
                cfg.shard_wire_port,
                token=cfg.token or None,
                observe=holder.metrics.observe_request,
            )
            holder.wire_port = wire_server.sockets[0].getsockname()[1]
        if start_reloader:
            holder.start()
        try:
            yield
        finally:
            if wire_server is not None:
                wire_server.close()
                holder.wire_port = None
            if start_reloader:
                holder.close()

    app = FastAPI(
        title=f"EBR shard server (shard {holder.shard} of {holder.shards})",
        version="1",
        lifespan=lifespan,
        description="One shard of every shard-set index version, searched by vector; see serving.router.",
    )
    app.state.serving_config = cfg  # serving.deps.ServingConfigDep
    app.state.holder = holder  # HolderDep
    app.state.request_read_timeout_s = cfg.request_read_timeout_s

    add_error_handlers(app, validation_details=False, http_codes={})

    app.include_router(liveness)
    app.include_router(shard_probes)
    app.include_router(shard_api, dependencies=api_dependencies(cfg))
    app.add_middleware(Gatekeeper, cfg=cfg, metrics=holder.metrics)
    return app


async def shard_holder(request: Request) -> ShardHolder:
    return request.app.state.holder


HolderDep = Annotated[ShardHolder, Depends(shard_holder)]

shard_probes = APIRouter()
shard_api = APIRouter(prefix="/v1")


@shard_probes.get("/readyz")
async def readyz(holder: HolderDep) -> Response:
    if holder.ready:
        return json_response({"ready": True, "shard": holder.shard, "shards": holder.shards})
    return json_response(
        {
            "ready": False,
            "shard": holder.shard,
            "shards": holder.shards,
            "reason": "no stories shard loaded yet (see /v1/shard)",
        },
        503,
    )


@shard_probes.get("/metrics")
async def prometheus(holder: HolderDep) -> Response:
    return Response(holder.metrics.exposition(), media_type=PROMETHEUS_TEXT)


@shard_api.get("/shard", summary="which shard this is and every version it holds (the router's health check)")
async def shard_status(holder: HolderDep) -> Response:
    return json_response(holder.describe())


@shard_api.get("/versions", summary="the same as /v1/shard")
async def versions(holder: HolderDep) -> Response:
    return json_response(holder.describe())


@shard_api.post("/search/{collection}", summary="this shard's top-k for a vector, from the version named")
async def search(collection: str, body: ShardSearchRequest, holder: HolderDep, cfg: ServingConfigDep) -> Response:
    return json_response(await _search(holder, cfg, collection, body.version, body.k, body.embedding, body.exclude))


@shard_api.post("/vector/{collection}", summary="a stored vector of this shard, from the version named")
async def stored_vector(collection: str, body: ShardVectorRequest, holder: HolderDep) -> Response:
    held, found = await _stored_vector(holder, collection, body.version, body.id)
    return json_response({"version": held.version, "model_version": held.model_version, "vector": found.tolist()})


async def _search(holder: ShardHolder, cfg: ServingConfig, collection: str, version, k, embedding, exclude) -> dict:
    state = holder.state  # read once: this request answers from this state to the end
    held = _held(state, collection, version)
    k = checked_k(k, cfg)
    query = checked_embedding(embedding, int(held.value.dim))
    try:
        hits = (await searcher.search(held.value, query, k, exclude))[0]
    except SearcherDiedError as err:
        raise _index_unavailable(err) from err
    return {
        "collection": collection,
        "shard": holder.shard,
        "shards": holder.shards,
        "version": held.version,
        "model_version": held.model_version,
        "items": [[item_id, score] for item_id, score in hits],
    }


async def _stored_vector(holder: ShardHolder, collection: str, version, item_id: str):
    held = _held(holder.state, collection, version)
    try:
        found = await searcher.vector(held.value, item_id)
    except SearcherDiedError as err:
        raise _index_unavailable(err) from err
    if found is None:
        raise ApiError(
            404, "unknown_id", f"shard {holder.shard} of {collection} {held.version} holds no id {item_id!r}"
        )
    return held, found


async def answer_wire(holder: ShardHolder, cfg: ServingConfig, meta: dict, payload: bytes) -> tuple[dict, bytes]:
    """One shard-wire request (`serving.wire`): the HTTP routes' answers, the query vector
    and a stored vector as float32 bytes."""
    op, collection = meta.get("op"), meta.get("collection")
    version = meta.get("version")
    if not isinstance(collection, str) or not (version is None or isinstance(version, str)):
        raise ApiError(400, "invalid_request", "a wire request names its collection and version as strings")
    if op == "search":
        k, exclude = meta.get("k"), meta.get("exclude") or []
        if not (k is None or type(k) is int) or not (
            isinstance(exclude, list) and all(isinstance(e, str) for e in exclude)
        ):
            raise ApiError(422, "invalid_request", "k must be an integer and exclude a list of ids")
        if len(payload) % 4:
            raise ApiError(422, "invalid_embedding", f"a float32 vector has 4 bytes a value, not {len(payload)}")
        query = np.frombuffer(payload, dtype="<f4")
        return await _search(holder, cfg, collection, version, k, query, exclude), b""
    if op == "vector":
        if not isinstance(meta.get("id"), str):
            raise ApiError(422, "invalid_request", "a vector request names its id as a string")
        held, found = await _stored_vector(holder, collection, version, meta["id"])
        return {"version": held.version, "model_version": held.model_version}, found.astype("<f4").tobytes()
    raise ApiError(400, "unknown_op", f"unknown wire op {op!r}; use search or vector")


def _index_unavailable(err: SearcherDiedError) -> ApiError:
    """503 for a request whose index process died: the poller loads the version again."""
    return ApiError(503, "index_unavailable", f"{err}; it is being loaded again, retry on another replica")


def _held(state: ShardState, collection: str, version: str | None) -> HeldVersion:
    if collection not in INDEX_KINDS:
        raise ApiError(
            404, "unknown_collection", f"unknown collection {collection!r}; use one of {', '.join(COLLECTIONS)}"
        )
    if collection not in state.current:
        raise ApiError(
            503, "collection_not_served", f"no {collection} shard is loaded (none published yet, or refused)"
        )
    held = state.version(collection, version)
    if held is None:
        have = ", ".join(state.held[collection])
        raise ApiError(409, "version_not_held", f"this shard holds {collection} versions {have}, not {version!r}")
    return held


def build_shard_server(
    cfg: EbrConfig,
    shard: int,
    shards: int,
    *,
    poll_interval_s: float | None = None,
    start_reloader: bool = True,
    wire_host: str | None = None,
) -> tuple[FastAPI, ShardHolder]:
    from serving.server import cache_dir_of

    holder = ShardHolder(
        ArtifactStore.from_config(cfg),
        cache_dir_of(cfg),
        ServingMetrics(),
        shard,
        shards,
        poll_interval_s=poll_interval_s or cfg.serving.poll_interval_s,
        keep_versions=cfg.serving.shard_keep_versions,
        searcher=cfg.serving.searcher,
        reload_nice=cfg.serving.reload_nice,
        reload_idle=cfg.serving.reload_idle,
    )
    return create_shard_app(cfg.serving, holder, start_reloader=start_reloader, wire_host=wire_host), holder


def serve_shard(
    cfg: EbrConfig, shard: int, shards: int, *, host: str, port: int, poll_interval_s: float | None = None
) -> None:
    """`ebr serve --shard I/S` in the foreground until interrupted."""
    import sys

    import uvicorn

    from serving.server import SWITCH_INTERVAL_S, uvicorn_config

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app, _ = build_shard_server(cfg, shard, shards, poll_interval_s=poll_interval_s, wire_host=host)
    uvicorn.Server(uvicorn_config(app, host, port, cfg.serving.request_read_timeout_s)).run()
