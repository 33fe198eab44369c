"""The retrieval service, tested through a real uvicorn server on 127.0.0.1.

Every test builds its own small artifact store (clustered vectors, dim 16, real hnswlib
indexes), starts the service on a free loopback port with a 0.1 s poll interval, and
always stops it. Index versions are written directly with hnswlib (fast, and the only
way to craft corrupt ones); one test goes through the real index builder. The store, the
fixtures and the helpers are in tests/serving_support.py.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from artifacts.embedding_snapshots import publish_snapshot
from benchmarks.synthetic_vectors import clustered_vectors
from cli.main import main as ebr_main
from config import load_config
from serving.responses import ApiError
from tests.polling import wait_for
from tests.serving_support import (  # noqa: F401 - searcher, start_service, world: fixtures, also for importers
    BOTH_SEARCHERS,
    DIM,
    EBR,
    N_STORIES,
    N_USERS,
    POLL_S,
    error_code,
    metric,
    retrieve,
    searcher,
    served_index,
    start_service,
    world,
)

# -- answers ---------------------------------------------------------------------------------


@BOTH_SEARCHERS
def test_answers_name_their_versions_and_score_with_that_pair(world, start_service):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    world.index("creators", "c1", "m1", seed=3, n=300)
    _, server, client = start_service()
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")

    body = retrieve(client, user_id="u7", k=5).json()
    assert len(body["items"]) == 5 and body["collection"] == "stories"
    assert body["served"]["index_version"] == "s1" and body["served"]["model_version"] == "m1"
    world.check_answer(body, "u7")
    # HNSW at this size is exact: the top item is the true best inner product.
    user = world.vectors[("embeddings/users", "u1")]["u7"]
    best = max(world.vectors[("indexes/stories", "s1")].items(), key=lambda kv: float(user @ kv[1]))[0]
    assert body["items"][0]["id"] == best

    excluded = retrieve(client, user_id="u7", k=5, exclude=[best]).json()
    assert best not in [h["id"] for h in excluded["items"]] and len(excluded["items"]) == 5

    by_vector = retrieve(client, embedding=user.tolist(), k=5).json()
    assert [h["id"] for h in by_vector["items"]] == [h["id"] for h in body["items"]]

    creators = client.post("/v1/retrieve/creators", json={"user_id": "u7", "k": 3}).json()
    assert creators["served"]["index_version"] == "c1" and all(h["id"].startswith("c") for h in creators["items"])

    similar = client.post("/v1/similar/stories", json={"id": "s10", "k": 4}).json()
    assert len(similar["items"]) == 4 and "s10" not in [h["id"] for h in similar["items"]]
    assert retrieve(client, user_id="u7").json()["k"] == 10  # serving.default_k

    versions = client.get("/v1/versions").json()
    components = versions["served"]["components"]
    assert versions["ready"] and versions["served"]["model_version"] == "m1"
    assert set(components) == {"indexes/stories", "indexes/creators", "embeddings/users"}
    assert components["indexes/stories"]["count"] == N_STORIES and components["indexes/stories"]["ef"] == 100
    assert components["indexes/stories"]["served_since"] and components["indexes/stories"]["memory_bytes"] > 0

    metrics = client.get("/metrics").text
    assert 'ebr_serving_requests_total{endpoint="/v1/retrieve/{collection}",status="200"}' in metrics
    assert 'ebr_serving_request_seconds_bucket{endpoint="/v1/similar/{collection}",le="0.001"}' in metrics
    assert 'ebr_serving_served_version_info{kind="indexes/stories",model_version="m1",version="s1"} 1.0' in metrics
    assert 'ebr_serving_reloads_total{kind="indexes/stories",result="success"} 1.0' in metrics
    assert "ebr_serving_seconds_since_last_successful_poll" in metrics and "ebr_serving_ready 1.0" in metrics

    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/retrieve/{collection}", "/v1/similar/{collection}", "/v1/versions", "/readyz"} <= set(paths)
    assert "422" in paths["/v1/retrieve/{collection}"]["post"]["responses"]


def test_serves_an_index_from_the_real_builder(world, start_service):
    from index_builder.publish import build_and_publish_index

    world.users("u1", "m1", seed=1)
    ids = np.asarray([f"s{i}" for i in range(3_000)], dtype=object)
    vecs = clustered_vectors(3_000, DIM, clusters=20, seed=5)
    publish_snapshot(
        world.store.kind("embeddings/stories"), "st1", ids, vecs, model_version="m1", as_of=0, reason="test"
    )
    cfg = load_config(overrides=[f"root={world.root}", "index.validation_queries=200", "index.threads=1"], environ={})
    outcome = build_and_publish_index(cfg, "stories")
    assert outcome.published
    world._remember("indexes/stories", outcome.version, "m1", ids, vecs)
    _, _, client = start_service()
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
    body = retrieve(client, user_id="u3", k=10).json()
    assert body["served"]["index_version"] == outcome.version
    world.check_answer(body, "u3")


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_gets_a_clear_json_error_never_a_500(world, start_service):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    _, _, client = start_service()
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
    json_headers = {"content-type": "application/json"}

    def error(response: httpx.Response, status: int, code: str) -> str:
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert body["code"] == code
        return body["message"]

    assert "'nobody'" in error(retrieve(client, user_id="nobody"), 404, "unknown_user")
    assert "between 1 and 50" in error(retrieve(client, user_id="u1", k=0), 422, "invalid_k")
    error(retrieve(client, user_id="u1", k=51), 422, "invalid_k")
    error(retrieve(client, user_id="u1", k=-3), 422, "invalid_k")
    assert "has 3 values" in error(retrieve(client, embedding=[0.1, 0.2, 0.3]), 422, "invalid_embedding")
    nan_body = b'{"embedding": [NaN' + b", 0.25" * (DIM - 1) + b"]}"  # Python's JSON dialect allows NaN
    assert "positions [0]" in error(
        client.post("/v1/retrieve/stories", content=nan_body, headers=json_headers), 422, "invalid_embedding"
    )
    inf_body = b'{"embedding": [0.1' + b", 1e999" * (DIM - 1) + b"]}"
    error(client.post("/v1/retrieve/stories", content=inf_body, headers=json_headers), 422, "invalid_embedding")
    assert "positions [1]" in error(
        retrieve(client, embedding=[0.1, 1e39] + [0.1] * (DIM - 2)), 422, "invalid_embedding"
    )
    error(retrieve(client, user_id="u1", embedding=[0.0] * DIM), 422, "invalid_request")
    error(retrieve(client), 422, "invalid_request")
    error(retrieve(client, user_id="u1", k="ten"), 422, "invalid_request")
    error(retrieve(client, user_id="u1", colour="blue"), 422, "invalid_request")
    error(client.post("/v1/retrieve/stories", content=b"{not json", headers=json_headers), 422, "invalid_request")
    assert "'films'" in error(client.post("/v1/retrieve/films", json={"user_id": "u1"}), 404, "unknown_collection")
    error(client.post("/v1/similar/films", json={"id": "s1"}), 404, "unknown_collection")
    assert "'s999999'" in error(client.post("/v1/similar/stories", json={"id": "s999999"}), 404, "unknown_id")
    error(client.post("/v1/retrieve/creators", json={"user_id": "u1"}), 503, "collection_not_served")
    big = {"user_id": "u1", "exclude": ["s1"] * 2000}
    assert "max_body_bytes=4096" in error(retrieve(client, **big), 413, "body_too_large")
    chunks = iter([b'{"user_id": "u1", "exclude": [', b'"s1", ' * 1000, b'"s2"]}'])  # no Content-Length
    error(client.post("/v1/retrieve/stories", content=chunks, headers=json_headers), 413, "body_too_large")
    error(client.get("/v1/nothing-here"), 404, "not_found")
    error(client.get("/v1/retrieve/stories"), 405, "method_not_allowed")

    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics and 'status="413"' in metrics and 'status="422"' in metrics
    assert retrieve(client, user_id="u1", k=50).status_code == 200  # still serving


def test_bearer_token_guards_the_api_but_not_the_probes(world, start_service):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    _, server, client = start_service("serving.token=s3cret")
    assert client.get("/healthz").status_code == 200
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
    assert retrieve(client, user_id="u1").status_code == 401
    wrong = client.post("/v1/retrieve/stories", json={"user_id": "u1"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    good = client.post("/v1/retrieve/stories", json={"user_id": "u1"}, headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 200


def test_binds_loopback_by_default(tmp_path):
    """`ebr serve` with the default settings (no token) answers on 127.0.0.1 only: a
    connection to another address of this machine is refused, so nothing off the machine
    can query it."""
    import psutil

    cfg = load_config(overrides=["root=file:///tmp/x"], environ={})
    assert cfg.serving.host == "127.0.0.1" and cfg.serving.token == ""
    outside = sorted(
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET and not address.address.startswith("127.")
    )
    if not outside:
        pytest.skip("this machine has no non-loopback IPv4 address to connect to the service from")
    env = {name: value for name, value in os.environ.items() if not name.startswith("EBR_")}  # the defaults
    command = [EBR, "--root", f"file://{tmp_path}/root", "--set", f"serving.cache_dir={tmp_path}/cache"]
    process = subprocess.Popen(
        [*command, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        def listening() -> list:
            assert process.poll() is None, process.stdout.read().decode()
            return [c.laddr for c in psutil.Process(process.pid).net_connections("tcp") if c.status == "LISTEN"]

        (host, port), *others = wait_for(listening, what="`ebr serve` to listen", timeout=60)
        assert host == "127.0.0.1" and not others
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json() == {"status": "ok"}
        for address in outside:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{address}:{port}/healthz", timeout=10)
    finally:
        process.terminate()
        process.wait(30)


# -- hot reload ------------------------------------------------------------------------------


def test_not_ready_until_index_and_user_embeddings_come_from_one_model(world, start_service):
    world.users("u2", "m2", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    service, _, client = start_service()
    wait_for(lambda: client.get("/v1/versions").json()["last_reload"]["action"] == "waiting", what="waiting")
    assert client.get("/readyz").status_code == 503
    assert "m1" in client.get("/readyz").json()["reason"]
    assert error_code(retrieve(client, user_id="u1")) == (503, "not_ready")
    assert "ebr_serving_waiting_for_consistent_pair 1.0" in client.get("/metrics").text
    world.index("stories", "s2", "m2", seed=3)
    wait_for(lambda: client.get("/readyz").status_code == 200, what="the matching pair")
    world.check_answer(retrieve(client, user_id="u1").json(), "u1")


@BOTH_SEARCHERS
def test_concurrent_clients_see_no_failure_and_no_mixed_pair_across_swaps(world, start_service):
    world.users("u01", "m1", seed=1)  # version names sort by time: publish never moves LATEST back
    world.index("stories", "s01", "m1", seed=100)
    world.index("creators", "c01", "m1", seed=200, n=300)
    service, server, client = start_service()
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")

    stop = threading.Event()
    failures: list[str] = []
    answered = [0]
    seen_pairs: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        rng = np.random.default_rng(worker)
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                user_id = f"u{rng.integers(N_USERS)}"
                try:
                    response = http.post("/v1/retrieve/stories", json={"user_id": user_id, "k": 5})
                    if response.status_code != 200:
                        raise AssertionError(f"HTTP {response.status_code}: {response.text}")
                    body = response.json()
                    world.check_answer(body, user_id)
                except Exception as err:  # noqa: BLE001 - every failure is collected and reported
                    with lock:
                        failures.append(repr(err))
                    continue
                with lock:
                    answered[0] += 1
                    seen_pairs.add((body["served"]["index_version"], body["served"]["user_embeddings_version"]))

    workers = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    try:
        # 12 swaps: index refreshes under one model, and model changes where the user
        # embeddings arrive first (the old pair must keep serving until the index follows).
        model = 1
        for step in range(2, 14):
            if step % 4 == 0:
                model += 1
                world.users(f"u{step:02d}", f"m{model}", seed=step)
                time.sleep(3 * POLL_S)  # the poller sees a mismatched pair meanwhile
                assert served_index(client) == f"s{step - 1:02d}"
            world.index("stories", f"s{step:02d}", f"m{model}", seed=100 + step)
            wait_for(lambda s=step: served_index(client) == f"s{s:02d}", what=f"swap to s{step:02d}")
            time.sleep(0.05)  # let requests run on this state
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)

    assert failures == [], failures[:5]
    assert answered[0] > 100
    assert len({pair[0] for pair in seen_pairs}) >= 10  # answers really came from many versions
    versions = client.get("/v1/versions").json()
    assert versions["served"]["generation"] >= 13
    # The creators index stayed on model m1 and cannot be served with the m4 pair.
    assert "indexes/creators" not in versions["served"]["components"]
    assert error_code(client.post("/v1/retrieve/creators", json={"user_id": "u1"})) == (503, "collection_not_served")
    # Old states are freed once their requests have finished.
    wait_for(lambda: service.reloader.retired_alive == 0, what="old states to be freed")
    metrics = client.get("/metrics").text
    assert metric(metrics, "ebr_serving_swaps_total") >= 13
    assert metric(metrics, 'ebr_serving_reloads_total{kind="indexes/stories",result="failure"}') == 0
    assert metric(metrics, "ebr_serving_retired_states") == 0


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@BOTH_SEARCHERS
def test_corrupt_truncated_and_wrong_dimension_versions_are_refused_while_the_old_one_serves(world, start_service):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    _, _, client = start_service()
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")

    bad_versions = {
        "s2-altered": dict(corrupt=_flip_byte),
        "s3-truncated": dict(corrupt=_truncate),
        "s4-dim8": dict(dim=8),  # a consistent index of another dimension than the user vectors
        "s5-lying-manifest": dict(dim=8, manifest_dim=DIM),  # an 8-d file whose manifest says 16
    }
    for failures, (version, spec) in enumerate(bad_versions.items(), 1):
        world.index("stories", version, "m1", seed=3, **spec)
        wait_for(
            lambda v=version: any(r["version"] == v for r in client.get("/v1/versions").json()["refused"]),
            what=f"{version} to be refused",
        )
        body = retrieve(client, user_id="u5").json()
        assert body["served"]["index_version"] == "s1"
        world.check_answer(body, "u5")
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
        assert metric(metrics, 'ebr_serving_reloads_total{kind="indexes/stories",result="failure"}') == failures
    reasons = {r["version"]: r["reason"] for r in client.get("/v1/versions").json()["refused"]}
    assert "sha256" in reasons["s2-altered"]
    assert "manifest says" in reasons["s3-truncated"]
    assert "dim" in reasons["s4-dim8"] and "dim" in reasons["s5-lying-manifest"]

    # A user snapshot with a NaN vector is refused too; the served users (same model) stay,
    # and a good index version published after all this is served with them.
    ids = np.asarray([f"u{i}" for i in range(N_USERS)], dtype=object)
    vecs = clustered_vectors(N_USERS, DIM, seed=9)
    vecs[3, 0] = np.nan
    publish_snapshot(
        world.store.kind("embeddings/users"), "u2-nan", ids, vecs, model_version="m1", as_of=0, reason="test"
    )
    world.index("stories", "s6", "m1", seed=4)
    wait_for(lambda: served_index(client) == "s6", what="the good version")
    versions = client.get("/v1/versions").json()
    assert versions["served"]["components"]["embeddings/users"]["version"] == "u1"
    assert any(r["version"] == "u2-nan" and "NaN" in r["reason"] for r in versions["refused"])
    world.check_answer(retrieve(client, user_id="u5").json(), "u5")


@BOTH_SEARCHERS
def test_rollback_is_picked_up_within_the_poll_interval(world, start_service):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    world.index("stories", "s2", "m1", seed=3)
    _, _, client = start_service()
    wait_for(lambda: served_index(client) == "s2", what="s2")
    started = time.monotonic()
    world.store.kind("indexes/stories").rollback_to("s1", reason="test: bad recall in s2")
    wait_for(lambda: served_index(client) == "s1", what="the rollback")
    took = time.monotonic() - started
    # Noticed within one poll interval; then the (cached) version is loaded again, which
    # the reloader times; 0.5 s covers the polling of /v1/versions here.
    load_s = metric(client.get("/metrics").text, 'ebr_serving_last_reload_seconds{kind="indexes/stories"}')
    assert took < POLL_S + load_s + 0.5, (took, load_s)
    body = retrieve(client, user_id="u2").json()
    assert body["served"]["index_version"] == "s1"
    world.check_answer(body, "u2")


@pytest.mark.parametrize("searcher", ["process"], indirect=True)
def test_a_dead_index_process_is_replaced_and_never_answers_500(world, start_service, searcher):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    service, _, client = start_service()
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
    old = service.reloader.state.stories
    os.kill(old.pid, signal.SIGKILL)
    statuses = set()

    def replaced():
        response = retrieve(client, user_id="u1")
        statuses.add(response.status_code)
        return response.status_code == 200 and service.reloader.state.stories is not old

    wait_for(replaced, what="a new index process")
    assert statuses <= {200, 503}
    world.check_answer(retrieve(client, user_id="u1").json(), "u1")
    assert not old.alive


@pytest.mark.parametrize("searcher", ["process"], indirect=True)
def test_index_processes_exit_when_their_state_is_freed(world, start_service, searcher):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    service, server, client = start_service()
    wait_for(lambda: served_index(client) == "s1", what="s1")
    first = service.reloader.state.stories._process  # not the handle: holding it would keep it served
    world.index("stories", "s2", "m1", seed=3)
    wait_for(lambda: served_index(client) == "s2", what="s2")
    wait_for(lambda: first.exitcode is not None, what="the old index process to exit")
    current = service.reloader.state.stories._process
    server.stop()
    wait_for(lambda: current.exitcode is not None, what="the index process to exit at shutdown")


async def _retrieve_all(url: str, users: list[str], k: int = 5) -> list[tuple[str, dict]]:
    """(user, answer body) of one /v1/retrieve/stories per user, all in flight at once."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/retrieve/stories", json={"user_id": u, "k": k}) for u in users)
        )
        return [(u, a.json()) for u, a in zip(users, answers, strict=True)]


