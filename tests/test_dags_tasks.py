"""The functions of `orchestration` behind the DAGs' tasks, called directly: run identity
and version names, the embedding plan, the index validation, retention. (The DAG files
themselves: test_dags.py; end-to-end runs: test_dags_run.py.)
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tests.airflow_support import process_airflow_home
from tests.serving_support import publish_model_versions


@pytest.fixture(scope="module", autouse=True)
def airflow_home():
    """The plan test imports Airflow's Beam provider: give this process its own home first."""
    return process_airflow_home()


def test_index_collections_are_the_index_builders():
    from index_builder.publish import COLLECTIONS as BUILDER_COLLECTIONS
    from orchestration.indexes import COLLECTIONS

    assert COLLECTIONS == BUILDER_COLLECTIONS


def test_version_names_carry_the_logical_date_and_the_run():
    from orchestration.runs import RunIdentity

    run = RunIdentity("ebr_story_index", "scheduled__2026-10-14T22:00:00+00:00", datetime(2026, 10, 14, 22, tzinfo=UTC))
    assert run.version == "20261014T220000Z-ebr_story_index-scheduled__2026-10-14T22-00-00+00-00"
    assert RunIdentity(run.dag_id, run.run_id, run.logical_date).version == run.version  # a rerun: same name
    with pytest.raises(ValueError, match="timezone"):
        RunIdentity("d", "r", datetime(2026, 10, 14))


def test_runs_without_a_logical_date_are_named_after_run_after():
    from types import SimpleNamespace

    from orchestration.runs import RunIdentity

    due = datetime(2026, 10, 14, 3, 7, tzinfo=UTC)
    dag_run = SimpleNamespace(
        dag_id="ebr_user_embeddings", run_id="asset_triggered__x", logical_date=None, run_after=due
    )
    run = RunIdentity.from_context({"dag_run": dag_run, "logical_date": None})
    assert run.logical_date == due and run.version.startswith("20261014T030700Z-ebr_user_embeddings-asset_triggered__x")


def test_pipeline_options_from_config_become_the_operators_dict():
    from orchestration.embeddings import pipeline_options_dict

    options = [
        "--project=p",
        "--region=europe-west4",
        "--experiments=use_runner_v2",
        "--experiments=a",
        "--save_main_session",
    ]
    assert pipeline_options_dict(options) == {
        "project": "p",
        "region": "europe-west4",
        "experiments": ["use_runner_v2", "a"],
        "save_main_session": True,
    }
    with pytest.raises(ValueError, match="--key=value"):
        pipeline_options_dict(["project=p"])


def test_dataflow_gets_its_project_and_region_from_the_pipeline_options():
    from orchestration.embeddings import dataflow_config

    assert dataflow_config("DirectRunner", {}) == {}
    assert dataflow_config("DataflowRunner", {"project": "p", "region": "r"})["location"] == "r"
    with pytest.raises(ValueError, match="no --region"):
        dataflow_config("DataflowRunner", {"project": "p"})


class FakeWarehouse:
    uri = "file:///w"

    def __init__(self, days):
        self.days = days

    def event_days(self):
        return self.days


def test_features_are_computed_as_of_the_logical_date_clamped_to_the_data():
    from orchestration.embeddings import resolve_as_of

    warehouse = FakeWarehouse([date(2026, 10, 1), date(2026, 10, 14)])
    inside = datetime(2026, 10, 14, 20, tzinfo=UTC)
    assert resolve_as_of(warehouse, inside) == (inside, "the run's logical date")
    as_of, why = resolve_as_of(warehouse, datetime(2026, 11, 24, 6, tzinfo=UTC))
    assert as_of == datetime(2026, 10, 15, tzinfo=UTC) and "newest event partition" in why
    with pytest.raises(ValueError, match="before the first event day 2026-10-01"):
        resolve_as_of(warehouse, datetime(2026, 9, 1, tzinfo=UTC))


