"""`serving.hot_path`: the plain retrieval requests answered past FastAPI's per-request
work must get exactly the answers FastAPI gives, and every other request must still reach
FastAPI. Through a real uvicorn server on 127.0.0.1 (tests/serving_support.py).

Which way a request went is told apart by `serving.routes.retrieve`: the short way calls
it by name at request time (replaced here by a counting wrapper), the FastAPI route holds
the function it was declared with. A content type with a charset is not the plain case,
so the same body sent with it goes FastAPI's way: the two answers are compared.
"""

from __future__ import annotations

import httpx
import pytest

from serving import routes
from serving.hot_path import _query
from tests.polling import wait_for
from tests.serving_support import DIM, metric, searcher, start_service, world  # noqa: F401 - fixtures

PLAIN = {"content-type": "application/json"}
VIA_FASTAPI = {"content-type": "application/json; charset=utf-8"}


@pytest.fixture
def counted(monkeypatch) -> list[str]:
    """The collections of the requests the short way answered."""
    calls: list[str] = []
    original = routes.retrieve

    async def counting(collection, body, reloader, cfg):
        calls.append(collection)
        return await original(collection, body, reloader, cfg)

    monkeypatch.setattr(routes, "retrieve", counting)
    return calls


def _ready(world, start_service, *overrides: str) -> httpx.Client:
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    _, _, client = start_service(*overrides)
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
    return client


def test_plain_requests_take_the_short_way_and_get_fastapis_answers(world, start_service, counted):
    client = _ready(world, start_service)
    bodies = [
        b'{"user_id": "u3", "k": 5}',
        b'{"user_id": "u4", "exclude": ["s1", "s2"]}',
        b'{"embedding": [' + b", ".join([b"0.25"] * DIM) + b"]}",
        b'{"user_id": "nobody"}',  # 404 unknown_user, raised by the handler
        b'{"user_id": "u3", "k": 0}',  # 422 invalid_k, raised by the handler
        b'{"embedding": [0.1, 0.2]}',  # 422 invalid_embedding
        b"{}",  # 422 invalid_request: neither user_id nor embedding
    ]
    for body in bodies:
        short = client.post("/v1/retrieve/stories", content=body, headers=PLAIN)
        full = client.post("/v1/retrieve/stories", content=body, headers=VIA_FASTAPI)
        assert (short.status_code, short.content) == (full.status_code, full.content), body
        assert short.headers["content-type"] == full.headers["content-type"] == "application/json"
    assert counted == ["stories"] * len(bodies)  # every plain one, none of the others
    unknown = client.post("/v1/retrieve/films", content=b'{"user_id": "u3"}', headers=PLAIN)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_collection"
    assert len(counted) == len(bodies) + 1

    # One endpoint label for both ways, as before.
    exposition = client.get("/metrics").text
    assert metric(exposition, 'ebr_serving_requests_total{endpoint="/v1/retrieve/{collection}",status="200"}') == 6
    assert metric(exposition, 'ebr_serving_requests_total{endpoint="/v1/retrieve/{collection}",status="404"}') == 3


def test_what_is_not_plain_reaches_fastapi_with_its_body(world, start_service, counted):
    client = _ready(world, start_service, "serving.max_body_bytes=4096")

    def answer(path: str, content: bytes, headers=PLAIN) -> tuple[int, str]:
        response = client.post(path, content=content, headers=headers)
        return response.status_code, response.json()["error"]["code"] if response.status_code != 200 else "ok"

    # Bodies that do not validate: FastAPI's 422 with pydantic's details.
    invalid = client.post("/v1/retrieve/stories", content=b'{"user_id": "u3", "k": "ten"}', headers=PLAIN)
    assert invalid.status_code == 422 and invalid.json()["error"]["details"][0]["loc"] == ["body", "k"]
    assert answer("/v1/retrieve/stories", b"{not json") == (422, "invalid_request")
    assert answer("/v1/retrieve/stories", b"") == (422, "invalid_request")
    assert answer("/v1/retrieve/stories", b'{"user_id": "u3", "colour": "blue"}') == (422, "invalid_request")
    # Other content types, paths and query strings: FastAPI routes and answers them.
    assert answer("/v1/retrieve/stories", b'{"user_id": "u3"}', {"content-type": "text/plain"}) == (
        422,
        "invalid_request",
    )
    slash = client.post("/v1/retrieve/stories/", content=b'{"user_id": "u3"}', headers=PLAIN)
    assert slash.status_code in (307, 404)  # Starlette's redirect_slashes, or no such route
    assert answer("/v1/retrieve/st%6Fries", b'{"user_id": "u3"}') == (200, "ok")  # decoded by FastAPI
    assert answer("/v1/retrieve/stories?debug=1", b'{"user_id": "u3"}') == (200, "ok")
    assert counted == []
    # The gatekeeper's limits hold on the short way too.
    chunks = iter([b'{"user_id": "u3", "exclude": [', b'"s1", ' * 1000, b'"s2"]}'])  # no Content-Length
    too_big = client.post("/v1/retrieve/stories", content=chunks, headers=PLAIN)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
    assert counted == []


def test_the_bearer_token_is_fastapis_to_refuse(world, start_service, counted):
    client = _ready(world, start_service, "serving.token=s3cret")
    body = b'{"user_id": "u3"}'
    assert client.post("/v1/retrieve/stories", content=body, headers=PLAIN).status_code == 401
    wrong = client.post("/v1/retrieve/stories", content=body, headers={**PLAIN, "authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert counted == []
    good = client.post("/v1/retrieve/stories", content=body, headers={**PLAIN, "authorization": "Bearer s3cret"})
    assert good.status_code == 200 and counted == ["stories"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", {"model": None}),
        (b"model=b", {"model": "b"}),
        (b"model=a%20b+c", {"model": "a b c"}),
        (b"model=a&model=b", None),  # repeated: FastAPI's to resolve
        (b"model", None),  # no value
        (b"other=1", None),  # undeclared
        (b"model=a&", None),
    ],
)
def test_only_plain_query_strings_are_parsed(raw, expected):
    assert _query(raw, ("model",)) == expected
