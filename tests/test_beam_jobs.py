"""The Beam embedding jobs: transforms with TestPipeline, and whole jobs on a tiny world.

The end-to-end tests train a small real model once per module (about 15 s), run the
jobs on DirectRunner and compare every vector with the SavedModel called directly on
features built from the whole event log: the jobs' per-bucket features must equal the
training code's (no training/serving skew).
"""

import json
import re
import shutil
import zlib
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from artifacts import CREATOR_EMBEDDINGS, MODELS, STORY_EMBEDDINGS, USER_EMBEDDINGS, ArtifactStore
from artifacts.embedding_snapshots import read_snapshot
from beam_jobs import story_embeddings, user_embeddings
from beam_jobs.errors import ErrorRateExceededError
from beam_jobs.records import EmbeddingBatch, RowRules, key_buckets, list_size_check, validate_rows
from beam_jobs.transforms import (
    DEAD_LETTER,
    ReadRows,
    _ValidateAndBucket,
    creator_embeddings,
    creator_partial_sums,
    error_rates,
)
from config import FeatureConfig, load_config
from models.features import Catalog, EventHistory, story_features, user_features
from models.pipeline import train_and_publish
from models.tower_runner import TowerRunner
from tests.parquet_support import damage_parquet
from warehouse import Warehouse, WarehouseSchemaError
from warehouse.synthetic import generate_world

SMALL_MODEL = [
    "world.size=tiny",
    "train.epochs=2",
    "train.batch_size=256",
    "train.holdout_days=2",
    "train.warmup_steps=10",  # ~30 steps an epoch: the default 200-step warm-up would outlast the run
    "train.eval_ks=[10,100]",
    # A 2-epoch model to test the plumbing: the gate reads recall@100 only (the default
    # gate is tested in tests/test_training.py).
    'gate.metrics=["recall@100"]',
    "gate.min_eval_positives=100",
    "train.tune_baselines=false",  # the baselines as configured: their tuning is tests/test_training.py's
    "model.mlp_width=64",
    "model.id_embedding_dim=32",
    "model.cross_projection_dim=16",
]

# -- pure functions -------------------------------------------------------------------------


def test_key_buckets_are_crc32_modulo_and_stable():
    # Worked out with zlib directly, not with the function under test.
    assert key_buckets(["u1", "u2"], 7).tolist() == [zlib.crc32(b"u1") % 7, zlib.crc32(b"u2") % 7]
    assert key_buckets([], 3).tolist() == []


def _stories_table():
    return pa.table(
        {
            "story_id": ["s1", None, "s3", "s4", "s5"],
            "content_embedding": pa.array(
                [[0.1, 0.2], [0.3, 0.4], [0.5], [float("nan"), 1.0], [1.0, 0.0]], pa.list_(pa.float32())
            ),
            "duration_s": pa.array([1.0, 2.0, None, 4.0, None], pa.float32()),
        }
    )


STORY_RULES = RowRules(
    "stories",
    "story_id",
    {"story_id": pa.string(), "content_embedding": pa.list_(pa.float32()), "duration_s": pa.float32()},
    row_checks=(list_size_check("content_embedding", 2),),
    nullable=frozenset({"duration_s"}),
)


def test_validate_rows_gives_each_bad_row_its_reason():
    good, letters = validate_rows(_stories_table(), STORY_RULES)
    assert good["story_id"].to_pylist() == ["s1", "s5"]  # a null duration is allowed
    assert [(d.id, d.reason) for d in letters] == [
        (None, "story_id is missing"),
        ("s3", "content_embedding must hold 2 finite numbers"),
        ("s4", "content_embedding must hold 2 finite numbers"),
    ]
    assert json.loads(letters[1].record)["content_embedding"] == [0.5]


def test_a_column_of_the_wrong_type_dead_letters_the_whole_batch():
    table = pa.table(
        {
            "story_id": pa.array([1, 2]),
            "content_embedding": pa.array([[0.0, 1.0]] * 2, pa.list_(pa.float32())),
            "duration_s": pa.array([1.0, 2.0], pa.float32()),
        }
    )
    good, letters = validate_rows(table, STORY_RULES)
    assert len(good) == 0
    assert {d.reason for d in letters} == {"column 'story_id' has type int64, expected string"}