@pytest.mark.parametrize("searcher", ["process"], indirect=True)
def test_retrievals_by_user_id_reach_the_index_process_and_come_back_as_bytes(world, start_service, searcher):
    """Through the real service: /v1/retrieve by user id hands the index process the user's
    [dim] vector; its search travels in the searches message and its hits come back in the
    hits message, not as pickles (they did until 2026-12-02: a [dim] query never qualified)."""
    from serving.searcher import _HITS_MAGIC, _SEARCHES_MAGIC

    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    service, server, client = start_service()
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
    connection = service.reloader.state.stories._channel.connection
    written, read = [], []
    send, send_bytes, recv_bytes = connection.send, connection.send_bytes, connection.recv_bytes
    connection.send = lambda message: (written.append(b"pickle"), send(message))[1]
    connection.send_bytes = lambda data: (written.append(bytes(data[:4])), send_bytes(data))[1]
    connection.recv_bytes = lambda: (read.append((data := recv_bytes())[:4]), data)[1]

    for user, body in asyncio.run(_retrieve_all(server.url, [f"u{i % N_USERS}" for i in range(40)])):
        assert len(body["items"]) == 5, body
        world.check_answer(body, user)
    assert written and set(written) == {_SEARCHES_MAGIC}
    assert read and set(read) == {_HITS_MAGIC}


