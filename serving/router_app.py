"""The router's HTTP app (`ebr route`): the retrieval service's routes, answered by fan-out
over shard servers (`serving.router`), for one model or several side by side.

`build_router(cfg)` makes the app and its Routers; `serve_router(cfg, host=, port=)` runs it
in the foreground. Routes are module-level handlers on APIRouters, as in the service
(`serving.routes`): the routers come by dependency (`ModelRoutersDep`), the serving settings
and the bearer token as in `serving.deps`.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from config import EbrConfig
from serving.api import RetrieveRequest, RetrieveResponse, SimilarRequest
from serving.deps import ServingConfigDep, api_dependencies
from serving.gatekeeper import Gatekeeper
from serving.hot_path import HotRoute, HotRoutes
from serving.profile_store import RedisUsers
from serving.query_checks import checked_embedding, checked_k
from serving.responses import PROMETHEUS_TEXT, ApiError, add_error_handlers, json_response, liveness
from serving.router import Pin, Router, RouterState
from serving.router_metrics import RouterMetrics
from serving.state import COLLECTIONS, INDEX_KINDS, UserEmbeddings


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

    async def retrieve_plain(collection: str, body: RetrieveRequest, model: str | None) -> Response:
        return await retrieve(collection, body, app.state.model_routers, cfg.serving, model)

    async def similar_plain(collection: str, body: SimilarRequest, model: str | None) -> Response:
        return await similar(collection, body, app.state.model_routers, cfg.serving, model)

    # The retrieval requests' short way past FastAPI's per-request work (serving.hot_path).
    hot = [
        HotRoute("/v1/retrieve/{collection}", RetrieveRequest, retrieve_plain, query=("model",)),
        HotRoute("/v1/similar/{collection}", SimilarRequest, similar_plain, query=("model",)),
    ]
    app.add_middleware(HotRoutes, routes=hot, token=cfg.serving.token)
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


async def model_routers(request: Request) -> ModelRouters:
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
    answer = await router.fanout.search(pin, query, k, body.exclude, deadline)
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
    query = await router.fanout.stored_vector(pin, body.id, deadline)
    if query is None:
        raise ApiError(404, "unknown_id", f"{collection} index {pin.version} holds no id {body.id!r}")
    answer = await router.fanout.search(pin, query, k, [body.id, *body.exclude], deadline)
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