def test_the_plan_reaches_the_beam_job_as_flags_it_parses(tmp_path, monkeypatch):
    """The operator turns the plan's dict into flags (the provider's own code); the job's
    options parser must read them back: model version, as-of, snapshot, run id, runner."""
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

    import warehouse
    from artifacts import MODELS, ArtifactStore
    from beam_jobs.options import EmbeddingJobOptions
    from config import load_config
    from orchestration.embeddings import NoPublishedModelError, plan_embedding_job
    from orchestration.runs import RunIdentity

    cfg = load_config(
        overrides=[
            f"root=file://{tmp_path}",
            "embed.runner=DataflowRunner",
            'embed.pipeline_options=["--project=p","--region=europe-west4","--experiments=a","--experiments=b"]',
        ],
        environ={},
    )
    run = RunIdentity("ebr_story_index", "manual__1", datetime(2026, 10, 14, 22, tzinfo=UTC))
    with pytest.raises(NoPublishedModelError, match="run the ebr_train DAG"):
        plan_embedding_job(cfg, run, "stories")
    models = ArtifactStore.from_config(cfg).kind(MODELS)
    with models.new_version("20261015T000000Z-m") as writer:
        writer.add_bytes("features.json", b"{}")
    models.publish("20261015T000000Z-m", reason="test")
    monkeypatch.setattr(
        warehouse.Warehouse,
        "from_config",
        classmethod(lambda cls, c: FakeWarehouse([date(2026, 10, 1), date(2026, 10, 14)])),
    )

    plan = plan_embedding_job(cfg, run, "stories")
    assert plan["runner"] == "DataflowRunner" and plan["snapshot"] == run.version
    assert plan["dataflow_config"] == {"project_id": "p", "location": "europe-west4", "wait_until_finished": True}
    argv = beam_options_to_args({**plan["pipeline_options"], "labels": ["airflow-version=v3-3-2"]})
    options = EmbeddingJobOptions(argv)
    assert options.model_version == "20261015T000000Z-m"
    assert options.as_of == "2026-10-14T22:00:00+00:00" and options.snapshot == run.version
    assert options.run_id == "manual__1" and options.root == f"file://{tmp_path}"
    all_options = options.get_all_options()
    assert all_options["region"] == "europe-west4" and all_options["experiments"] == ["a", "b"]