@pytest.mark.parametrize("searcher", ["process"], indirect=True)
def test_pipelined_answers_reach_their_own_requests_and_index_processes_keep_normal_priority(
    world, start_service, searcher
):
    """Many requests in flight on one index process's pipe: each answer is its own user's
    (scores are that user's dot products). The reloader thread runs at a lower priority
    (serving.reload_nice), not in the SCHED_IDLE class (serving.reload_idle is for the index
    processes' loading threads); the index processes it starts do not inherit its nice."""
    import psutil

    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    service, server, _ = start_service("serving.reload_nice=7")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")

    for user, body in asyncio.run(_retrieve_all(server.url, [f"u{i % N_USERS}" for i in range(200)])):
        assert len(body["items"]) == 5, body
        world.check_answer(body, user)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert psutil.Process(service.reloader.state.stories.pid).nice() == ours
    if sys.platform.startswith("linux"):
        reloader_thread = service.reloader._thread.native_id
        assert os.getpriority(os.PRIO_PROCESS, reloader_thread) == min(ours + 7, 19)
        assert os.sched_getscheduler(reloader_thread) == os.sched_getscheduler(0)  # holds the server's GIL
        assert os.sched_getscheduler(service.reloader.state.stories.pid) == os.sched_getscheduler(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice and SCHED_IDLE are Linux's")
def test_lower_thread_priority_moves_only_the_calling_thread():
    from serving.searcher import lower_thread_priority

    seen = {}

    def lowered(nice, idle):
        lower_thread_priority(nice, idle)
        tid = threading.get_native_id()
        seen[nice, idle] = (os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(0))

    ours = os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)
    for nice, idle in ((5, True), (5, False), (0, True)):
        thread = threading.Thread(target=lowered, args=(nice, idle))
        thread.start()
        thread.join()
    assert seen[5, True] == (min(ours[0] + 5, 19), os.SCHED_IDLE)
    assert seen[5, False] == (min(ours[0] + 5, 19), ours[1])
    assert seen[0, True] == (ours[0], os.SCHED_IDLE)
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)) == ours


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice and SCHED_IDLE are Linux's")
def test_an_index_process_loads_in_an_idle_class_thread_and_searches_at_normal_priority(monkeypatch):
    # What the index process's main thread runs (`_serve_child`): the load in a thread of its
    # own at the reload's priority, the searches afterwards on the main thread.
    import index_builder.loaded_index
    from serving.searcher import _load_in_low_priority_thread

    seen = {}

    def load_index(directory, collection, verify):
        seen["load"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), os.sched_getscheduler(0)
        return "loaded"

    monkeypatch.setattr(index_builder.loaded_index, "load_index", load_index)
    ours = os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)
    assert _load_in_low_priority_thread("dir", "stories", 3, True) == "loaded"
    assert seen["load"] == (min(ours[0] + 3, 19), os.SCHED_IDLE)
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)) == ours


