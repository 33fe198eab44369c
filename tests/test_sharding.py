"""Shard sets (`index.shards = S`): the partition, the build, the merged recall gate, one
manifest and one LATEST per set, incremental builds and rollback per set, and the loader a
shard server uses (`download_shard` + `load_index`). Real hnswlib graphs on small data.
"""

from __future__ import annotations

import numpy as np
import pytest

from artifacts import CorruptArtifactError
from benchmarks.synthetic_vectors import clustered_vectors
from index_builder import hnsw
from index_builder.errors import IndexValidationError
from index_builder.loaded_index import IDS_FILE, INDEX_FILE, load_index
from index_builder.publish import build_and_publish_index, rollback_index
from index_builder.sharding import (
    ShardMismatchError,
    download_shard,
    merge_top_k,
    parse_shard_spec,
    shard_file,
    shard_of,
    shard_rows,
)
from tests.test_index_builder import DIM, N, base_world, config_for, next_world, put_snapshot, store_of


def test_the_partition_is_crc32_of_the_utf8_id_modulo_s():
    # zlib.crc32(b"s0") = 1662126182 (even; 1662126182 = 3 * 554042060 + 2),
    # crc32(b"s1") = 336935152 (even; mod 3 = 1), crc32(b"s2") = 2367449418 (even; mod 3 = 0).
    assert [shard_of(i, 2) for i in ("s0", "s1", "s2")] == [0, 0, 0]
    assert [shard_of(i, 3) for i in ("s0", "s1", "s2")] == [2, 1, 0]
    assert shard_rows(["s0", "s1", "s2"], 3).tolist() == [2, 1, 0]
    ids, _ = base_world()
    counts = np.bincount(shard_rows(ids, 4), minlength=4)
    assert counts.sum() == N and counts.min() > N / 4 * 0.85  # even enough for ids that differ in digits


@pytest.mark.parametrize(
    "spec, message",
    [
        ("3/2", "numbered 0 to 1"),
        ("2/2", "numbered 0 to 1"),
        ("0/0", "at least 1 shard"),
        ("1", "must look like I/S"),
        ("a/b", "must look like I/S"),
        ("-1/2", "must look like I/S"),
    ],
)
def test_a_bad_shard_spec_is_refused_with_what_to_give(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_shard_spec(spec)
    assert parse_shard_spec(" 1/3 ") == (1, 3)


def test_merge_keeps_the_k_best_once_each_best_first():
    a = [("x", 0.9), ("y", 0.5)]
    b = [("z", 0.7), ("x", 0.8), ("w", 0.5)]
    assert merge_top_k([a, b], 3) == [("x", 0.9), ("z", 0.7), ("w", 0.5)]  # tie at 0.5: by id
    assert merge_top_k([[], a], 5) == a


def test_a_shard_set_is_one_version_with_every_shard_in_its_manifest_and_one_latest(tmp_path):
    cfg = config_for(tmp_path, "index.shards=2")
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)

    outcome = build_and_publish_index(cfg, "stories")

    kind = store_of(cfg).kind("indexes/stories")
    m = outcome.manifest
    assert (outcome.mode, outcome.published, kind.latest()) == ("full", True, outcome.version)
    assert len(kind.history()) == 1  # one pointer move for the whole set
    assert set(m.files) == {shard_file(s, 2, name) for s in range(2) for name in (INDEX_FILE, IDS_FILE)}
    expected_counts = np.bincount(shard_rows(ids, 2), minlength=2).tolist()
    assert m.params["shards"] == 2 and m.params["shard_hash"] == "crc32"
    assert m.params["shard_counts"] == expected_counts and m.params["count"] == N
    assert m.metrics["recall_at_10"] >= 0.98 and "merged" in m.metrics["recall_at_10_of"]
    kind.verify(outcome.version)  # every shard's sha256

    # What a shard server loads: only its own shard, as an unsharded index of its items.
    loaded = []
    for shard in range(2):
        directory = download_shard(kind, outcome.version, shard, 2, tmp_path / "cache")
        assert sorted(p.name for p in directory.iterdir()) == ["MANIFEST.json", IDS_FILE, INDEX_FILE]
        index = load_index(directory, "stories")
        own = {i for i in ids if shard_of(i, 2) == shard}
        assert index.count == len(own) and all(i in index for i in list(own)[:50])
        assert index.version == outcome.version and index.manifest.params["shard"] == shard
        loaded.append(index)

    # The merged answer of the two shards equals exact search over the whole snapshot
    # (queries are stored vectors; ef well above the shard sizes' needs on 2,000 items).
    queries = vectors[:20]
    exact = hnsw.exact_top_k(vectors, queries, 10)
    for query, want in zip(queries, exact, strict=True):
        merged = merge_top_k([index.search(query, 10)[0] for index in loaded], 10)
        assert [item for item, _ in merged] == list(ids[want])