def test_error_rates_per_source():
    assert error_rates({"users": 200, "events": 0}, {"users": 3}) == {"users": 0.015}


# -- transforms on TestPipeline -------------------------------------------------------------


def test_validate_and_bucket_routes_dead_letters_and_keys_rows_by_bucket():
    with BeamTestPipeline() as p:
        out = (
            p
            | beam.Create([_stories_table()])
            | beam.ParDo(_ValidateAndBucket(STORY_RULES, 4, "story_id", None)).with_outputs(
                DEAD_LETTER, "rows_read", main="rows"
            )
        )
        keyed = out.rows | beam.FlatMap(lambda kv: [(kv[0], s) for s in kv[1]["story_id"].to_pylist()])
        assert_that(keyed, equal_to([(zlib.crc32(b"s1") % 4, "s1"), (zlib.crc32(b"s5") % 4, "s5")]), label="rows")
        assert_that(
            out[DEAD_LETTER] | beam.Map(lambda d: (d.source, d.id, d.reason)),
            equal_to(
                [
                    ("stories", None, "story_id is missing"),
                    ("stories", "s3", "content_embedding must hold 2 finite numbers"),
                    ("stories", "s4", "content_embedding must hold 2 finite numbers"),
                ]
            ),
            label="dead letters",
        )
        assert_that(out.rows_read, equal_to([("stories", 5)]), label="rows read")


def test_creator_vectors_are_the_normalised_mean_of_their_stories():
    # Creator a has (1,0) in one batch and (0,1) in another: the sum (1,1) normalised is
    # (0.7071, 0.7071). Creator b has one story, (0,1), which is its own direction.
    batches = [
        EmbeddingBatch(
            np.array(["s1", "s3"], object), np.array([[1, 0], [0, 1]], np.float32), np.array(["a", "b"], object)
        ),
        EmbeddingBatch(np.array(["s2"], object), np.array([[0, 1]], np.float32), np.array(["a"], object)),
    ]
    with BeamTestPipeline() as p:
        vectors = (
            p
            | beam.Create(batches)
            | beam.FlatMap(creator_partial_sums, 3)
            | beam.GroupByKey()
            | beam.Map(creator_embeddings)
            | beam.FlatMap(
                lambda b: [(c, tuple(round(float(x), 4) for x in v)) for c, v in zip(b.ids, b.vectors, strict=True)]
            )
        )
        assert_that(vectors, equal_to([("a", (0.7071, 0.7071)), ("b", (0.0, 1.0))]))


@pytest.mark.parametrize("how", ["truncated", "random bytes", "wrong schema"])
def test_the_read_step_fails_naming_a_damaged_file(tmp_path, how):
    # The read step itself (as a worker runs it), without the driver's check of the inputs.
    path = tmp_path / "part-00000.parquet"
    users = {
        "user_id": ["u1", "u2"],
        "country": ["US"] * 2,
        "language": ["en"] * 2,
        "age_bucket": ["18-24"] * 2,
        "account_created_ts": [0, 0],
    }
    pq.write_table(pa.table(users), path)
    problem = damage_parquet(path, how)
    with pytest.raises(WarehouseSchemaError) as err:
        with BeamTestPipeline() as p:
            _ = p | ReadRows([str(path)], user_embeddings.USER_RULES, columns=user_embeddings.USER_COLUMNS, buckets=2)
    assert str(path) in str(err.value) and re.search(problem, str(err.value)), str(err.value)


# -- whole jobs on a tiny world -------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic world with a trained, published model."""
    root = tmp_path_factory.mktemp("beam") / "root"
    cfg = load_config(overrides=[f"root=file://{root}", *SMALL_MODEL], environ={})
    generate_world(cfg.world, Warehouse.from_config(cfg), progress=False)
    outcome = train_and_publish(cfg, root.parent / "work", "20261001T000000Z-train-test", verbose=0)
    assert outcome.published is not None and outcome.published.moved, outcome.gate
    return root