def _index_process_and_its_messages(world, tmp_path):
    """(the version loaded inline, an IndexProcess on it, the list of every message written
    to that process's pipe, filled as they are sent)."""
    from index_builder.loaded_index import load_index
    from serving.searcher import IndexProcess, _decode

    world.index("stories", "s1", "m1", seed=2)
    directory = world.store.kind("indexes/stories").download("s1", tmp_path / "s1")
    index = IndexProcess(directory, "stories")
    written = []
    connection = index._channel.connection
    send, send_bytes = connection.send, connection.send_bytes
    connection.send = lambda message: (written.append(message), send(message))[1]
    # The searches message goes as bytes: recorded as the child reads it.
    connection.send_bytes = lambda data: (written.append(_decode(bytes(data))), send_bytes(data))[1]
    return load_index(directory, "stories"), index, written


def test_one_event_loop_turns_searches_reach_the_index_process_as_one_message_each_answered_alone(world, tmp_path):
    """serving.searcher's batching: the searches issued in one turn of the loop are written
    as one message and answered with one; each caller gets its own answer, and a search the
    index refuses fails alone."""
    inline, index, written = _index_process_and_its_messages(world, tmp_path)
    queries = clustered_vectors(5, DIM, seed=11)
    try:

        async def one_turn():
            searches = [index.search_async(queries[i : i + 1], 3) for i in range(5)]
            refused = index.search_async(np.zeros((1, DIM + 1), np.float32), 3)
            return await asyncio.gather(*searches, refused, return_exceptions=True)

        answers = asyncio.run(one_turn())
    finally:
        index.close()
    assert [m[0] for m in written] == ["batch"] and len(written[0][1]) == 6
    assert isinstance(answers[-1], ValueError)
    for i, answer in enumerate(answers[:5]):
        assert answer == inline.search(queries[i : i + 1], 3)


