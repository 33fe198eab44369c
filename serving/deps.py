"""Dependencies the routes of the service, the router and the shard servers declare
(`Depends`), as in the FastAPI full-stack template's `api/deps.py`.

Each app's assembly (`create_app`, `create_router_app`, `create_shard_app`) puts what its
routes answer from on `app.state`; a dependency hands it to a route, so routes are plain
module-level functions, testable without a closure around them:

    ServingConfigDep   app.state.serving_config   the serving.* settings (k limits, coverage)
    BearerToken        serving.token              401 unless the request carries it

The app-specific ones (the reloader, the routers, the shard holder) sit beside their
routes and follow the same pattern. Every one is `async def`, also the ones that only read
`app.state`: FastAPI runs a plain `def` dependency in its thread pool, a thread hand-off
per dependency and request (about a tenth of the router's CPU a request, py-spy).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from config import ServingConfig
from serving.responses import ApiError


async def serving_config(request: Request) -> ServingConfig:
    return request.app.state.serving_config


ServingConfigDep = Annotated[ServingConfig, Depends(serving_config)]


class BearerToken:
    """`Depends(BearerToken(token))`: 401 unauthorized unless the request's Authorization
    header is exactly `Bearer <token>` (compared in constant time)."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, request: Request) -> None:
        given = dict(request.scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            raise ApiError(
                401,
                "unauthorized",
                "send the header 'Authorization: Bearer <serving.token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )


def api_dependencies(cfg: ServingConfig) -> list:
    """The dependencies of every /v1/ route: the bearer token when serving.token is set
    (the probes, /metrics and /docs stay open)."""
    return [Depends(BearerToken(cfg.token))] if cfg.token else []
