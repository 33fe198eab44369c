"""The ASGI middleware in front of the service, the router and the shard servers: request
metrics and the request body's size and time limits.

Written against ASGI directly (not BaseHTTPMiddleware) because it runs on every request
and must add microseconds, not a task and a queue. It is outermost, so it sees every
request, also the ones answered 401, 413 or for an unknown path, for the metrics. The
bearer token is not checked here but by a route dependency (`serving.deps.BearerToken`).
"""

from __future__ import annotations

import asyncio
import time

from starlette.exceptions import HTTPException as StarletteHTTPException

from config import ServingConfig
from serving.responses import error_response


class _BodyTooLarge(StarletteHTTPException):
    pass


class _BodyTimeout(StarletteHTTPException):
    pass


class Gatekeeper:
    """Request metrics, request body size (Content-Length, then the bytes as they arrive)
    and the body's deadline (`serving.request_read_timeout_s` after the headers)."""

    def __init__(self, app, cfg: ServingConfig, metrics):
        self.app = app
        self.max_body = cfg.max_body_bytes
        self.read_timeout_s = cfg.request_read_timeout_s
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

    def _refusal(self, scope):
        length = dict(scope["headers"]).get(b"content-length")
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
                # A timer on this task, not asyncio.wait_for (which starts a task per call).
                async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                    message = await receive()
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
                    # to the exception handler (serving.responses), which answers 413.
                    raise _BodyTooLarge(413, f"request body exceeds serving.max_body_bytes={limit}")
            return message

        return limited_receive