def test_single_query_searches_of_one_turn_go_as_one_stacked_array_each_answered_its_own(world, tmp_path):
    """The common message, single-query searches only, carries their queries as one
    [n, dim] array, in bytes rather than a pickle; k and the exclusions stay per search."""
    inline, index, written = _index_process_and_its_messages(world, tmp_path)
    queries = clustered_vectors(4, DIM, seed=13)
    seen = [hit for hit, _ in inline.search(queries[2], 2)[0]]
    asks = [(queries[0:1], 3, []), (queries[1:2], 1, []), (queries[2:3], 4, seen), (queries[3:4], 5, [])]
    try:

        async def one_turn():
            return await asyncio.gather(*(index.search_async(q, k, ex) for q, k, ex in asks))

        answers = asyncio.run(one_turn())
    finally:
        index.close()
    assert len(written) == 1 and written[0][0] == "searches"
    np.testing.assert_array_equal(written[0][1], queries)
    assert written[0][2] == [3, 1, 4, 5] and written[0][3] == [[], [], seen, []]
    for (q, k, ex), answer in zip(asks, answers, strict=True):
        assert answer == inline.search(q, k, ex)
    assert not {hit for hit, _ in answers[2][0]} & set(seen)


def test_the_searches_message_round_trips_through_its_bytes():
    from serving.searcher import _decode, _encode_searches

    queries = clustered_vectors(3, DIM, seed=14)
    for excludes in ([[], [], []], [[], ["s1", "é-ünïcode"], []]):
        kind, decoded, ks, decoded_excludes = _decode(_encode_searches(queries, [3, 1, 200], excludes))
        assert kind == "searches" and ks == [3, 1, 200] and decoded_excludes == excludes
        np.testing.assert_array_equal(decoded, queries)
    assert _decode(pickle.dumps(("vector", "s1"))) == ("vector", "s1")  # every other message: a pickle