def index_run(tmp_path):
    """A config on a fresh root holding one story snapshot (2,000 clustered vectors) and
    the index version the build task made of it (LATEST not moved)."""
    import numpy as np

    from artifacts import ArtifactStore
    from artifacts.embedding_snapshots import publish_snapshot
    from config import load_config
    from orchestration.indexes import build_index
    from orchestration.runs import RunIdentity

    cfg = load_config(
        overrides=[f"root=file://{tmp_path}/root", "index.ef_construction=100", "index.threads=2"], environ={}
    )
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    vectors = (centres[rng.integers(0, 20, 2000)] + rng.normal(scale=0.3, size=(2000, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.asarray([f"s{i}" for i in range(2000)], dtype=object)
    store = ArtifactStore.from_config(cfg)
    publish_snapshot(store.kind("embeddings/stories"), "snap-1", ids, vectors, model_version="m1", as_of=0, reason="t")
    run = RunIdentity("ebr_story_index", "manual__1", datetime(2026, 10, 14, 22, tzinfo=UTC))
    return cfg, store, build_index(cfg, run, "stories", "snap-1")


def test_validate_measures_recall_again_on_queries_the_builder_never_saw(tmp_path):
    from orchestration.indexes import VALIDATE_SEED, remeasure_recall, validate_index

    cfg, store, built = index_run(tmp_path)
    validated = validate_index(cfg, built)
    assert validated["validated_recall_at_10"] >= cfg.index.min_recall_at_10 - 0.01
    again = remeasure_recall(cfg, store, "stories", built["version"])
    assert again["queries"] == cfg.index.validation_queries and again["answers"] == 10 * again["queries"]
    assert again["query_source"] == "perturbed stored vectors" and VALIDATE_SEED != 0  # the builder's seed is 0
    manifest = store.kind("indexes/stories").manifest(built["version"])
    assert again["ef"] == manifest.params["ef_search"]  # searched as it will be served
    assert store.kind("indexes/stories").latest() is None  # validate publishes nothing


def test_validate_fails_on_an_index_whose_builder_figures_pass_but_its_answers_do_not(tmp_path):
    """A version with valid checksums and the builder's recall figure (which the old check
    only re-read against the same threshold) whose id map is scrambled: every answer names
    the wrong stories. Re-measuring catches it; nothing is published."""
    import numpy as np

    from index_builder.loaded_index import IDS_FILE, INDEX_FILE, read_ids, write_ids
    from orchestration.indexes import IndexCheckError, validate_index

    cfg, store, built = index_run(tmp_path)
    kind = store.kind("indexes/stories")
    good = kind.manifest(built["version"])
    assert built["recall_at_10"] >= cfg.index.min_recall_at_10  # what the builder measured and stored
    local = kind.download(built["version"], tmp_path / "copy")
    labels_to_ids = read_ids(local / IDS_FILE)
    write_ids(local / IDS_FILE, np.random.default_rng(1).permutation(labels_to_ids))
    damaged = built["version"] + "-damaged"
    with kind.new_version(damaged, parents=good.parents, params=good.params) as writer:
        writer.add_file(INDEX_FILE, local / INDEX_FILE)
        writer.add_file(IDS_FILE, local / IDS_FILE)
        writer.metrics.update(good.metrics)
    kind.verify(damaged)  # every checksum matches: only its answers are wrong

    with pytest.raises(
        IndexCheckError, match=r"recall@10 0\.\d+ on 1000 fresh queries .* below index.min_recall_at_10"
    ):
        validate_index(cfg, {**built, "version": damaged})
    assert kind.latest() is None


def test_retention_keeps_the_pair_a_restarting_service_falls_back_to(tmp_path):
    """The story index moved on to model m2 three times while the user embeddings are still
    m1's: a service starting now serves the newest m1 pair (i1, u1), so with
    keep_versions=1 retention deletes i2 and i3 but keeps i1 beside LATEST's i4."""
    from artifacts import ArtifactStore
    from config import load_config
    from orchestration.retention import retain_kind, serving_pins

    cfg = load_config(overrides=[f"root=file://{tmp_path}", "store.keep_versions=1"], environ={})
    store = ArtifactStore.from_config(cfg)
    publish_model_versions(
        store,
        (
            ("embeddings/users", "u1", "m1"),
            ("indexes/stories", "i1", "m1"),
            ("indexes/stories", "i2", "m2"),
            ("indexes/stories", "i3", "m2"),
            ("indexes/stories", "i4", "m2"),
        ),
    )
    assert serving_pins(store) == {"indexes/stories": "i1", "embeddings/users": "u1"}

    planned = retain_kind(cfg, "indexes/stories", dry_run=True)
    assert planned["deleted"] == ["i2", "i3"] and planned["pinned"] == "i1"
    done = retain_kind(cfg, "indexes/stories")
    assert done["deleted"] == ["i2", "i3"] and store.kind("indexes/stories").complete_versions() == ["i1", "i4"]
    assert store.kind("indexes/stories").latest() == "i4"
    assert retain_kind(cfg, "embeddings/users")["deleted"] == []

    with store.kind("embeddings/users").new_version("u2", parents={"model_version": "m2"}) as writer:
        writer.add_bytes("part", b"u2")
    store.kind("embeddings/users").publish("u2", reason="the user dataflow caught up")
    assert serving_pins(store) == {"indexes/stories": "i4", "embeddings/users": "u2"}
    assert retain_kind(cfg, "indexes/stories")["deleted"] == ["i1"]  # no service needs it any more
