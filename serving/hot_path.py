"""The retrieval requests' short way through the app: `HotRoutes`, an ASGI middleware.

Nearly every request a retrieval service or router answers is one POST /v1/retrieve/...
with a small JSON body. FastAPI spends about 0.1 ms of CPU on each before the handler
runs (routing, the request object, dependency solving, body validation, the exit-stack
and exception middlewares: py-spy over a closed loop, issue #14); uvicorn's own part is
0.03 ms. On two shared cores that was half of the service's CPU a request.

`HotRoutes` sits inside `serving.gatekeeper.Gatekeeper` (so metrics, body size and body
deadline stay its job) and answers the plain case of a few declared POST routes itself:
the path is the route's prefix and one segment, the query string holds only the route's
declared parameters (each once), the body is JSON that validates, the bearer token (when
`serving.token` is set) is the expected one. It calls the same handler the FastAPI route
declares, with the same arguments, and renders whatever the handler raises with the app's
own exception handlers, so an answer or refusal is byte for byte the one FastAPI gives.
Every other request, including a plain-looking one whose body does not validate or whose
token is wrong, is handed to FastAPI with its body replayed, and FastAPI answers it as
before (422 with pydantic's details, 401, 404, 405, ...). The FastAPI route stays
declared: it is what /docs and the OpenAPI schema describe and what those requests reach.
"""

from __future__ import annotations

import hmac
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    """A POST route `template` ("/v1/retrieve/{collection}": a prefix and one path
    parameter) whose plain requests `handler(segment, body, **query)` answers; `query`
    names the optional query parameters the route declares (each passed as str or None)."""

    template: str
    body: type[BaseModel]
    handler: Handler
    query: tuple[str, ...] = ()

    @property
    def prefix(self) -> bytes:
        return self.template[: self.template.index("{")].encode()


class HotRoutes:
    """ASGI middleware: the plain requests of `routes` answered without FastAPI's
    per-request machinery (see the module docstring); everything else passes through."""

    def __init__(self, app, routes: list[HotRoute], token: str = ""):
        self.app = app
        self.routes = {route.prefix: route for route in routes}
        self.expected_auth = f"Bearer {token}".encode() if token else None
        self._declared: dict[str, object] = {}  # template -> the app's APIRoute (for scope["route"])

    async def __call__(self, scope, receive, send):
        matched = self._match(scope)
        if matched is None:
            return await self.app(scope, receive, send)
        route, segment = matched
        try:
            body = await _read_body(receive)
        except Exception as err:  # the gatekeeper's 413 / 408 while the body arrives
            return await self._render(scope, receive, send, err)
        plain = self._plain_arguments(route, scope, body)
        if plain is None:
            return await self.app(scope, _replay(body, receive), send)
        parsed, query = plain
        scope["route"] = self._declared_route(scope, route)  # the metrics' endpoint label
        try:
            response = await route.handler(segment, parsed, **query)
        except Exception as err:
            return await self._render(scope, receive, send, err)
        await response(scope, receive, send)

    def _match(self, scope) -> tuple[HotRoute, str] | None:
        """The route a POST's path is the prefix of, and its one path segment."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = scope.get("raw_path") or scope["path"].encode()
        cut = path.rfind(b"/") + 1
        route = self.routes.get(path[:cut])
        if route is None or cut == len(path) or b"%" in path:
            return None  # no segment, or an escaped one: FastAPI decodes and routes it
        return route, path[cut:].decode()

    def _plain_arguments(self, route: HotRoute, scope, body: bytes) -> tuple[BaseModel, dict] | None:
        """The validated body and the query parameters, or None unless the request is plain."""
        headers = dict(scope["headers"])
        if self.expected_auth is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), self.expected_auth
        ):
            return None
        if headers.get(b"content-type") != b"application/json" or not body:
            return None
        query = _query(scope.get("query_string", b""), route.query)
        if query is None:
            return None
        try:
            parsed = route.body.model_validate(json.loads(body))  # FastAPI's json.loads and python-mode validation
        except (ValueError, ValidationError):  # ValidationError is a ValueError; both are FastAPI's to answer
            return None
        return parsed, query

    def _declared_route(self, scope, route: HotRoute):
        declared = self._declared.get(route.template)
        if declared is None:
            app = scope["app"]
            declared = next(
                (r for r in app.router.routes if getattr(r, "path", None) == route.template and "POST" in r.methods),
                None,
            )
            if declared is None:
                raise RuntimeError(f"HotRoutes: the app declares no POST {route.template}")
            self._declared[route.template] = declared
        return declared

    async def _render(self, scope, receive, send, err: Exception) -> None:
        """Answers `err` with the app's exception handler for it, as Starlette would."""
        handlers = scope["app"].exception_handlers
        handler = next((handlers[cls] for cls in type(err).__mro__ if cls in handlers), None)
        if handler is None:
            raise err
        response = handler(Request(scope, receive), err)
        if inspect.isawaitable(response):
            response = await response
        await response(scope, receive, send)


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away: an empty body, answered as FastAPI would
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive() that hands `body` over again, then waits as the original does."""
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _query(raw: bytes, names: tuple[str, ...]) -> dict[str, str | None] | None:
    """The declared parameters of a plain query string (each at most once, nothing else),
    missing ones as None; None when the string is not plain."""
    values: dict[str, str | None] = dict.fromkeys(names)
    if not raw:
        return values
    for pair in raw.decode("latin-1").split("&"):
        name, eq, value = pair.partition("=")
        if name not in values or values[name] is not None or not eq:
            return None
        values[name] = unquote_plus(value)
    return values