def test_the_hits_message_round_trips_through_its_bytes():
    """The child's answer to a searches message without exclusions: per search, its hits as
    (id, score) pairs, the scores float32 as the pickled answers had them."""
    from serving.searcher import _decode_answers, _encode_hits

    ids = ["s1", "é-ünïcode", "s3", "s1", "s9", ""]
    scores = np.asarray([0.5, 0.25, 1 / 3, -0.125, 0.0, 0.75], np.float32)
    answers = _decode_answers(_encode_hits([2, 1, 3], ids, scores))
    floats = scores.tolist()
    assert answers == [
        ("ok", [[("s1", floats[0]), ("é-ünïcode", floats[1])]]),
        ("ok", [[("s3", floats[2])]]),
        ("ok", [[("s1", floats[3]), ("s9", floats[4]), ("", floats[5])]]),
    ]
    assert _decode_answers(pickle.dumps(("batch", [("ok", 1), ("error", "x")]))) == [("ok", 1), ("error", "x")]
    assert _decode_answers(pickle.dumps(("ok", None))) == [("ok", None)]


def _answers_read(index) -> list[bytes]:
    """Records every message the parent reads from `index`'s pipe."""
    read = []
    connection = index._channel.connection
    recv_bytes = connection.recv_bytes
    connection.recv_bytes = lambda: (read.append(data := recv_bytes()), data)[1]
    return read


