"""The index builder on real hnswlib indexes over small clustered snapshots.

Every test publishes embedding snapshots into a fresh local artifact store, builds with
`build_and_publish_index` and reads back through `load_index`, as the service does.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from artifacts import ArtifactStore, CorruptArtifactError, IncompleteVersionError, UnknownVersionError
from artifacts.embedding_snapshots import EmbeddingSnapshot, publish_snapshot
from artifacts.manifest import Manifest
from benchmarks.synthetic_vectors import clustered_vectors, story_ids
from config import load_config
from index_builder import hnsw
from index_builder.errors import IndexRollbackRefusedError, IndexValidationError
from index_builder.loaded_index import IDS_FILE, INDEX_FILE, load_index, write_ids
from index_builder.publish import build_and_publish_index, retain_indexes, rollback_index
from index_builder.validation import check_snapshot

N, DIM = 2000, 32


@pytest.fixture
def cfg(tmp_path):
    return config_for(tmp_path)


def config_for(tmp_path: Path, *overrides: str):
    # ef_construction 100 keeps each build well under a second; validation still uses
    # the 1,000 held-aside queries.
    return load_config(
        overrides=[f"root=file://{tmp_path}/root", "index.ef_construction=100", "index.threads=2", *overrides],
        environ={},
    )


def store_of(cfg) -> ArtifactStore:
    return ArtifactStore.from_config(cfg)


def put_snapshot(cfg, name: str, ids, vectors, *, model: str = "m1", collection: str = "stories", **kwargs) -> str:
    publish_snapshot(
        store_of(cfg).kind(f"embeddings/{collection}"),
        name,
        np.asarray(ids, dtype=object),
        vectors,
        model_version=model,
        as_of=0,
        reason="test",
        **kwargs,
    )
    return name


def base_world(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return story_ids(0, N), clustered_vectors(N, DIM, clusters=20, seed=seed)


def download(cfg, version: str, dest: Path, collection: str = "stories") -> Path:
    return store_of(cfg).kind(f"indexes/{collection}").download(version, dest)


# -- build, validate, publish ---------------------------------------------------------


def test_build_publishes_a_validated_version_the_loader_serves(cfg, tmp_path):
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)

    outcome = build_and_publish_index(cfg, "stories", run_id="run-1")

    assert (outcome.mode, outcome.published, outcome.version) == ("full", True, "20261124T000000Z-a")
    kind = store_of(cfg).kind("indexes/stories")
    assert kind.latest() == outcome.version
    m = outcome.manifest
    assert m.parents == {"model_version": "m1", "embedding_snapshot": "20261124T000000Z-a"}
    assert m.params == {
        "space": "ip",
        "dim": DIM,
        "M": 16,
        "ef_construction": 100,
        "ef_search": 64,
        "count": N,
        "mode": "full",
    }
    assert set(m.files) == {INDEX_FILE, IDS_FILE}
    assert m.metrics["recall_at_10"] >= 0.98 and m.metrics["validation_queries"] == 1000
    assert m.metrics["vectors_per_second"] > 0 and m.metrics["bytes_per_vector"] > DIM * 4

    loaded = load_index(download(cfg, outcome.version, tmp_path / "cache"), "stories")
    assert (loaded.count, loaded.dim, loaded.ef, loaded.model_version) == (N, DIM, 64, "m1")
    hits = loaded.search(vectors[[5, 6]], k=10)
    assert [h[0][0] for h in hits] == ["s5", "s6"]  # a stored vector finds itself first
    assert hits[0][0][1] == pytest.approx(1.0, abs=1e-5)  # score is the inner product
    assert "s5" in loaded and "nope" not in loaded
    np.testing.assert_array_equal(loaded.vector("s7"), vectors[7])
    assert loaded.vector("nope") is None


def test_search_excludes_ids_and_still_returns_k(cfg, tmp_path):
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)
    version = build_and_publish_index(cfg, "stories").version
    loaded = load_index(download(cfg, version, tmp_path / "cache"))

    plain = [i for i, _ in loaded.search(vectors[5], k=10)[0]]
    excluded = set(plain[:4]) | {"not-in-index"}
    filtered = [i for i, _ in loaded.search(vectors[5], k=10, exclude=excluded)[0]]

    assert len(filtered) == 10 and not excluded & set(filtered)
    assert filtered[:6] == plain[4:]  # the rest keep their order


def test_concurrent_searches_answer_as_sequential_ones(cfg, tmp_path):
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)
    loaded = load_index(download(cfg, build_and_publish_index(cfg, "stories").version, tmp_path / "cache"))
    queries = hnsw.held_aside_queries(vectors, 200, seed=3)

    sequential = [loaded.search(q, k=10) for q in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda q: loaded.search(q, k=10), queries))

    assert concurrent == sequential


def test_search_many_answers_as_one_search_each(cfg, tmp_path):
    """`search_many` groups single queries whose fetch fits in ef into one hnswlib call; the
    answers are those of `search`, for grouped and ungrouped searches alike."""
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)
    loaded = load_index(download(cfg, build_and_publish_index(cfg, "stories").version, tmp_path / "cache"))
    queries = hnsw.held_aside_queries(vectors, 8, seed=5)
    seen = [i for i, _ in loaded.search(queries[0], k=20)[0]][:7]
    searches = [
        (queries[0], 10, ()),
        (queries[1], 3, seen),  # grouped, with exclusions: fetch 3 + those it holds
        (queries[2], 40, ()),  # grouped too: the deepest fetch of the group (<= ef 64)
        (queries[3], loaded.ef + 5, ()),  # deeper than ef: searched on its own
        (queries[4:7], 5, ()),  # several rows: on its own
        (queries[7], 10, ["s1", "not-in-index"]),
    ]

    one_by_one = [loaded.search(q, k, exclude) for q, k, exclude in searches]
    calls = []
    knn = loaded._knn
    loaded._knn = lambda q, k: (calls.append(len(q)), knn(q, k))[1]

    assert loaded.search_many(searches) == one_by_one
    assert sorted(calls) == [1, 3, 4]  # searches 0, 1, 2 and 5 together; 3 and 4 alone
    assert loaded.search_many([]) == []
    with pytest.raises(ValueError, match="queries must be"):
        loaded.search_many([(queries[0], 10, ()), (queries[0][:5], 10, ())])


def test_search_stacked_answers_as_one_search_each_flattened(cfg, tmp_path):
    """`search_stacked`: one hnswlib call for a stack of single queries without exclusions,
    the hits of `search` row by row, flattened; None where it cannot stand for them."""
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)
    loaded = load_index(download(cfg, build_and_publish_index(cfg, "stories").version, tmp_path / "cache"))
    queries = hnsw.held_aside_queries(vectors, 4, seed=6)
    ks = [10, 3, loaded.ef, 1]
    calls = []
    knn = loaded._knn
    loaded._knn = lambda q, k: (calls.append((len(q), k)), knn(q, k))[1]

    counts, hit_ids, scores = loaded.search_stacked(queries, ks)

    assert calls == [(4, loaded.ef)] and counts == ks
    assert scores.dtype == np.float32 and len(hit_ids) == len(scores) == sum(ks)
    pairs = list(zip(hit_ids, scores.tolist(), strict=True))
    start = 0
    for query, k in zip(queries, ks, strict=True):
        assert pairs[start : start + k] == loaded.search(query, k)[0]
        start += k
    assert loaded.search_stacked(queries[:2], [10, loaded.ef + 1]) is None  # deeper than ef
    assert loaded.search_stacked(queries[:2], [10, 0]) is None
    assert loaded.search_stacked(queries[:2, :5], [10, 10]) is None  # wrong dimension
    assert loaded.search_stacked(queries[:2], [10]) is None
    assert loaded.search_stacked(queries[:0], []) is None


def test_rerun_for_the_same_snapshot_reuses_the_version(cfg):
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)
    first = build_and_publish_index(cfg, "stories", run_id="run-1")

    again = build_and_publish_index(cfg, "stories", run_id="run-1")

    assert (again.version, again.mode, again.published) == (first.version, "reused", False)
    assert again.recall_at_10 == first.recall_at_10
    assert "LATEST already names" in again.detail
    assert [m.to_version for m in store_of(cfg).kind("indexes/stories").history()] == [first.version]


def test_unpublished_build_is_published_by_the_rerun(cfg):
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)
    built = build_and_publish_index(cfg, "stories", publish=False)
    assert store_of(cfg).kind("indexes/stories").latest() is None and not built.published

    retried = build_and_publish_index(cfg, "stories")

    assert (retried.mode, retried.published) == ("reused", True)
    assert store_of(cfg).kind("indexes/stories").latest() == built.version


# -- validation refusals --------------------------------------------------------------


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda v: v.__setitem__((17, 3), np.nan), "NaN"),
        (lambda v: v.__setitem__(17, v[17] * 1.5), "not L2-normalised"),
    ],
    ids=["nan", "not-normalised"],
)
def test_bad_snapshot_is_refused_and_nothing_published(cfg, spoil, message):
    ids, vectors = base_world()
    spoil(vectors)
    put_snapshot(cfg, "20261124T000000Z-bad", ids, vectors)

    with pytest.raises(IndexValidationError, match=message) as refused:
        build_and_publish_index(cfg, "stories")

    assert "s17" in str(refused.value)
    kind = store_of(cfg).kind("indexes/stories")
    assert kind.latest() is None and kind.versions() == []


def test_snapshot_disagreeing_with_its_manifest_is_refused():
    ids, vectors = base_world()

    def snapshot(**fields) -> EmbeddingSnapshot:
        body = {
            "kind": "embeddings/stories",
            "version": "v",
            "files": {},
            "created_at": "",
            "created_by": "",
            "parents": {"model_version": "m1"},
            "params": {"dim": DIM},
            "metrics": {"count": N},
        }
        for key, value in fields.items():
            body[key].update(value)
        return EmbeddingSnapshot(
            ids, vectors, Manifest.from_json(json.dumps(body | {"schema_version": 1}).encode(), "test")
        )

    check_snapshot(snapshot())  # the consistent one passes
    with pytest.raises(IndexValidationError, match="dimension 32, manifest says params.dim=64"):
        check_snapshot(snapshot(params={"dim": 64}))
    with pytest.raises(IndexValidationError, match="2000 rows, manifest says metrics.count=2001"):
        check_snapshot(snapshot(metrics={"count": N + 1}))
    with pytest.raises(IndexValidationError, match="model_version"):
        check_snapshot(snapshot(parents={"model_version": ""}))


def test_story_index_is_validated_on_same_model_user_embeddings_when_there_are_some(cfg):
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)
    first = build_and_publish_index(cfg, "stories")
    assert first.manifest.metrics["validation_query_source"] == "perturbed stored vectors"

    # 300 users of the same model: the queries the story index will really answer.
    users = clustered_vectors(300, DIM, clusters=20, seed=5)
    put_snapshot(cfg, "20261124T010000Z-u", [f"u{i}" for i in range(300)], users, collection="users")
    second = build_and_publish_index(
        cfg, "stories", snapshot=put_snapshot(cfg, "20261124T020000Z-b", ids, vectors), full=True
    )
    assert second.manifest.metrics["validation_query_source"] == "user embeddings 20261124T010000Z-u"
    assert second.manifest.metrics["validation_queries"] == 300

    # Users of another model are not this index's queries.
    put_snapshot(cfg, "20261124T030000Z-u", [f"u{i}" for i in range(300)], users, collection="users", model="m2")
    third = build_and_publish_index(
        cfg, "stories", snapshot=put_snapshot(cfg, "20261124T040000Z-c", ids, vectors), full=True
    )
    assert third.manifest.metrics["validation_query_source"] == "perturbed stored vectors"


def test_recall_below_threshold_publishes_nothing_and_says_why(tmp_path):
    cfg = config_for(
        tmp_path,
        "index.m=2",
        "index.ef_construction=2",
        "index.ef_search=1",
        "index.max_ef_search=4",
        "index.min_recall_at_10=0.995",
    )
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)

    with pytest.raises(
        IndexValidationError,
        match=r"recall@10 0\.\d+ on 1000 held-aside queries is below "
        r"index.min_recall_at_10=0.995 \(tried .* at ef=1, .* at ef=2, .* at ef=4\)",
    ):
        build_and_publish_index(cfg, "stories")

    kind = store_of(cfg).kind("indexes/stories")
    assert kind.latest() is None and kind.complete_versions() == []


def test_validation_raises_ef_until_recall_passes_and_the_loader_serves_with_it(tmp_path):
    cfg = config_for(tmp_path, "index.ef_search=2", "index.min_recall_at_10=0.99")
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)

    outcome = build_and_publish_index(cfg, "stories")

    tried = outcome.manifest.metrics["recall_at_10_by_ef"]
    served = outcome.manifest.params["ef_search"]
    assert served > 2 and list(tried)[0] == "2" and tried["2"] < 0.99 <= tried[str(served)]
    assert f"serving with ef={served}" in outcome.detail
    assert load_index(download(cfg, outcome.version, tmp_path / "cache")).ef == served


# -- the loader refuses damaged files -------------------------------------------------


def test_truncated_or_altered_index_file_is_refused_by_the_loader(cfg, tmp_path):
    ids, vectors = base_world()
    put_snapshot(cfg, "20261124T000000Z-a", ids, vectors)
    version = build_and_publish_index(cfg, "stories").version
    directory = download(cfg, version, tmp_path / "cache")
    index_file = directory / INDEX_FILE
    original = index_file.read_bytes()

    index_file.write_bytes(original[:-100])
    with pytest.raises(CorruptArtifactError, match="truncated or altered"):
        load_index(directory)

    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0xFF
    index_file.write_bytes(bytes(altered))
    with pytest.raises(CorruptArtifactError, match="sha256"):
        load_index(directory)

    index_file.write_bytes(original)
    assert load_index(directory).count == N  # the intact file loads again


def test_index_file_of_another_dimension_is_refused_after_load(cfg, tmp_path):
    """hnswlib loads a 16-d file as 32-d without complaint; the self-check must not."""
    ids = story_ids(0, N)
    graph = hnsw.build_graph(clustered_vectors(N, 16, clusters=20), m=16, ef_construction=50, threads=2)
    work = tmp_path / "work"
    work.mkdir()
    graph.save_index(str(work / INDEX_FILE))
    write_ids(work / IDS_FILE, ids)
    kind = store_of(cfg).kind("indexes/stories")
    with kind.new_version(
        "20261124T000000Z-wrongdim",
        parents={"model_version": "m1"},
        params={"space": "ip", "dim": DIM, "count": N, "ef_search": 64},
    ) as writer:
        writer.add_file(INDEX_FILE, work / INDEX_FILE)
        writer.add_file(IDS_FILE, work / IDS_FILE)

    with pytest.raises(CorruptArtifactError, match="holds 16-d vectors, the manifest says dim=32"):
        load_index(download(cfg, "20261124T000000Z-wrongdim", tmp_path / "cache"))


# -- rollback and retention -----------------------------------------------------------


def publish_generations(cfg, models: list[str]) -> list[str]:
    """One snapshot + full index per model name, in time order; returns the index versions."""
    ids, vectors = base_world()
    versions = []
    for day, model in enumerate(models):
        name = put_snapshot(cfg, f"2026112{day}T000000Z-{model}", ids, vectors, model=model)
        versions.append(build_and_publish_index(cfg, "stories", snapshot=name, full=True).version)
    return versions


def test_rollback_moves_latest_and_refuses_unknown_and_incomplete_versions(cfg):
    v1, v2 = publish_generations(cfg, ["m1", "m1"])
    put_snapshot(cfg, "20261124T000000Z-users", ["u1"], clustered_vectors(1, DIM), model="m1", collection="users")

    result = rollback_index(cfg, "stories", v1, reason="bad answers", run_id="manual-1")

    kind = store_of(cfg).kind("indexes/stories")
    assert result.moved and kind.latest() == v1
    assert kind.history()[-1].reason == "bad answers" and kind.history()[-1].action == "rollback"
    with pytest.raises(UnknownVersionError, match="no version 'nope'"):
        rollback_index(cfg, "stories", "nope", reason="x")
    store_of(cfg).backend.write_bytes("indexes/stories/20261129T000000Z-half/index.hnsw", b"partial")
    with pytest.raises(IncompleteVersionError):
        rollback_index(cfg, "stories", "20261129T000000Z-half", reason="x")
    assert kind.latest() == v1


def test_rollback_to_another_model_than_the_user_embeddings_needs_force(cfg):
    old, new = publish_generations(cfg, ["m1", "m2"])
    put_snapshot(cfg, "20261124T000000Z-users", ["u1"], clustered_vectors(1, DIM), model="m2", collection="users")
    kind = store_of(cfg).kind("indexes/stories")

    with pytest.raises(IndexRollbackRefusedError, match=r"model 'm1'.*model 'm2'.*--force"):
        rollback_index(cfg, "stories", old, reason="try")
    assert kind.latest() == new

    forced = rollback_index(cfg, "stories", old, reason="incident 42", force=True)
    assert forced.moved and kind.latest() == old
    assert "forced" in kind.history()[-1].reason and "incident 42" in kind.history()[-1].reason


def test_retention_keeps_the_newest_and_whatever_latest_names(cfg):
    versions = publish_generations(cfg, ["m1", "m1", "m1", "m1"])
    rollback_index(cfg, "stories", versions[0], reason="pin the oldest")

    planned = retain_indexes(cfg, "stories", keep=2, dry_run=True)
    assert planned.deleted == [versions[1]] and store_of(cfg).kind("indexes/stories").is_complete(versions[1])

    report = retain_indexes(cfg, "stories", keep=2)

    assert report.deleted == [versions[1]]
    assert store_of(cfg).kind("indexes/stories").complete_versions() == [versions[0], *versions[2:]]


def next_world(ids: np.ndarray, vectors: np.ndarray, *, expire: int, add: int, move: int, seed: int = 1):
    """The next snapshot: the first `expire` items gone, `add` new ones, `move` re-embedded."""
    rng = np.random.default_rng(seed)
    fresh = clustered_vectors(add, DIM, clusters=20, seed=0)[rng.permutation(add)]  # same centres, new points
    fresh = hnsw.held_aside_queries(fresh, add, seed=seed, noise=0.3)
    kept_ids, kept = ids[expire:], vectors[expire:].copy()
    moved = rng.choice(len(kept), size=move, replace=False)
    kept[moved] = hnsw.held_aside_queries(kept[moved], move, seed=seed + 1, noise=0.2)
    new_ids = np.concatenate([kept_ids, story_ids(len(ids), add)])
    return new_ids, np.concatenate([kept, fresh]).astype(np.float32)


def test_the_served_ef_is_narrowed_down_between_the_last_failing_and_first_passing_doubling():
    """Doubling 64 -> 128 -> 256 passes at 256; bisection then tries 192, 160, 176 and
    serves the smallest that passed, within an eighth of the last failing ef of the true
    smallest (180 here). A first ef that passes is served as it is, never lowered; an ef
    that never passes ends at max_ef, the largest tried."""
    from index_builder.validation import smallest_passing_ef

    recall = lambda ef: min(1.0, ef / 300)  # noqa: E731 - passes 0.6 from ef=180 on
    served, tried = smallest_passing_ef(recall, 64, 512, 0.6)
    assert list(tried) == [64, 128, 256, 192, 160, 176]
    assert served == 192 and 192 - 180 <= 176 // 8

    served, tried = smallest_passing_ef(recall, 200, 512, 0.6)
    assert list(tried) == [200] and served == 200

    served, never = smallest_passing_ef(lambda ef: 0.1, 64, 300, 0.6)
    assert list(never) == [64, 128, 256, 300] and served == 300
