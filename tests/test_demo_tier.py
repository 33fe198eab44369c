"""The demo's step 3 (orchestration/demo_tier.py): one real `ebr serve` as `make demo`
ships, or on a sharded tier (`make demo DEMO_SHARDS=2`) two real `ebr serve --shard I/2`
processes and `ebr route` over them on loopback, asked for users' top stories the way the
demo asks, and every process stopped afterwards, also when the block is interrupted or
the tier never gets ready.

The store is small and made here instead of by the DAGs (a whole demo run takes minutes):
a tiny synthetic world (the demo's answers describe its users and stories), snapshots of
random vectors over its ids, and a 2-shard story set from the real index builder (and a
one-shard one for the default demo's single `ebr serve`).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from artifacts import STORY_EMBEDDINGS, USER_EMBEDDINGS, ArtifactStore
from artifacts.embedding_snapshots import publish_snapshot, read_snapshot
from benchmarks.synthetic_vectors import clustered_vectors
from config import load_config
from orchestration.demo import next_steps, serve_and_query, served_line
from orchestration.demo_tier import RetrievalTier, TierError, tier_commands
from tests.router_support import redis_url  # noqa: F401 - fixture: a real redis-server

DIM = 16
TIER_SETTINGS = {  # quick polls and health checks; the rest as the demo runs it
    "EBR_SERVING__POLL_INTERVAL_S": "0.2",
    "EBR_ROUTER__HEALTH_INTERVAL_S": "0.2",
    "EBR_ROUTER__DEADLINE_MS": "5000",  # a loaded 2-core machine
}


def tier_world(tmp_path_factory, shards: int):
    """(cfg, the tier's environment): a tiny world, user and story snapshots of model m1,
    and indexes/stories published as a set of SHARDS shards."""
    from index_builder.publish import build_and_publish_index
    from warehouse import Warehouse
    from warehouse.synthetic import generate_world

    tmp_path = tmp_path_factory.mktemp(f"demo-tier-{shards}")
    root = f"file://{tmp_path}/root"
    overrides = [
        f"root={root}",
        "world.size=tiny",
        f"index.shards={shards}",
        "index.threads=1",
        "index.ef_construction=100",
    ]
    cfg = load_config(overrides=[*overrides, f"serving.cache_dir={tmp_path}/cache"], environ={})
    warehouse = Warehouse.from_config(cfg)
    generate_world(cfg.world, warehouse, progress=False)
    store = ArtifactStore.from_config(cfg)
    for kind, table, column, seed in (
        (USER_EMBEDDINGS, "users", "user_id", 1),
        (STORY_EMBEDDINGS, "stories", "story_id", 2),
    ):
        ids = np.asarray(warehouse.read_table(table, [column])[column].to_pylist(), dtype=object)
        vectors = clustered_vectors(len(ids), DIM, clusters=10, seed=seed)
        publish_snapshot(store.kind(kind), "v1", ids, vectors, model_version="m1", as_of=0, reason="test")
    assert build_and_publish_index(cfg, "stories", snapshot="v1").manifest.params.get("shards", 1) == shards
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBR_")}
    env.update(
        {
            "EBR_ROOT": root,
            "EBR_WORLD__SIZE": "tiny",
            "EBR_INDEX__SHARDS": str(shards),
            "EBR_SERVING__CACHE_DIR": str(tmp_path / "cache"),
            "TF_USE_LEGACY_KERAS": "1",
            **TIER_SETTINGS,
        }
    )
    return cfg, env


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The sharded demo's store: indexes/stories as a set of 2 shards."""
    return tier_world(tmp_path_factory, 2)


@pytest.fixture(scope="module")
def single_world(tmp_path_factory):
    """The default demo's store: indexes/stories in one shard, for one `ebr serve`."""
    return tier_world(tmp_path_factory, 1)


def gone(tier: RetrievalTier) -> bool:
    """Every process of the tier has exited, and so has every process of its sessions."""
    if any(p.process.poll() is None for p in tier.processes):
        return False
    for started in tier.processes:
        try:
            os.killpg(started.process.pid, 0)
            return False  # something of its session is still there
        except ProcessLookupError:
            pass
    return True


def printed_ranks(cfg, out: str, user_id: str) -> tuple[list[str], list[str]]:
    """(the top-5 the demo printed for USER_ID, the exact top-5 of that user's vector)."""
    store = ArtifactStore.from_config(cfg)
    users = read_snapshot(store.kind(USER_EMBEDDINGS), "v1")
    stories = read_snapshot(store.kind(STORY_EMBEDDINGS), "v1")
    user = users.vectors[list(users.ids).index(user_id)]
    exact = [str(i) for i in stories.ids[np.argsort(-(stories.vectors @ user))[:5]]]
    printed = re.search(rf"\nuser {user_id} .*\n((?:  +\d+\. .*\n)+)", out)[1]
    return [line.split()[1] for line in printed.splitlines()], exact


def test_the_default_demo_answers_from_one_retrieval_service_then_stops_it(single_world, tmp_path, capsys):
    """`make demo`'s step 3 as shipped (index.shards = 1): one `ebr serve`, no router."""
    cfg, env = single_world
    tier = RetrievalTier(env, tmp_path)
    user_id, story_id = serve_and_query(cfg, tier, 2, 5)
    out = capsys.readouterr().out
    assert [p.name for p in tier.processes] == ["serve"]
    assert gone(tier), out
    assert "stopped the retrieval service (ebr serve)" in out
    served = re.findall(r"      served from index v1, user embeddings v1\n", out)
    assert len(served) == 2, out  # no router: no coverage
    ranked, exact = printed_ranks(cfg, out, user_id)
    assert ranked[0] == story_id
    assert len(set(ranked) & set(exact)) >= 4, (ranked, exact)  # HNSW at its validated ef, not exact


def test_the_demo_answers_through_the_router_over_two_shard_servers_then_stops_them(world, tmp_path, capsys):
    cfg, env = world
    tier = RetrievalTier(env, tmp_path, shards=2)
    user_id, story_id = serve_and_query(cfg, tier, 2, 5)
    out = capsys.readouterr().out
    assert [p.name for p in tier.processes] == ["shard-0-of-2", "shard-1-of-2", "route"]
    assert gone(tier), out
    for started in tier.processes:
        assert f"{started.name:<14} {started.url}" in out and started.log.exists()
    # Each user's answer came through the router from the one set, both shards answering.
    served = re.findall(r"served from index v1, user embeddings v1; coverage 1 \(2 of 2 shards: (.*)\)", out)
    assert len(served) == 2, out
    shard_urls = [p.url for p in tier.processes[:2]]
    assert all(line == f"shard 0 by {shard_urls[0]}, shard 1 by {shard_urls[1]}" for line in served), served
    assert "versions served:" in out and "stopped 2 shard servers" in out
    assert user_id.startswith("u") and story_id.startswith("s")

    # The ranks the demo printed are the router's merged top-5: the stories nearest the user.
    ranked, exact = printed_ranks(cfg, out, user_id)
    assert ranked[0] == story_id
    assert len(set(ranked) & set(exact)) >= 4, (ranked, exact)  # HNSW at its validated ef, not exact


def test_the_router_of_the_tier_reads_users_from_the_redis_store_the_user_dag_loaded(world, tmp_path, redis_url):  # noqa: F811
    """`router.user_store = "redis"`: what ebr_user_embeddings' load_user_store task
    writes is what the demo's router answers from."""
    from orchestration.user_store import load_user_store
    from serving.client import RetrievalClient

    cfg, env = world
    redis_env = {**env, "EBR_ROUTER__USER_STORE": "redis", "EBR_ROUTER__REDIS_URL": redis_url}
    redis_cfg = load_config(overrides=[f"root={cfg.root}"], environ=redis_env)
    assert load_user_store(redis_cfg, "v1")["count"] == cfg.world.count("n_users")
    users = read_snapshot(ArtifactStore.from_config(cfg).kind(USER_EMBEDDINGS), "v1")
    with RetrievalTier(redis_env, tmp_path, shards=2) as tier, RetrievalClient(tier.url) as client:
        versions = client.versions()
        assert versions["user_store"] == "redis" and versions["user_embeddings"]["version"] == "v1"
        answer = client.retrieve("stories", user_id=str(users.ids[7]), k=5)
        assert answer["coverage"] == 1 and answer["served"]["user_embeddings_version"] == "v1"
        stories = read_snapshot(ArtifactStore.from_config(cfg).kind(STORY_EMBEDDINGS), "v1")
        by_id = dict(zip(stories.ids, stories.vectors, strict=True))
        for hit in answer["items"]:  # scored with the user's vector as Redis holds it
            assert hit["score"] == pytest.approx(float(users.vectors[7] @ by_id[hit["id"]]), abs=1e-4)
    assert gone(tier)


def test_an_interrupt_inside_the_block_stops_every_process(world, tmp_path):
    _, env = world
    tier = RetrievalTier(env, tmp_path, shards=2)
    with pytest.raises(KeyboardInterrupt):
        with tier:
            assert all(p.process.poll() is None for p in tier.processes)
            raise KeyboardInterrupt  # Ctrl-C while the demo asks
    assert gone(tier)


def test_a_tier_that_is_not_ready_in_time_is_stopped_and_says_which_logs_to_read(world, tmp_path):
    _, env = world
    tier = RetrievalTier(env, tmp_path, shards=2, ready_timeout=1.0)  # the processes are still importing
    with pytest.raises(TierError, match=r"was not ready within 1 s .*shard-0-of-2\.log.*route\.log"):
        with tier:
            pytest.fail("the block must not run")
    assert gone(tier)


def test_a_process_that_exits_at_start_stops_the_tier_with_its_log(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBR_")}
    env.update(EBR_ROOT=f"file://{tmp_path}/root", EBR_ROUTER__DEADLINE_MS="-1", TF_USE_LEGACY_KERAS="1")
    tier = RetrievalTier(env, tmp_path, shards=2)
    # every process refuses the configuration; whichever is seen first is the one named
    with pytest.raises(
        TierError, match=r"ebr (shard-[01]-of-2|route) exited with \d+; its log .* ends:\n.*deadline_ms"
    ):
        with tier:
            pytest.fail("the block must not run")
    assert gone(tier)


def test_the_next_steps_of_a_sharded_demo_start_the_tier_and_query_the_router():
    root = "file:///tmp/somewhere/demo"
    text = next_steps(root, "u00042", "s000123", port=8090, shards=2, router_port=8091)
    assert f".venv/bin/ebr --root {root} serve --shard 0/2 --port 8101 &" in text
    assert f".venv/bin/ebr --root {root} serve --shard 1/2 --port 8102 &" in text
    assert (
        f".venv/bin/ebr --root {root} route --port 8091 "
        """--replicas '[["http://127.0.0.1:8101"],["http://127.0.0.1:8102"]]'"""
    ) in text
    assert ".venv/bin/ebr query --url http://127.0.0.1:8091 user u00042 -k 10" in text
    assert ".venv/bin/ebr query --url http://127.0.0.1:8091 similar stories s000123" in text
    assert f"{root} serve    #" not in text  # not the single service's
    assert "kill %1 %2" in tier_commands(root, 2)


def test_served_line_names_coverage_and_the_replicas_only_for_a_router():
    single = {"served": {"index_version": "i1", "user_embeddings_version": "u1"}, "items": []}
    assert served_line(single) == "served from index i1, user embeddings u1"
    routed = {
        **single,
        "coverage": 0.5,
        "shards": [{"shard": 0, "replica": "http://127.0.0.1:1", "version": "i1", "attempts": 1}],
        "missing_shards": [1],
    }
    assert served_line(routed) == (
        "served from index i1, user embeddings u1; coverage 0.5 "
        "(1 of 2 shards: shard 0 by http://127.0.0.1:1; shards [1] did not answer)"
    )