def test_searches_without_exclusions_are_answered_as_bytes_the_same_answers(world, tmp_path):
    """The child answers a searches message without exclusions with the hits message; each
    caller gets what the index answers inline, k by k (fewer than the deepest, k = ef)."""
    from serving.searcher import _HITS_MAGIC

    inline, index, written = _index_process_and_its_messages(world, tmp_path)
    read = _answers_read(index)
    queries = clustered_vectors(4, DIM, seed=16)
    ks = [10, 1, 4, inline.ef]
    try:

        async def two_turns():
            answers = await asyncio.gather(*(index.search_async(queries[i : i + 1], k) for i, k in enumerate(ks)))
            return answers, await index.search_async(queries[:1], 3, ["s1"])

        answers, excluded = asyncio.run(two_turns())
    finally:
        index.close()
    assert [m[0] for m in written] == ["searches", "searches"]
    assert read[0][:4] == _HITS_MAGIC and read[1][:4] != _HITS_MAGIC  # with exclusions: a pickle
    for i, (k, answer) in enumerate(zip(ks, answers, strict=True)):
        assert answer == inline.search(queries[i : i + 1], k)
    assert excluded == inline.search(queries[:1], 3, ["s1"])


def test_an_index_whose_ids_hold_the_separator_answers_as_pickles(world, tmp_path):
    """Any string can be an id; if one holds the hits message's separator (NUL), the child
    answers every searches message as before, and the answers stay right."""
    from index_builder.loaded_index import load_index
    from serving.searcher import _HITS_MAGIC, IndexProcess

    ids = [f"s{i}" if i != 3 else "s\x003" for i in range(N_STORIES)]
    world.index("stories", "nul", "m1", seed=2, ids=ids)
    directory = world.store.kind("indexes/stories").download("nul", tmp_path / "nul")
    inline = load_index(directory, "stories")
    index = IndexProcess(directory, "stories")
    read = _answers_read(index)
    queries = clustered_vectors(3, DIM, seed=17)
    queries[1] = world.vectors[("indexes/stories", "nul")]["s\x003"]  # its nearest is the NUL id
    try:

        async def one_turn():
            return await asyncio.gather(*(index.search_async(queries[i : i + 1], 5) for i in range(3)))

        answers = asyncio.run(one_turn())
    finally:
        index.close()
    assert read and all(message[:4] != _HITS_MAGIC for message in read)
    assert answers[1][0][0][0] == "s\x003"
    for i, answer in enumerate(answers):
        assert answer == inline.search(queries[i : i + 1], 5)


def test_a_lone_search_goes_as_a_searches_message_of_one(world, tmp_path):
    """Also for a single [dim] vector, as every retrieval by user id passes it (such
    searches used to go as pickled batches: the searches message never reached them)."""
    inline, index, written = _index_process_and_its_messages(world, tmp_path)
    query = clustered_vectors(1, DIM, seed=15)

    async def lone_searches():
        return await index.search_async(query, 4), await index.search_async(query[0], 4)

    try:
        as_row, as_vector = asyncio.run(lone_searches())
    finally:
        index.close()
    assert [m[0] for m in written] == ["searches", "searches"] and written[0][2] == written[1][2] == [4]
    assert as_row == as_vector == inline.search(query, 4) == inline.search(query[0], 4)