def _job_args(root: Path, *extra: str) -> list[str]:
    return [f"--root=file://{root}", *(f"--set={s}" for s in SMALL_MODEL), *extra]


def _expected(root: Path, snapshot, entity: str) -> np.ndarray:
    """The tower called directly on features built from the whole log (training's way)."""
    store = ArtifactStore.open(f"file://{root}")
    model_version = snapshot.model_version
    features = json.loads(store.kind(MODELS).read_file(model_version, "features.json"))
    fcfg = FeatureConfig.model_validate(features["features"])
    warehouse = Warehouse.open(f"file://{root}")
    catalog = Catalog.from_tables(
        warehouse.read_table("users"), warehouse.read_table("stories"), warehouse.read_table("creators"), fcfg
    )
    history = EventHistory.from_events(warehouse.read_events(), catalog, fcfg)
    as_of = np.full(len(snapshot), snapshot.manifest.params["as_of"])
    if entity == "users":
        inputs, tower = user_features(history, catalog.user_index(snapshot.ids), as_of), "user_tower"
    else:
        inputs, tower = story_features(history, catalog.story_index(snapshot.ids), as_of), "story_tower"
    return TowerRunner(store.kind(MODELS).local_dir(model_version) / tower)(inputs)  # wherever its manifest keeps it


@pytest.fixture(scope="module")
def user_run(world):
    return user_embeddings.run(_job_args(world, "--run_id=test-run"))


@pytest.fixture(scope="module")
def story_run(world):
    return story_embeddings.run(_job_args(world, "--as_of=2026-10-14T12:00:00Z"))


