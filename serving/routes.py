"""The retrieval service's routes: /readyz and /metrics (open), and the /v1/ API
(/healthz is `serving.responses.liveness`, the same in all three apps).

Every retrieval handler reads the reloader's state reference once and answers from that
object only, and names the versions it used in `served`, so a client can always tell which
consistent set answered. The handlers are module-level functions; what they answer from
comes by dependency (`ReloaderDep`, `ServingConfigDep`) and the bearer token is a
dependency of the /v1/ router (`serving.deps`), both installed by `serving.app.create_app`.

Handlers are `async def`. An index in this process (serving.searcher=inline) answers
inline: one hnswlib query takes well under a millisecond, less than handing it to a thread
pool would cost. An index in a child process (serving.searcher=process) is awaited, so
the loop serves other requests while the child searches (`serving.searcher`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from serving import searcher
from serving.api import Readiness, RetrieveRequest, RetrieveResponse, SimilarRequest, VersionsResponse
from serving.deps import ServingConfigDep
from serving.query_checks import checked_embedding, checked_k
from serving.reloader import Reloader
from serving.responses import ERROR_RESPONSES, PROMETHEUS_TEXT, ApiError, json_response
from serving.state import COLLECTIONS, INDEX_KINDS, STORY_INDEX, ServedState


async def serving_reloader(request: Request) -> Reloader:
    return request.app.state.reloader


# The reloader, not its state: a handler reads `reloader.state` once, after its body has
# been validated (a dependency that raised "not ready" would answer before a 422).
ReloaderDep = Annotated[Reloader, Depends(serving_reloader)]

probes = APIRouter()
api = APIRouter(prefix="/v1")


# -- probes and metrics -------------------------------------------------------------------


@probes.get(
    "/readyz",
    summary="200 only while a consistent (index, user embeddings) pair is served and answers",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
)
async def readyz(reloader: ReloaderDep) -> Response:
    state = reloader.state
    if state is None:
        return json_response({"ready": False, "reason": reloader.last_outcome.detail}, 503)
    stories = state.components[STORY_INDEX]
    if not getattr(stories.value, "alive", True):  # what is answerable, not what was loaded
        return json_response(
            {
                "ready": False,
                "generation": state.generation,
                "model_version": state.model_version,
                "reason": f"the {STORY_INDEX}/{stories.version} index process died; the reloader "
                "restarts it from the local cache at its next poll",
            },
            503,
        )
    return json_response({"ready": True, "generation": state.generation, "model_version": state.model_version})


@probes.get("/metrics", summary="Prometheus metrics")
async def prometheus(reloader: ReloaderDep) -> Response:
    return Response(reloader.metrics.exposition(), media_type=PROMETHEUS_TEXT)


# -- /v1/ ---------------------------------------------------------------------------------


@api.get(
    "/versions",
    summary="what is served, since when, from which model; refused versions",
    response_model=VersionsResponse,
    responses=ERROR_RESPONSES,
)
async def versions(reloader: ReloaderDep) -> Response:
    state = reloader.state
    return json_response(
        {
            "ready": state is not None,
            "served": state.describe() if state else None,
            "last_poll_at": reloader.last_poll_at,
            "seconds_since_last_successful_poll": reloader.metrics.seconds_since_last_poll(),
            "last_reload": {"action": reloader.last_outcome.action, "detail": reloader.last_outcome.detail},
            "refused": [vars(r) for r in reloader.refused.values()],
            "load_failures": [f.describe() for f in reloader.load_failures.values()],
            "pointer_errors": dict(reloader.pointer_errors),
            "retired_states_alive": reloader.retired_alive,
        }
    )


@api.post(
    "/retrieve/{collection}",
    response_model=RetrieveResponse,
    responses=ERROR_RESPONSES,
    summary="top-K of a collection (stories, creators, users) for a user id or an embedding",
)
async def retrieve(collection: str, body: RetrieveRequest, reloader: ReloaderDep, cfg: ServingConfigDep) -> Response:
    state = served(reloader)
    index = index_of(state, collection)
    k = checked_k(body.k, cfg)
    if (body.user_id is None) == (body.embedding is None):
        raise ApiError(422, "invalid_request", "give exactly one of user_id or embedding")
    if body.user_id is not None:
        query = state.users.vector(body.user_id)
        if query is None:
            raise ApiError(
                404,
                "unknown_user",
                f"user {body.user_id!r} is not in the served user embeddings "
                f"({state.users.version}, model {state.model_version})",
            )
    else:
        query = checked_embedding(body.embedding, state.dim)
    hits = (await searcher.search(index, query, k, body.exclude))[0]
    return answer(state, collection, k, hits)


@api.post(
    "/similar/{collection}",
    response_model=RetrieveResponse,
    responses=ERROR_RESPONSES,
    summary="items of a collection closest to one of its items (the item itself excluded)",
)
async def similar(collection: str, body: SimilarRequest, reloader: ReloaderDep, cfg: ServingConfigDep) -> Response:
    state = served(reloader)
    index = index_of(state, collection)
    k = checked_k(body.k, cfg)
    query = await searcher.vector(index, body.id)
    if query is None:
        raise ApiError(404, "unknown_id", f"{collection} index {index.version} holds no id {body.id!r}")
    hits = (await searcher.search(index, query, k, [body.id, *body.exclude]))[0]
    return answer(state, collection, k, hits)


# -- what the handlers share ----------------------------------------------------------------


def served(reloader: Reloader) -> ServedState:
    state = reloader.state  # read once: this request uses this consistent set to the end
    if state is None:
        raise ApiError(503, "not_ready", f"no consistent version set is loaded yet: {reloader.last_outcome.detail}")
    return state


def index_of(state: ServedState, collection: str):
    if collection not in INDEX_KINDS:
        raise ApiError(
            404, "unknown_collection", f"unknown collection {collection!r}; use one of {', '.join(COLLECTIONS)}"
        )
    index = state.index(collection)
    if index is None:
        raise ApiError(
            503,
            "collection_not_served",
            f"no {collection} index from model {state.model_version} is served (none published, or its newest "
            f"version is from another model or was refused; see /v1/versions)",
        )
    return index


def answer(state: ServedState, collection: str, k: int, hits: list[tuple[str, float]]) -> Response:
    index = state.index(collection)
    return json_response(
        {
            "collection": collection,
            "k": k,
            "items": [{"id": item_id, "score": score} for item_id, score in hits],
            "served": {
                "generation": state.generation,
                "model_version": state.model_version,
                "index_version": index.version,
                "user_embeddings_version": state.users.version,
            },
        }
    )