def test_a_turn_of_more_than_max_batch_searches_goes_as_several_messages_answered_in_order(world, tmp_path):
    """Past MAX_BATCH a turn's searches are split, so the child's answers to the first
    message come back while it searches the next; every caller still gets its own answer,
    vectors and searches interleaved."""
    from serving.searcher import MAX_BATCH

    inline, index, written = _index_process_and_its_messages(world, tmp_path)
    n = 2 * MAX_BATCH + 3
    queries = clustered_vectors(n, DIM, seed=12)
    stored = [hit for hit, _ in inline.search(queries[0], 5)[0]]
    try:

        async def one_turn():
            calls = [
                index.vector_async(stored[i % 5]) if i % 7 == 3 else index.search_async(queries[i : i + 1], 4)
                for i in range(n)
            ]
            return await asyncio.gather(*calls)

        answers = asyncio.run(one_turn())
    finally:
        index.close()
    assert [len(m[1]) for m in written] == [MAX_BATCH, MAX_BATCH, 3]
    for i, answer in enumerate(answers):
        if i % 7 == 3:
            np.testing.assert_array_equal(answer, inline.vector(stored[i % 5]))
        else:
            assert answer == inline.search(queries[i : i + 1], 4), i


def test_a_shard_whose_index_process_died_answers_503_on_http_and_on_the_wire(world, tmp_path):
    """One owner (serving.shard_server._search / _stored_vector) turns a dead index process
    into 503 index_unavailable, for the HTTP routes and the shard wire alike."""
    from types import MappingProxyType

    from fastapi.testclient import TestClient

    from serving.metrics import ServingMetrics
    from serving.searcher import IndexProcess
    from serving.shard_server import HeldVersion, ShardHolder, ShardState, answer_wire, create_shard_app

    world.index("stories", "s1", "m1", seed=2)
    directory = world.store.kind("indexes/stories").download("s1", tmp_path / "s1")
    dead = IndexProcess(directory, "stories")
    dead.close()  # as if it had exited: every call now raises SearcherDiedError
    cfg = load_config(overrides=[f"root={world.root}"], environ={})
    holder = ShardHolder(world.store, tmp_path / "cache", ServingMetrics(), 0, 1)
    held = HeldVersion("s1", "m1", 1, "now", directory, dead)
    holder._state = ShardState(
        1, MappingProxyType({"stories": "s1"}), MappingProxyType({"stories": MappingProxyType({"s1": held})})
    )
    query = clustered_vectors(1, DIM, seed=3)[0]
    with TestClient(create_shard_app(cfg.serving, holder, start_reloader=False)) as client:
        for path, body in (("search", {"embedding": query.tolist(), "k": 3}), ("vector", {"id": "s1"})):
            response = client.post(f"/v1/{path}/stories", json=body)
            assert response.status_code == 503 and response.json()["error"]["code"] == "index_unavailable", path
    for meta, payload in (
        ({"op": "search", "collection": "stories", "k": 3}, query.astype("<f4").tobytes()),
        ({"op": "vector", "collection": "stories", "id": "s1"}, b""),
    ):
        with pytest.raises(ApiError) as refused:
            asyncio.run(answer_wire(holder, cfg.serving, meta, payload))
        assert (refused.value.status, refused.value.code) == (503, "index_unavailable")
        assert refused.value.message.endswith("it is being loaded again, retry on another replica")


# -- the CLI client --------------------------------------------------------------------------


def test_ebr_query_prints_answers_versions_and_errors(world, start_service, capsys):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    _, server, client = start_service()
    wait_for(lambda: client.get("/readyz").status_code == 200, what="readiness")
    args = ["--root", world.root, "query", "--url", server.url]

    assert ebr_main([*args, "user", "u3", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "top 3 stories for user u3" in out and "rank" in out and "index s1, user embeddings u1, model m1" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]) == 3

    assert ebr_main([*args, "similar", "stories", "s4", "-k", "2"]) == 0
    assert "stories similar to s4" in capsys.readouterr().out

    assert ebr_main([*args, "versions"]) == 0
    out = capsys.readouterr().out
    assert "model m1" in out and "indexes/stories" in out and "s1" in out

    assert ebr_main([*args, "user", "ghost"]) == 1
    assert "unknown_user" in capsys.readouterr().err
    assert ebr_main(["--root", world.root, "query", "--url", "http://127.0.0.1:9", "versions"]) == 1
    assert "cannot reach" in capsys.readouterr().err
