"""The HTTP/JSON retrieval API (FastAPI): `create_app` assembles it.

    serving.routes      the routes: probes and /metrics (open), /v1/ (retrieval, versions)
    serving.deps        their dependencies: the serving settings, the bearer token
    serving.docs        /docs from local Swagger UI files
    serving.responses   JSON error bodies for every error
    serving.gatekeeper  request metrics, body size and time limits (ASGI middleware)
    serving.hot_path    the plain retrieval requests answered past FastAPI's per-request work

Bad input gets a JSON error body, never a 500:

    401 unauthorized         serving.token is set and the bearer token is missing or wrong
    404 unknown_user / unknown_id / unknown_collection
    408 request_timeout      the body did not arrive within serving.request_read_timeout_s
                             (headers that do not: a bare 408 from the protocol, server.py)
    413 body_too_large       more than serving.max_body_bytes
    422 invalid_k / invalid_embedding / invalid_request (schema, strict types: k is a JSON
        integer, embedding elements JSON numbers; both or neither of user_id and embedding)
    503 not_ready / collection_not_served / index_unavailable (its process died; reloading)

The token is a dependency of the /v1/ routes, so it is checked once a request has found its
route: a request for an unknown path or with the wrong method gets 404 or 405, and a body
that is too large, late or not JSON gets 413, 408 or 422, whether or not it carries the token.

A failure that repeats (a dead index process answering every request with 503) logs one
line per `serving.responses.ERROR_LOG_INTERVAL_S` with the count of the ones held back; the
metrics count every request.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from config import ServingConfig
from serving import docs, routes
from serving.api import RetrieveRequest, SimilarRequest
from serving.deps import api_dependencies
from serving.gatekeeper import Gatekeeper
from serving.hot_path import HotRoute, HotRoutes
from serving.reloader import Reloader
from serving.responses import RateLimitedLog, add_error_handlers, error_response, liveness
from serving.searcher import SearcherDiedError

log = logging.getLogger(__name__)


def create_app(cfg: ServingConfig, reloader: Reloader, *, start_reloader: bool = True) -> FastAPI:
    """The ASGI app. With `start_reloader`, the lifespan starts and stops the poller thread."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if start_reloader:
            reloader.start()
        try:
            yield
        finally:
            if start_reloader:
                reloader.close()

    app = FastAPI(
        title="EBR retrieval service",
        version="1",
        description="Top-K retrieval from hot-reloaded HNSW indexes; every answer names the consistent "
        "(index, user embeddings, model) set it came from.",
        lifespan=lifespan,
        docs_url=None,  # serving.docs: Swagger UI served from this process (FastAPI's loads it from a CDN)
        redoc_url=None,
    )
    app.state.serving_config = cfg  # serving.deps.ServingConfigDep
    app.state.reloader = reloader  # serving.routes.ReloaderDep
    app.state.request_read_timeout_s = cfg.request_read_timeout_s  # for the protocol (server.py)

    add_error_handlers(app)
    add_failure_handlers(app)
    app.include_router(docs.router)
    app.include_router(liveness)
    app.include_router(routes.probes)
    app.include_router(routes.api, dependencies=api_dependencies(cfg))

    async def retrieve(collection: str, body: RetrieveRequest) -> Response:
        return await routes.retrieve(collection, body, reloader, cfg)

    async def similar(collection: str, body: SimilarRequest) -> Response:
        return await routes.similar(collection, body, reloader, cfg)

    # The retrieval requests' short way past FastAPI's per-request work (serving.hot_path).
    hot = [
        HotRoute("/v1/retrieve/{collection}", RetrieveRequest, retrieve),
        HotRoute("/v1/similar/{collection}", SimilarRequest, similar),
    ]
    app.add_middleware(HotRoutes, routes=hot, token=cfg.token)
    # Outermost: sees every request (also 401/413 and unknown paths) for the metrics.
    app.add_middleware(Gatekeeper, cfg=cfg, metrics=reloader.metrics)
    return app


def add_failure_handlers(app: FastAPI) -> None:
    """503 index_unavailable for a dead index process, 500 internal_error for a bug, each
    cause logged at most once per ERROR_LOG_INTERVAL_S."""
    failures = RateLimitedLog(log)

    @app.exception_handler(SearcherDiedError)
    async def _searcher_died(_request: Request, err: SearcherDiedError) -> Response:
        failures.log(logging.ERROR, "searcher_died", f"{err}; the reloader restarts it at the next poll")
        return error_response(503, "index_unavailable", f"{err}; it is being loaded again, retry shortly")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception) -> Response:
        # A bug, not bad input (bad input never gets here); one traceback per kind of error.
        failures.log(logging.ERROR, f"unexpected:{type(err).__name__}", "unexpected error", exc_info=err)
        return error_response(500, "internal_error", f"{type(err).__name__}: {err}")