@pytest.mark.slow
def test_user_job_embeds_every_user_exactly_as_the_tower_does(world, user_run):
    (outcome,) = user_run
    store = ArtifactStore.open(f"file://{world}")
    snapshot = read_snapshot(store.kind(USER_EMBEDDINGS))
    assert snapshot.manifest.version == outcome.snapshot and outcome.published
    assert len(snapshot) == 300 == outcome.count and snapshot.dim == 128
    assert snapshot.model_version == "20261001T000000Z-train-test"
    assert (
        outcome.snapshot == "20261015T000000Z-users-model_20261001T000000Z-test-run"
    )  # as of the end of the last partition
    assert outcome.counters["users_read"] == 300 and outcome.counters["users_embedded"] == 300
    np.testing.assert_allclose(snapshot.vectors, _expected(world, snapshot, "users"), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(snapshot.vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_story_job_embeds_eligible_stories_and_their_creators(world, story_run):
    stories_outcome, creators_outcome = story_run
    store = ArtifactStore.open(f"file://{world}")
    stories = read_snapshot(store.kind(STORY_EMBEDDINGS))
    creators = read_snapshot(store.kind(CREATOR_EMBEDDINGS))
    np.testing.assert_allclose(stories.vectors, _expected(world, stories, "stories"), atol=1e-5)

    table = Warehouse.open(f"file://{world}").read_table("stories")
    created = dict(zip(table["story_id"].to_pylist(), table["created_ts"].to_pylist(), strict=True))
    as_of, max_age_s = stories.manifest.params["as_of"], 7 * 86_400
    eligible = {s for s, t in created.items() if as_of - max_age_s <= t < as_of}
    assert set(stories.ids) == eligible and len(eligible) > 100

    creator_of = dict(zip(table["story_id"].to_pylist(), table["creator_id"].to_pylist(), strict=True))
    owners = np.array([creator_of[s] for s in stories.ids])
    assert set(creators.ids) == set(owners)
    for creator, vector in zip(creators.ids[:10], creators.vectors[:10], strict=True):
        mean = stories.vectors[owners == creator].mean(axis=0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-5)
    assert creators.manifest.parents == {
        "model_version": stories.model_version,
        "story_snapshot": stories.manifest.version,
    }
    assert stories_outcome.published and creators_outcome.published


@pytest.mark.slow
def test_a_rerun_of_the_same_run_reuses_the_snapshot(world, user_run):
    (again,) = user_embeddings.run(_job_args(world, "--run_id=test-run"))
    assert again.reused and again.snapshot == user_run[0].snapshot
    assert "LATEST already names" in again.published_detail
    assert len(ArtifactStore.open(f"file://{world}").kind(USER_EMBEDDINGS).history()) == 1


@pytest.mark.slow
def test_multi_process_mode_gives_the_same_snapshot(world, user_run):
    (outcome,) = user_embeddings.run(
        _job_args(
            world,
            "--snapshot=multi-process",
            "--no_publish",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        )
    )
    assert not outcome.published
    kind = ArtifactStore.open(f"file://{world}").kind(USER_EMBEDDINGS)
    single, multi = read_snapshot(kind, user_run[0].snapshot), read_snapshot(kind, "multi-process")
    order = np.argsort(multi.ids)
    assert list(multi.ids[order]) == sorted(single.ids)
    np.testing.assert_allclose(multi.vectors[order], single.vectors[np.argsort(single.ids)], atol=1e-6)
    assert outcome.counters["users_embedded"] == 300


@pytest.fixture(scope="module")
def damaged_world(world, tmp_path_factory):
    """A copy of the world whose stories table has 3 bad rows among 2,000."""
    root = tmp_path_factory.mktemp("damaged") / "root"
    shutil.copytree(world / "warehouse", root / "warehouse")
    shutil.copytree(world / "models", root / "models")
    path = root / "warehouse" / "stories" / "part-00000.parquet"
    stories = pq.read_table(path)
    content = stories["content_embedding"].to_pylist()
    content[0] = [float("nan")] * len(content[0])
    content[1] = content[1][:-1]
    creator = stories["creator_id"].to_pylist()
    creator[2] = None
    stories = stories.set_column(
        stories.schema.get_field_index("content_embedding"),
        "content_embedding",
        pa.array(content, pa.list_(pa.float32())),
    )
    stories = stories.set_column(
        stories.schema.get_field_index("creator_id"), "creator_id", pa.array(creator, pa.string())
    )
    pq.write_table(stories, path)
    return root, stories["story_id"].to_pylist()[:3]


@pytest.mark.slow
def test_bad_records_are_dead_lettered_with_reasons(damaged_world):
    root, bad_ids = damaged_world
    outcomes = story_embeddings.run(_job_args(root, "--as_of=2026-10-14T12:00:00Z"))
    kind = ArtifactStore.open(f"file://{root}").kind(STORY_EMBEDDINGS)
    manifest = kind.manifest(outcomes[0].snapshot)
    assert manifest.metrics["dead_letters"] == {"stories": 3}
    assert manifest.metrics["error_rates"]["stories"] == pytest.approx(3 / 2000)
    letters = [
        json.loads(line) for line in kind.read_file(outcomes[0].snapshot, "dead_letter.jsonl").decode().splitlines()
    ]
    assert sorted((d["id"], d["reason"]) for d in letters) == sorted(
        [
            (bad_ids[0], "content_embedding must hold 32 finite numbers"),
            (bad_ids[1], "content_embedding must hold 32 finite numbers"),
            (bad_ids[2], "creator_id is missing"),
        ]
    )
    assert not set(bad_ids) & set(read_snapshot(kind, outcomes[0].snapshot).ids)


@pytest.mark.slow
def test_the_job_fails_and_publishes_nothing_above_the_error_rate(damaged_world):
    root, _ = damaged_world
    kind = ArtifactStore.open(f"file://{root}").kind(STORY_EMBEDDINGS)
    before = kind.latest()
    with pytest.raises(
        ErrorRateExceededError, match=r"stories: 3 of 2000 records dead-lettered \(0.15% > embed.max_error_rate 0.10%\)"
    ):
        story_embeddings.run(
            _job_args(
                root, "--as_of=2026-10-14T12:00:00Z", "--snapshot=too-many-errors", "--set=embed.max_error_rate=0.001"
            )
        )
    assert kind.latest() == before
    assert "too-many-errors" not in kind.complete_versions()


@pytest.mark.slow
def test_ebr_embed_prints_counters_and_the_snapshot(world, capsys):
    from cli.main import main

    code = main(
        [
            "--root",
            f"file://{world}",
            *(a for s in SMALL_MODEL for a in ("--set", s)),
            "embed",
            "users",
            "--snapshot",
            "from-cli",
            "--no-publish",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "users_embedded        300" in out
    assert "embeddings/users/from-cli" in out and "not published (--no_publish)" in out


def _copy_world(world: Path, root: Path) -> Path:
    shutil.copytree(world / "warehouse", root / "warehouse")
    shutil.copytree(world / "models", root / "models")
    return root


@pytest.mark.slow
def test_ebr_embed_names_a_damaged_warehouse_file_in_one_error_line(world, tmp_path, capsys):
    from cli.main import main

    root = _copy_world(world, tmp_path / "root")
    path = root / "warehouse" / "events" / "dt=2026-10-05" / "part-00000.parquet"
    damage_parquet(path, "truncated")
    code = main(
        ["--root", f"file://{root}", *(a for s in SMALL_MODEL for a in ("--set", s)), "embed", "users", "--no-publish"]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1
    assert (
        len(err) == 1
        and err[0].startswith("error: ")
        and str(path) in err[0]
        and "is not a readable Parquet file" in err[0]
    ), err


@pytest.fixture(scope="module")
def features_step_dead_letters(world, tmp_path_factory):
    """A copy of the world with 100 events of users the users table lacks, and 5 stories
    eligible at 2026-10-14T12:00Z written twice: both are dead-lettered by the features
    steps (after the read), not by validation."""
    root = _copy_world(world, tmp_path_factory.mktemp("features-dead") / "root")
    partition = root / "warehouse" / "events" / "dt=2026-10-10" / "part-00000.parquet"
    events = pq.read_table(partition)
    ghosts = events.slice(0, 100).set_column(0, "user_id", pa.array([f"ghost-{i}" for i in range(100)]))
    pq.write_table(pa.concat_tables([events, ghosts]), partition)
    path = root / "warehouse" / "stories" / "part-00000.parquet"
    stories = pq.read_table(path)
    as_of = 1_791_979_200  # 2026-10-14T12:00:00Z
    created = stories["created_ts"].to_numpy()
    eligible = np.flatnonzero((created >= as_of - 7 * 86_400) & (created < as_of))[:5]
    pq.write_table(pa.concat_tables([stories, stories.take(eligible)]), path)
    return root


@pytest.mark.slow
def test_the_counters_count_the_dead_letters_of_the_features_step(features_step_dead_letters, capsys):
    from cli.main import main

    root = features_step_dead_letters
    reason = "event of a user missing from the users table"
    code = main(
        [
            "--root",
            f"file://{root}",
            *(a for s in SMALL_MODEL for a in ("--set", s)),
            "embed",
            "users",
            "--snapshot",
            "ghosts",
            "--no-publish",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    metrics = ArtifactStore.open(f"file://{root}").kind(USER_EMBEDDINGS).manifest("ghosts").metrics
    assert metrics["dead_letters"] == {"events": 100}
    # What `ebr embed` prints: the totals per source and per reason, as the manifest says.
    assert re.search(r"^events_dead_letters +100$", out, re.M), out
    assert re.search(rf"^events_dead_letters: {reason} +100$", out, re.M), out
    assert metrics["dead_letter_reasons"] == {"events": {reason: 100}}

    stories, creators = story_embeddings.run(
        _job_args(root, "--as_of=2026-10-14T12:00:00Z", "--snapshot=duplicates", "--no_publish")
    )
    manifest = ArtifactStore.open(f"file://{root}").kind(STORY_EMBEDDINGS).manifest("duplicates")
    assert manifest.metrics["dead_letters"] == {"stories": 5}
    assert (
        stories.counters["stories_dead_letters"] == 5
        and stories.counters["stories_dead_letters: duplicate story_id"] == 5
    )
    assert manifest.metrics["dead_letter_reasons"] == {"stories": {"duplicate story_id": 5}}
    assert stories.counters.get("events_dead_letters", 0) == 0
