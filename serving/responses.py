"""JSON answers and error bodies, shared by the service, the router and the shard servers.

Every error is a JSON body `{"error": {"code", "message"[, "details"]}}`: an `ApiError`
raised by a route or a dependency, a request body that does not validate, or one of
Starlette's own HTTP errors (unknown path, wrong method, ...).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api import ErrorResponse

JSON = "application/json"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# At most one log line per failure cause in this many seconds (the metrics count each request).
ERROR_LOG_INTERVAL_S = 10.0

# The error answers a retrieval route may give, for its OpenAPI description.
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503)}

# Error codes of the HTTP errors Starlette raises itself (unknown path, wrong method, ...).
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "body_too_large"}


class ApiError(Exception):
    """An error answer: HTTP status, a machine-readable code, an actionable message and
    optional response headers (e.g. WWW-Authenticate with a 401)."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


def error_response(status: int, code: str, message: str, details: list | None = None, headers=None) -> Response:
    error = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return json_response({"error": error}, status, headers)


def add_error_handlers(
    app: FastAPI, *, validation_details: bool = True, http_codes: Mapping[int, str] = HTTP_ERROR_CODES
) -> None:
    """JSON error bodies ({"error": {"code", "message"[, "details"]}}) for ApiError, invalid
    request bodies (with pydantic's problems as `details` when `validation_details`) and
    Starlette's own HTTP errors (coded by `http_codes`, else "http_error"). The service,
    the router and the shard servers all answer errors this way."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> Response:
        return error_response(err.status, err.code, err.message, headers=err.headers)

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


def _finite_or_str(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


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


# GET /healthz, the same in the service, the router and the shard servers.
liveness = APIRouter()


@liveness.get("/healthz", summary="the process is up (always 200)")
async def healthz() -> Response:
    return json_response({"status": "ok"})
