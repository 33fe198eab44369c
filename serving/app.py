"""The HTTP/JSON retrieval API (FastAPI): routes, error bodies, auth, body limit, metrics.

Every retrieval handler reads the reloader's state reference once and answers from that
object only, and names the versions it used in `served`, so a client can always tell which
consistent set answered. Bad input gets a JSON error body, never a 500:

    401 unauthorized         serving.token is set and the bearer token is missing or wrong
    404 unknown_user / unknown_id / unknown_collection
    408 request_timeout      the body did not arrive within serving.request_read_timeout_s
                             (headers that do not: a bare 408 from the protocol, server.py)
    413 body_too_large       more than serving.max_body_bytes
    422 invalid_k / invalid_embedding / invalid_request (schema, strict types: k is a JSON
        integer, embedding elements JSON numbers; both or neither of user_id and embedding)
    503 not_ready / collection_not_served / index_unavailable (its process died; reloading)

A failure that repeats (a dead index process answering every request with 503) logs one
line per `ERROR_LOG_INTERVAL_S` with the count of the ones held back; the metrics count
every request.

Handlers are `async def`. An index in this process (serving.searcher=inline) answers
inline: one hnswlib query takes well under a millisecond, less than handing it to a thread
pool would cost. An index in a child process (serving.searcher=process) is awaited, so
the loop serves other requests while the child searches (`serving.searcher`).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.util
import logging
import math
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from config import ServingConfig
from serving import searcher
from serving.api import ErrorResponse, Readiness, RetrieveRequest, RetrieveResponse, SimilarRequest, VersionsResponse
from serving.reloader import Reloader
from serving.searcher import SearcherDiedError
from serving.state import COLLECTIONS, INDEX_KINDS, STORY_INDEX, ServedState

log = logging.getLogger(__name__)

JSON = "application/json"
# At most one log line per failure cause in this many seconds (the metrics count each request).
ERROR_LOG_INTERVAL_S = 10.0
# Refused above this L2 norm: inner products with unit vectors must stay far from float32's
# 3.4e38, where hnswlib's float32 sums overflow to inf and the answers come back unsorted.
MAX_EMBEDDING_NORM = 1e18


class RateLimitedLog:
    """One log line per key per `interval_s`; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = ERROR_LOG_INTERVAL_S):
        self.logger, self.interval_s = logger, interval_s
        self._last: dict[str, tuple[float, int]] = {}  # key -> (last logged at, held back since)

    def log(self, level: int, key: str, message: str, *, exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        last, held = self._last.get(key, (-math.inf, 0))
        if now - last < self.interval_s:
            self._last[key] = (last, held + 1)
            return
        self._last[key] = (now, 0)
        if held:
            message += f" ({held} more like it in the last {now - last:.0f} s)"
        self.logger.log(level, "%s", message, exc_info=exc_info)


class ApiError(Exception):
    """An error answer: HTTP status, a machine-readable code and an actionable message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def error_response(status: int, code: str, message: str, details: list | None = None, headers=None) -> Response:
    error = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return json_response({"error": error}, status, headers)


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503)}

# Error codes of the HTTP errors Starlette raises itself (unknown path, wrong method, ...).
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "body_too_large"}


def add_error_handlers(
    app: FastAPI, *, validation_details: bool = True, http_codes: Mapping[int, str] = HTTP_ERROR_CODES
) -> None:
    """JSON error bodies ({"error": {"code", "message"[, "details"]}}) for ApiError, invalid
    request bodies (with pydantic's problems as `details` when `validation_details`) and
    Starlette's own HTTP errors (coded by `http_codes`, else "http_error"). The service,
    the router and the shard servers all answer errors this way."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> Response:
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError) -> Response:
        problems = err.errors()
        summary = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in problems)
        details = jsonable_encoder(problems, custom_encoder={float: _finite_or_str}) if validation_details else None
        return error_response(422, "invalid_request", f"the request body is not valid: {summary}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, err: StarletteHTTPException) -> Response:
        return error_response(
            err.status_code, http_codes.get(err.status_code, "http_error"), str(err.detail), headers=err.headers
        )


def create_app(cfg: ServingConfig, reloader: Reloader, *, start_reloader: bool = True) -> FastAPI:
    """The ASGI app. With `start_reloader`, the lifespan starts and stops the poller thread."""
    metrics = reloader.metrics
    failures = RateLimitedLog(log)

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
        docs_url=None,  # /docs below, with Swagger UI served from this process (FastAPI's loads it from a CDN)
        redoc_url=None,
    )
    add_offline_docs(app)

    app.state.request_read_timeout_s = cfg.request_read_timeout_s  # for the protocol (server.py)

    # -- errors: always a JSON body -------------------------------------------------------

    add_error_handlers(app)

    @app.exception_handler(SearcherDiedError)
    async def _searcher_died(_request: Request, err: SearcherDiedError) -> Response:
        failures.log(logging.ERROR, "searcher_died", f"{err}; the reloader restarts it at the next poll")
        return error_response(503, "index_unavailable", f"{err}; it is being loaded again, retry shortly")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception) -> Response:
        # A bug, not bad input (bad input never gets here); one traceback per kind of error.
        failures.log(logging.ERROR, f"unexpected:{type(err).__name__}", "unexpected error", exc_info=err)
        return error_response(500, "internal_error", f"{type(err).__name__}: {err}")

    # -- probes, versions, metrics --------------------------------------------------------

    @app.get("/healthz", summary="the process is up (always 200)")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get(
        "/readyz",
        summary="200 only while a consistent (index, user embeddings) pair is served and answers",
        response_model=Readiness,
        responses={503: {"model": Readiness}},
    )
    async def readyz() -> Response:
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

    @app.get(
        "/v1/versions",
        summary="what is served, since when, from which model; refused versions",
        response_model=VersionsResponse,
        responses=_ERRORS,
    )
    async def versions() -> Response:
        state = reloader.state
        return json_response(
            {
                "ready": state is not None,
                "served": state.describe() if state else None,
                "last_poll_at": reloader.last_poll_at,
                "seconds_since_last_successful_poll": metrics.seconds_since_last_poll(),
                "last_reload": {"action": reloader.last_outcome.action, "detail": reloader.last_outcome.detail},
                "refused": [vars(r) for r in reloader.refused.values()],
                "load_failures": [f.describe() for f in reloader.load_failures.values()],
                "pointer_errors": dict(reloader.pointer_errors),
                "retired_states_alive": reloader.retired_alive,
            }
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- retrieval ------------------------------------------------------------------------

    @app.post(
        "/v1/retrieve/{collection}",
        response_model=RetrieveResponse,
        responses=_ERRORS,
        summary="top-K of a collection (stories, creators, users) for a user id or an embedding",
    )
    async def retrieve(collection: str, body: RetrieveRequest) -> Response:
        state = _served(reloader)
        index = _index_of(state, collection)
        k = _checked_k(body.k, cfg)
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
            query = _checked_embedding(body.embedding, state.dim)
        hits = (await searcher.search(index, query, k, body.exclude))[0]
        return _answer(state, collection, k, hits)

    @app.post(
        "/v1/similar/{collection}",
        response_model=RetrieveResponse,
        responses=_ERRORS,
        summary="items of a collection closest to one of its items (the item itself excluded)",
    )
    async def similar(collection: str, body: SimilarRequest) -> Response:
        state = _served(reloader)
        index = _index_of(state, collection)
        k = _checked_k(body.k, cfg)
        query = await searcher.vector(index, body.id)
        if query is None:
            raise ApiError(404, "unknown_id", f"{collection} index {index.version} holds no id {body.id!r}")
        hits = (await searcher.search(index, query, k, [body.id, *body.exclude]))[0]
        return _answer(state, collection, k, hits)

    # Outermost: sees every request (also 401/413 and unknown paths) for the metrics.
    app.add_middleware(Gatekeeper, cfg=cfg, metrics=metrics)
    return app


# Swagger UI's files as the swagger-ui-py package ships them (Swagger UI 5: OpenAPI 3.1,
# which FastAPI writes); found without importing the package, which we do not use.
SWAGGER_UI_PACKAGE = "swagger_ui"
SWAGGER_UI_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
DOCS_ASSETS = "/docs/assets"


def swagger_ui_dir() -> Path | None:
    spec = importlib.util.find_spec(SWAGGER_UI_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if all((folder / name).is_file() for name in SWAGGER_UI_FILES) else None


def add_offline_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from local files (`get_swagger_ui_html` with local asset URLs), so
    it renders where the machine has no internet; /openapi.json is the schema either way."""
    folder = swagger_ui_dir()

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        if folder is None:
            return error_response(
                503,
                "docs_unavailable",
                f"Swagger UI's files are not installed (package "
                f"swagger-ui-py, see requirements.lock); the schema is at {app.openapi_url}",
            )
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if folder is None or name not in SWAGGER_UI_FILES:
            raise ApiError(404, "not_found", f"no docs asset {name!r}")
        return FileResponse(
            folder / name, media_type=SWAGGER_UI_FILES[name], headers={"Cache-Control": "max-age=86400"}
        )


def _served(reloader: Reloader) -> ServedState:
    state = reloader.state  # read once: this request uses this consistent set to the end
    if state is None:
        raise ApiError(503, "not_ready", f"no consistent version set is loaded yet: {reloader.last_outcome.detail}")
    return state


def _index_of(state: ServedState, collection: str):
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


def _checked_k(k: int | None, cfg: ServingConfig) -> int:
    k = cfg.default_k if k is None else k
    if not 1 <= k <= cfg.max_k:
        raise ApiError(422, "invalid_k", f"k must be between 1 and {cfg.max_k} (serving.max_k), got {k}")
    return k


def _checked_embedding(embedding: list[float], dim: int) -> np.ndarray:
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


def _answer(state: ServedState, collection: str, k: int, hits: list[tuple[str, float]]) -> Response:
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


def _finite_or_str(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


class _BodyTooLarge(StarletteHTTPException):
    pass


class _BodyTimeout(StarletteHTTPException):
    pass


class Gatekeeper:
    """Pure ASGI middleware: request metrics, bearer token, request body size and time limits.

    Written against ASGI directly (not BaseHTTPMiddleware) because it runs on every request
    and must add microseconds, not a task and a queue.
    """

    def __init__(self, app, cfg: ServingConfig, metrics):
        self.app = app
        self.max_body = cfg.max_body_bytes
        self.read_timeout_s = cfg.request_read_timeout_s
        self.token = f"Bearer {cfg.token}".encode() if cfg.token else None
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        started_response = False

        async def send_and_record(message):
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_and_record)
                return
            await self.app(scope, self._limited(receive, started), send_and_record)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(endpoint, status, time.perf_counter() - started)

    def _refusal(self, scope) -> Response | None:
        headers = dict(scope["headers"])
        if self.token is not None and scope["path"].startswith("/v1/"):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.token):
                return error_response(
                    401,
                    "unauthorized",
                    "send the header 'Authorization: Bearer <serving.token>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return error_response(400, "invalid_request", f"Content-Length {length!r} is not a number")
            if too_big:
                return error_response(
                    413,
                    "body_too_large",
                    f"request body of {int(length)} bytes exceeds serving.max_body_bytes={self.max_body}",
                )
        return None

    def _limited(self, receive, started: float):
        """Counts chunked bodies (no Content-Length) as they arrive and stops at the limit;
        a body still incomplete `read_timeout_s` after the headers gets a 408."""
        received = 0
        limit = self.max_body
        deadline = started + self.read_timeout_s

        body_done = False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # after the body: waiting for a disconnect has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                raise _BodyTimeout(
                    408,
                    f"the request body did not arrive within serving.request_read_timeout_s={self.read_timeout_s:g} s",
                    headers={"Connection": "close"},
                ) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body reading: FastAPI passes HTTPExceptions on
                    # to the exception handler above, which answers 413.
                    raise _BodyTooLarge(413, f"request body exceeds serving.max_body_bytes={limit}")
            return message

        return limited_receive