def test_the_unsharded_loader_refuses_a_set_and_says_how_to_serve_it(tmp_path):
    cfg = config_for(tmp_path, "index.shards=2")
    put_snapshot(cfg, "20261124T000000Z-a", *base_world())
    outcome = build_and_publish_index(cfg, "stories")
    directory = store_of(cfg).kind("indexes/stories").download(outcome.version, tmp_path / "whole")
    with pytest.raises(CorruptArtifactError, match=r"set of 2 shards.*ebr serve --shard I/2"):
        load_index(directory, "stories")
    with pytest.raises(ShardMismatchError, match=r"set of 2 shard\(s\), this server serves shard 0 of 3"):
        download_shard(store_of(cfg).kind("indexes/stories"), outcome.version, 0, 3, tmp_path / "cache")


def test_more_shards_than_a_snapshot_can_fill_is_refused_and_nothing_published(tmp_path):
    cfg = config_for(tmp_path, "index.shards=3")
    ids = np.asarray(["s0", "s1", "s2"], dtype=object)  # crc32 mod 3 = 2, 1, 0: one each ...
    put_snapshot(cfg, "20261124T000000Z-a", ids[:2], base_world()[1][:2])  # ... but only two given
    with pytest.raises(IndexValidationError, match="shard 0 of index.shards=3 would hold no item"):
        build_and_publish_index(cfg, "stories")
    assert store_of(cfg).kind("indexes/stories").latest() is None


def test_incremental_builds_and_rollback_work_per_set(tmp_path):
    cfg = config_for(tmp_path, "index.shards=2")
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)
    first = build_and_publish_index(cfg, "stories")
    new_ids, new_vectors = next_world(ids, vectors, expire=50, add=60, move=40)
    put_snapshot(cfg, "20261124T010000Z-b", new_ids, new_vectors)

    second = build_and_publish_index(cfg, "stories")

    m = second.manifest
    assert second.mode == "incremental" and m.params["shard_modes"] == ["incremental", "incremental"]
    assert m.parents["previous_index"] == first.version
    assert m.params["count"] == len(new_ids) and m.metrics["recall_at_10"] >= 0.98
    assert sum(s["added"] for s in m.metrics["shard_stats"]) == 60
    kind = store_of(cfg).kind("indexes/stories")
    for shard in range(2):
        index = load_index(download_shard(kind, second.version, shard, 2, tmp_path / "cache"), "stories")
        assert index.count == sum(1 for i in new_ids if shard_of(i, 2) == shard)

    result = rollback_index(cfg, "stories", first.version, reason="test")
    assert result.moved and kind.latest() == first.version
    assert len(kind.history()) == 3  # publish, publish, rollback: one move each for the set

    # Another shard count never updates a set in place: a full build that says why.
    put_snapshot(cfg, "20261124T020000Z-c", new_ids, new_vectors)
    third = build_and_publish_index(config_for(tmp_path, "index.shards=3"), "stories", snapshot="20261124T020000Z-c")
    assert third.mode == "full" and third.manifest.params["shards"] == 3
    assert "shard count changed from 2 to index.shards=3" in third.manifest.metrics["build_detail"]
    # ... and an unsharded build after it starts from scratch too.
    put_snapshot(cfg, "20261124T030000Z-d", new_ids, new_vectors)
    fourth = build_and_publish_index(config_for(tmp_path), "stories", snapshot="20261124T030000Z-d")
    assert fourth.mode == "full" and "shards" not in fourth.manifest.params
    assert "shard count changed from 3 to index.shards=1" in fourth.manifest.metrics["build_detail"]


def test_rebuilding_a_version_with_another_shard_count_is_refused(tmp_path):
    put_snapshot(config_for(tmp_path), "20261124T000000Z-a", *base_world())
    build_and_publish_index(config_for(tmp_path, "index.shards=2"), "stories")
    with pytest.raises(Exception, match=r"as a set of 2 shard\(s\), not index.shards=1"):
        build_and_publish_index(config_for(tmp_path), "stories")


def test_the_single_service_refuses_a_shard_set_and_keeps_serving_what_it_served(tmp_path):
    from serving.metrics import ServingMetrics
    from serving.reloader import Reloader

    ids, vectors = base_world()
    users = clustered_vectors(50, DIM, clusters=5, seed=3)
    put_snapshot(
        config_for(tmp_path),
        "20261124T000000Z-u",
        np.asarray([f"u{i}" for i in range(50)], dtype=object),
        users,
        collection="users",
    )
    put_snapshot(config_for(tmp_path), "20261124T000000Z-a", ids, vectors)
    single = build_and_publish_index(config_for(tmp_path), "stories", snapshot="20261124T000000Z-a")
    reloader = Reloader(store_of(config_for(tmp_path)), tmp_path / "cache", ServingMetrics(), searcher="inline")
    assert reloader.poll_once().action == "swapped"

    put_snapshot(config_for(tmp_path), "20261124T010000Z-b", ids, vectors)
    sharded = build_and_publish_index(config_for(tmp_path, "index.shards=2"), "stories", snapshot="20261124T010000Z-b")
    reloader.poll_once()
    refusal = reloader.refused[("indexes/stories", sharded.version)]
    assert "is a set of 2 shards" in refusal.reason and "ebr serve --shard I/2" in refusal.reason
    assert reloader.state.components["indexes/stories"].version == single.version  # the old pair keeps serving
