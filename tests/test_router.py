"""The sharded retrieval tier with real processes on loopback: shard servers (`ebr serve
--shard I/S`, each its own process, SIGKILLed for real) and the router (`serving.router`,
real uvicorn in this process, real httpx fan-out) over a small real store whose shard sets
are built by the real index builder (`index.shards=2`).

What users rely on, each checked against exact search over the whole snapshot:

  * merged answers equal exact top-k of the unsharded snapshot;
  * an answer never mixes two shard-set generations, while a new set is published under load;
  * a replica killed under load costs no failed request (retried or hedged on the other);
  * a whole shard down gives coverage 0.5, or 503, per serving.min_coverage;
  * a shard that lags on the old set keeps the router on the old set until it catches up.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from artifacts import ArtifactStore
from artifacts.embedding_snapshots import publish_snapshot
from benchmarks.synthetic_vectors import clustered_vectors
from config import load_config
from index_builder.publish import build_and_publish_index
from index_builder.sharding import shard_of
from tests.polling import wait_for
from tests.router_support import (  # noqa: F401 - cluster, redis_url, sets, start_router: fixtures
    DIM,
    N_STORIES,
    N_USERS,
    POLL_S,
    REPO,
    STARTUP_S,
    Load,
    Sets,
    ShardProcess,
    cluster,
    pinned,
    redis_url,
    sets,
    start_router,
)

# -- shard servers -------------------------------------------------------------------------


def test_a_bad_shard_spec_is_one_error_line(sets):
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "--root", sets.root, "serve", "--shard", "3/2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "error: --shard '3/2': shards of a set of 2 are numbered 0 to 1" in result.stderr


def test_a_shard_server_answers_from_the_version_named_and_refuses_a_set_of_another_size(sets, cluster):
    sets.publish_users("u1")
    v1 = sets.build_stories("v1")
    wrong = ShardProcess(sets, 0, spec="0/3")  # the set has 2 shards
    try:
        shard0 = cluster(replicas=1)[0][0]
        query = clustered_vectors(1, DIM, seed=9)[0].tolist()
        body = httpx.post(f"{shard0.url}/v1/search/stories", json={"embedding": query, "k": 5, "version": v1}).json()
        assert body["version"] == v1 and body["shard"] == 0 and len(body["items"]) == 5
        assert all(shard_of(item_id, 2) == 0 for item_id, _ in body["items"])
        missing = httpx.post(f"{shard0.url}/v1/search/stories", json={"embedding": query, "k": 5, "version": "v0"})
        assert missing.status_code == 409 and missing.json()["error"]["code"] == "version_not_held"

        def refused():
            status = wrong.status()
            return status and status["refused"]

        reasons = wait_for(
            refused, what="the 0/3 server to refuse the 2-shard set", timeout=STARTUP_S, details=wrong.logs
        )
        assert (
            "is a set of 2 shard(s); this server serves shard 0 of 3: start it with --shard I/2" in reasons[0]["reason"]
        )
        assert httpx.get(f"{wrong.url}/readyz").status_code == 503
    finally:
        wrong.stop()


def test_a_shard_server_answers_the_wire_as_its_http_routes_and_refuses_bad_frames_by_name(sets, cluster):
    """The shard wire (serving.wire) on the port /v1/shard advertises: the same answers as
    POST /v1/search and /v1/vector, and a clear error for every malformed request."""
    import asyncio

    from serving.wire import WireClient

    sets.publish_users("u1")
    v1 = sets.build_stories("v1")
    shard0 = cluster(replicas=1)[0][0]
    port = shard0.status()["wire"]["port"]
    query = clustered_vectors(1, DIM, seed=9)[0]
    over_http = httpx.post(
        f"{shard0.url}/v1/search/stories", json={"embedding": query.tolist(), "k": 5, "version": v1}
    ).json()

    async def ask(meta: dict, payload: bytes = b"") -> tuple[dict, bytes]:
        client = WireClient()
        try:
            return await client.request("127.0.0.1", port, meta, payload, timeout=5)
        finally:
            client.close()

    def search(payload: bytes = query.astype("<f4").tobytes(), **meta) -> dict:
        return asyncio.run(ask({"op": "search", "collection": "stories", "version": v1, "k": 5, **meta}, payload))[0]

    assert search() == {"status": 200, **over_http}
    stored_id = over_http["items"][0][0]
    meta, vector = asyncio.run(ask({"op": "vector", "collection": "stories", "version": v1, "id": stored_id}))
    assert meta["status"] == 200 and meta["version"] == v1
    assert np.frombuffer(vector, "<f4").tolist() == pytest.approx(sets.stories[v1][stored_id].tolist(), abs=1e-6)

    refusals = {
        "version_not_held": search(version="v0"),
        "unknown_collection": search(collection="films"),
        "invalid_k": search(k=0),
        "invalid_request": search(k="5"),
        "invalid_request ": search(exclude="s1"),  # a string is not a list of ids
        "invalid_embedding": search(payload=b"\0" * 6),
    }
    assert {code: answer.get("code") for code, answer in refusals.items()} == {c: c.strip() for c in refusals}
    assert search(payload=b"\0" * 4 * (DIM - 1))["message"].startswith(f"embedding has {DIM - 1} values")
    assert asyncio.run(ask({"op": "drop", "collection": "stories"}))[0]["code"] == "unknown_op"
    unknown = asyncio.run(ask({"op": "vector", "collection": "stories", "version": v1, "id": "nope"}))[0]
    assert unknown["status"] == 404 and unknown["code"] == "unknown_id"


def test_serving_token_guards_the_shard_servers_and_the_router_but_not_their_probes(sets, start_router):
    """With serving.token set, the router's health checks and fan-out carry it to the shard
    servers; a client without it gets 401 from both, while probes and metrics stay open."""
    sets.publish_users("u1")
    sets.build_stories("v1")
    grid = [[ShardProcess(sets, shard, token="s3cret")] for shard in range(2)]
    try:
        for row in grid:
            row[0].wait_ready()
        shard0 = grid[0][0]
        query = clustered_vectors(1, DIM, seed=9)[0].tolist()
        for response in (
            httpx.get(f"{shard0.url}/v1/shard"),
            httpx.post(f"{shard0.url}/v1/search/stories", json={"embedding": query, "k": 5}),
            httpx.post(f"{shard0.url}/v1/search/stories", json={"embedding": query}, headers={"Authorization": "x"}),
        ):
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{shard0.url}{probe}").status_code == 200, probe

        _, client = start_router(grid, "serving.token=s3cret")  # ready: its health checks got through
        denied = client.post("/v1/retrieve/stories", json={"user_id": "u1"})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        assert client.get("/v1/versions").status_code == 401
        good = client.post("/v1/retrieve/stories", json={"user_id": "u1", "k": 5}, headers=shard0.headers)
        assert good.status_code == 200 and good.json()["coverage"] == 1.0 and len(good.json()["items"]) == 5
        assert client.get("/metrics").status_code == 200
    finally:
        for row in grid:
            row[0].stop()


# -- the router ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["wire", "http"])
def test_merged_answers_equal_exact_search_over_the_whole_snapshot(sets, cluster, start_router, transport):
    sets.publish_users("u1")
    v1 = sets.build_stories("v1")
    grid = cluster()
    _, client = start_router(grid, f"router.transport={transport}")

    for n in range(N_USERS):
        user = f"u{n}"
        body = client.post("/v1/retrieve/stories", json={"user_id": user, "k": 10}).json()
        assert body["coverage"] == 1.0 and body["served"]["index_version"] == v1
        assert [h["id"] for h in body["items"]] == sets.exact(v1, sets.users["u1"][user], 10)
        sets.check(body, user)
    query = sets.stories[v1]["s7"]
    body = client.post(
        "/v1/retrieve/stories", json={"embedding": query.tolist(), "k": 8, "exclude": ["s7", "s8"]}
    ).json()
    assert [h["id"] for h in body["items"]] == sets.exact(v1, query, 8, exclude=("s7", "s8"))
    body = client.post("/v1/similar/stories", json={"id": "s11", "k": 10}).json()
    assert [h["id"] for h in body["items"]] == sets.exact(v1, sets.stories[v1]["s11"], 10, exclude=("s11",))

    # The public API's errors, as the single service gives them.
    assert client.post("/v1/retrieve/stories", json={"user_id": "nobody"}).json()["error"]["code"] == "unknown_user"
    assert client.post("/v1/similar/stories", json={"id": "nothing"}).json()["error"]["code"] == "unknown_id"
    assert client.post("/v1/retrieve/stories", json={"user_id": "u1", "k": 51}).status_code == 422
    assert (
        client.post("/v1/retrieve/stories", json={"embedding": [0.1] * 3}).json()["error"]["code"]
        == "invalid_embedding"
    )
    assert client.post("/v1/retrieve/films", json={"user_id": "u1"}).status_code == 404
    versions = client.get("/v1/versions").json()
    assert versions["pinned"]["stories"]["version"] == v1 and versions["user_embeddings"]["version"] == "u1"
    assert all(r["healthy"] for row in versions["replicas"] for r in row)
    assert "ebr_router_requests_total" in client.get("/metrics").text
    # The single service's /v1/versions fields too: `ebr query versions` reads a router.
    from cli.serve_commands import format_versions

    served = versions["served"]["components"]
    assert served["indexes/stories"]["version"] == v1 and served["indexes/stories"]["count"] == N_STORIES
    assert served["embeddings/users"]["version"] == "u1" and versions["last_reload"]["action"] == "swapped"
    assert v1 in format_versions(versions)
    # The shard servers were asked the way router.transport says (their wire is on either way).
    assert all(r["wire_port"] for row in versions["replicas"] for r in row)
    asked = [sum('endpoint="wire:search"' in httpx.get(f"{p.url}/metrics").text for p in row) for row in grid]
    assert all(bool(n) == (transport == "wire") for n in asked), asked  # per shard: replicas asked on the wire

    # A set of another size than router.replicas is never pinned, and /v1/versions says why.
    publish_snapshot(
        sets.store.kind("embeddings/stories"),
        "v3",
        np.asarray(list(sets.stories[v1]), dtype=object),
        np.stack(list(sets.stories[v1].values())),
        model_version="m1",
        as_of=0,
        reason="test",
    )
    build_and_publish_index(sets.cfg("index.shards=3"), "stories", snapshot="v3")
    waiting = wait_for(
        lambda: client.get("/v1/versions").json()["waiting"].get("stories"), what="the 3-shard set noticed"
    )
    assert "is a set of 3 shard(s), but router.replicas lists 2" in waiting
    assert pinned(client) == v1 and client.post("/v1/retrieve/stories", json={"user_id": "u1"}).status_code == 200


def test_ebr_route_without_replicas_is_one_error_line(sets):
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "--root", sets.root, "route"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "error: no shard replicas" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "--root", sets.root, "route", "--replicas", '[["ftp://x"]]'],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "must be an http:// or https:// URL" in result.stderr


def test_a_new_set_published_under_load_switches_without_mixing_generations(sets, cluster, start_router):
    sets.publish_users("u1")
    v1 = sets.build_stories("v1")
    _, client = start_router(cluster())
    with Load(client.base_url) as load:
        load.wait_answers(20)
        v2 = sets.build_stories("v2", prefix="t", seed=3)  # other ids, other vectors
        wait_for(lambda: pinned(client) == v2, what="the router to switch to v2", timeout=20)
        load.wait_answers(20)
    served = {body["served"]["index_version"] for _, status, body in load.answers if status == 200}
    assert served == {v1, v2}
    assert all(status == 200 for _, status, _ in load.answers), [a for a in load.answers if a[1] != 200][:3]
    for user, _, body in load.answers:
        sets.check(body, user)
        assert body["coverage"] == 1.0
        assert all(h["id"].startswith("s" if body["served"]["index_version"] == v1 else "t") for h in body["items"])


def test_a_replica_killed_or_frozen_under_load_costs_no_failed_request(sets, cluster, start_router):
    sets.publish_users("u1")
    sets.build_stories("v1")
    grid = cluster()
    _, client = start_router(grid)
    with Load(client.base_url) as load:
        load.wait_answers(20)
        grid[1][1].kill()  # connections refused: retried on the other replica at once
        load.wait_answers(30)
        grid[0][0].freeze()  # accepts, never answers: hedged after router.hedge_after_ms
        load.wait_answers(30)
    failed = [a for a in load.answers if a[1] != 200]
    assert not failed, failed[:3]
    for user, _, body in load.answers:
        assert body["coverage"] == 1.0
        sets.check(body, user)
    versions = client.get("/v1/versions").json()
    assert not versions["replicas"][0][0]["healthy"] and not versions["replicas"][1][1]["healthy"]
    hedges = re.search(r'ebr_router_hedges_total\{shard="0"\} ([0-9.]+)', client.get("/metrics").text)
    assert hedges and float(hedges.group(1)) >= 1  # requests sent to the frozen replica went on to the other


def test_a_whole_shard_down_gives_partial_answers_or_503_per_min_coverage(sets, cluster, start_router):
    sets.publish_users("u1")
    v1 = sets.build_stories("v1")
    grid = cluster()
    _, partial = start_router(grid, "serving.min_coverage=0.5")
    _, strict = start_router(grid)  # min_coverage 1.0: every shard or nothing
    for process in grid[1]:
        process.kill()

    body = partial.post("/v1/retrieve/stories", json={"user_id": "u3", "k": 10}).json()
    assert body["coverage"] == 0.5 and body["missing_shards"] == [1]
    # What shard 0 holds, exactly: the exact top-10 among shard 0's items.
    user = sets.users["u1"]["u3"]
    own = {i: v for i, v in sets.stories[v1].items() if shard_of(i, 2) == 0}
    best = sorted(own, key=lambda i: -float(user @ own[i]))[:10]
    assert [h["id"] for h in body["items"]] == best
    response = strict.post("/v1/retrieve/stories", json={"user_id": "u3", "k": 10})
    assert response.status_code == 503 and response.json()["error"]["code"] == "insufficient_coverage"
    assert "below serving.min_coverage=1" in response.json()["error"]["message"]
    wait_for(lambda: strict.get("/readyz").status_code == 503, what="the strict router to say it is not ready")
    assert partial.get("/readyz").status_code == 200


def test_a_lagging_shard_keeps_the_router_on_the_old_set_until_it_catches_up(sets, cluster, start_router):
    sets.publish_users("u1")
    v1 = sets.build_stories("v1")
    lag_s = 15.0
    grid = cluster(poll_s=lambda shard: POLL_S if shard == 0 else lag_s)  # shard 1 polls LATEST rarely
    router, client = start_router(grid)
    v2 = sets.build_stories("v2", prefix="t", seed=3, publish=False)
    # One lagging replica of shard 1 (the other stopped: two poll at phases of their own),
    # and v2 published just after it polled: it sees v2 only lag_s later.
    grid[1][1].stop()
    lagging = grid[1][0]
    before = lagging.status()["last_poll_at"]
    wait_for(lambda: lagging.status()["last_poll_at"] != before, what="the shard-1 replica to poll", timeout=2 * lag_s)
    sets.store.kind("indexes/stories").publish(v2, reason="test")
    published = time.monotonic()

    wait_for(lambda: all(p.current() == v2 for p in grid[0]), what="shard 0 on v2", timeout=lag_s - 3)
    assert lagging.current() == v1 and time.monotonic() - published < lag_s - 1
    time.sleep(0.5)  # several health checks of the router see shard 0 on v2, shard 1 on v1
    assert pinned(client) == v1
    body = client.post("/v1/retrieve/stories", json={"user_id": "u2", "k": 10}).json()
    assert body["served"]["index_version"] == v1 and body["coverage"] == 1.0  # shard 0 answered from v1, still held
    sets.check(body, "u2")
    assert (
        "not yet held by a healthy replica of shard(s) [1]" in client.get("/v1/versions").json()["waiting"]["stories"]
    )
    # A router started now (nothing pinned yet) serves the newest set every shard holds.
    _, late = start_router(grid)
    assert pinned(late) == v1 and time.monotonic() - published < lag_s

    wait_for(lambda: pinned(client) == v2, what="the router to switch once shard 1 caught up", timeout=3 * lag_s)
    assert lagging.current() == v2
    body = client.post("/v1/retrieve/stories", json={"user_id": "u2", "k": 10}).json()
    assert body["served"]["index_version"] == v2
    sets.check(body, "u2")


# -- the Redis user profile store ------------------------------------------------------------


def test_the_router_reads_users_from_redis_keyed_by_snapshot_version(sets, cluster, start_router, redis_url):
    import redis

    from artifacts.embedding_snapshots import read_snapshot
    from serving import profile_store

    sets.publish_users("u1")
    v1 = sets.build_stories("v1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "--root",
            sets.root,
            "--set",
            f"router.redis_url={redis_url}",
            "profiles",
            "load",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and f"loaded {N_USERS} user vectors of embeddings/users/u1" in result.stdout, (
        result.stderr
    )
    grid = cluster(replicas=1)
    _, client = start_router(grid, "router.user_store=redis", f"router.redis_url={redis_url}")

    for user in ("u0", "u5", "u39"):
        body = client.post("/v1/retrieve/stories", json={"user_id": user, "k": 10}).json()
        assert body["served"]["user_embeddings_version"] == "u1"
        assert [h["id"] for h in body["items"]] == sets.exact(v1, sets.users["u1"][user], 10)
        sets.check(body, user)
    assert client.post("/v1/retrieve/stories", json={"user_id": "nobody"}).json()["error"]["code"] == "unknown_user"

    # A newer snapshot not yet in Redis is not used: the router stays on the complete one.
    sets.publish_users("u2", seed=5)
    note = wait_for(lambda: client.get("/v1/versions").json()["user_embeddings_note"], what="u2 noticed")
    assert "embeddings/users/u2 is not in the Redis profile store" in note
    body = client.post("/v1/retrieve/stories", json={"user_id": "u3", "k": 10}).json()
    assert body["served"]["user_embeddings_version"] == "u1"
    sets.check(body, "u3")

    with redis.Redis.from_url(redis_url) as r:
        profile_store.load_snapshot(r, read_snapshot(sets.store.kind("embeddings/users"), "u2"), prefix="ebr:users")
    wait_for(lambda: client.get("/v1/versions").json()["user_embeddings"]["version"] == "u2", what="the router on u2")
    body = client.post("/v1/retrieve/stories", json={"user_id": "u3", "k": 10}).json()
    assert body["served"]["user_embeddings_version"] == "u2"
    assert [h["id"] for h in body["items"]] == sets.exact(v1, sets.users["u2"]["u3"], 10)
    sets.check(body, "u3")
    with redis.Redis.from_url(redis_url) as r:
        assert profile_store.delete_snapshot(r, "u1", prefix="ebr:users") == N_USERS
        assert profile_store.snapshot_meta(r, "u1", prefix="ebr:users") is None


# -- several EBR models side by side -------------------------------------------------------


def test_two_models_are_served_side_by_side_each_from_its_own_consistent_pair(sets, tmp_path, cluster, start_router):
    import json

    sets.publish_users("u1", model="m1")
    v1 = sets.build_stories("v1", model="m1")
    (tmp_path / "candidate").mkdir()
    other = Sets(tmp_path / "candidate", ArtifactStore.open(f"file://{tmp_path}/candidate/root"))
    other.publish_users("c1", model="m2", seed=7)
    w1 = other.build_stories("w1", prefix="t", seed=8, model="m2")
    grid = cluster(replicas=1)
    theirs = [ShardProcess(other, shard) for shard in range(2)]
    try:
        for process in theirs:
            process.wait_ready()
        models = {"candidate": {"root": other.root, "replicas": [[p.url] for p in theirs]}}
        _, client = start_router(grid, f"router.models={json.dumps(models)}")
        wait_for(
            lambda: client.get("/readyz", params={"model": "candidate"}).status_code == 200, what="candidate ready"
        )

        mine = client.post("/v1/retrieve/stories", json={"user_id": "u3", "k": 10}).json()
        assert (mine["model"], mine["served"]["model_version"], mine["served"]["index_version"]) == (
            "default",
            "m1",
            v1,
        )
        assert [h["id"] for h in mine["items"]] == sets.exact(v1, sets.users["u1"]["u3"], 10)
        sets.check(mine, "u3")
        cand = client.post(
            "/v1/retrieve/stories", params={"model": "candidate"}, json={"user_id": "u3", "k": 10}
        ).json()
        assert (cand["model"], cand["served"]["model_version"], cand["served"]["index_version"]) == (
            "candidate",
            "m2",
            w1,
        )
        assert cand["served"]["user_embeddings_version"] == "c1"
        assert [h["id"] for h in cand["items"]] == other.exact(w1, other.users["c1"]["u3"], 10)
        other.check(cand, "u3")

        versions = client.get("/v1/versions").json()
        assert {name: m["pinned"]["stories"]["version"] for name, m in versions["models"].items()} == {
            "default": v1,
            "candidate": w1,
        }
        unknown = client.post("/v1/retrieve/stories", params={"model": "nope"}, json={"user_id": "u3"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_model"
    finally:
        for process in theirs:
            process.stop()


@pytest.mark.parametrize(
    "override, message",
    [
        ('router.models={"Bad Name": {"root": "file:///x", "replicas": [["http://h:1"]]}}', "must be lower-case"),
        (
            'router.models={"default": {"root": "file:///x", "replicas": [["http://h:1"]]}}',
            "differ from router.model_name",
        ),
        ('router.models={"b": {"root": "s3://x", "replicas": [["http://h:1"]]}}', "file:///absolute/path"),
        ("router.replicas=[[]]", "shard 0 has no replica"),
    ],
)
def test_bad_router_settings_are_refused_with_the_key(override, message):
    from config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["root=file:///tmp/x", override], environ={})
