"""`dag.test()` of every DAG, end to end, on one tiny world (real tasks, real Beam jobs).

One module-scoped world and artifact root; the fixtures run the DAGs in pipeline order
(train -> user embeddings -> story index, twice -> rollback -> retention) with logical
dates inside the world (its events span 2026-10-01 .. 2026-10-14), and each test checks
what a user relies on in the store: LATEST pointers, manifests and history.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from artifacts import CREATOR_EMBEDDINGS, MODELS, STORY_EMBEDDINGS, USER_EMBEDDINGS, ArtifactStore
from tests.airflow_support import TINY_PIPELINE, load_dags, process_airflow_home

pytestmark = pytest.mark.slow

TRAIN_DATE = datetime(2026, 10, 15, tzinfo=UTC)
USERS_DATE = datetime(2026, 10, 14, 20, tzinfo=UTC)
STORY_DATES = (datetime(2026, 10, 14, 22, tzinfo=UTC), datetime(2026, 10, 14, 22, 30, tzinfo=UTC))


def task_states(dag_run) -> dict[str, str]:
    return {
        ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": str(ti.state)
        for ti in dag_run.get_task_instances()
    }


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    process_airflow_home()
    root = tmp_path_factory.mktemp("ebr")
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("EBR_")]:
            env.delenv(name)
        for name, value in {
            **TINY_PIPELINE,
            "EBR_ROOT": f"file://{root}",
            "EBR_ORCHESTRATION__WORKDIR": str(root / "work"),
        }.items():
            env.setenv(name, value)
        from config import load_config
        from warehouse import Warehouse
        from warehouse.synthetic import generate_world

        cfg = load_config()
        generate_world(cfg.world, Warehouse.from_config(cfg), progress=False)
        yield SimpleNamespace(cfg=cfg, store=ArtifactStore.from_config(cfg), dags=load_dags(), env=env)


@pytest.fixture(scope="module")
def trained(pipeline):
    run = pipeline.dags["ebr_train"].test(logical_date=TRAIN_DATE)
    return SimpleNamespace(run=run, states=task_states(run))


@pytest.fixture(scope="module")
def users_embedded(pipeline, trained):
    run = pipeline.dags["ebr_user_embeddings"].test(logical_date=USERS_DATE)
    return SimpleNamespace(run=run, states=task_states(run))


@pytest.fixture(scope="module")
def stories_indexed(pipeline, users_embedded):
    runs = [pipeline.dags["ebr_story_index"].test(logical_date=when) for when in STORY_DATES]
    return SimpleNamespace(runs=runs, states=[task_states(r) for r in runs])


def test_ebr_train_trains_gates_and_publishes_a_model_named_after_the_logical_date(pipeline, trained):
    assert str(trained.run.state) == "success", trained.states
    assert set(trained.states.values()) == {"success"}, trained.states
    models = pipeline.store.kind(MODELS)
    latest = models.latest()
    assert latest.startswith("20261015T000000Z-ebr_train-"), latest
    manifest = models.manifest(latest)
    assert manifest.params["dag_run"]["run_id"] == trained.run.run_id
    assert manifest.metrics["recall@100"] > 0
    assert [m.to_version for m in models.history()] == [latest]


def test_a_rerun_of_the_training_run_reuses_its_model_and_announces_it_again(pipeline, trained):
    from orchestration.runs import RunIdentity
    from orchestration.training import gate_model, publish_trained_model, train_model

    identity = RunIdentity("ebr_train", trained.run.run_id, TRAIN_DATE)
    models = pipeline.store.kind(MODELS)
    history = models.history()
    again = train_model(pipeline.cfg, identity)
    assert again["reused"] is True and again["version"] == models.latest()
    decision = gate_model(pipeline.cfg, again)
    published = publish_trained_model(pipeline.cfg, identity, again, decision)
    assert (published["moved"], published["announce"]) == (False, True)  # LATEST names it: tell downstream again
    assert models.history() == history


def test_a_model_the_gate_refuses_is_not_published(pipeline, trained):
    published = pipeline.store.kind(MODELS).latest()
    pipeline.env.setenv("EBR_GATE__MIN_LIFT_OVER_POPULARITY", "100")  # must beat popularity 101-fold
    try:
        run = pipeline.dags["ebr_train"].test(logical_date=datetime(2026, 10, 16, tzinfo=UTC))
    finally:
        pipeline.env.delenv("EBR_GATE__MIN_LIFT_OVER_POPULARITY")
    states = task_states(run)
    assert states["gate"] == "success" and states["publish_model"] == "skipped", states
    assert pipeline.store.kind(MODELS).latest() == published
    assert pipeline.store.kind(MODELS).complete_versions() == [published]


def test_ebr_user_embeddings_runs_the_beam_job_and_publishes_users_and_their_index(pipeline, trained, users_embedded):
    assert str(users_embedded.run.state) == "success", users_embedded.states
    assert users_embedded.states["embed_users"] == "success"
    snapshot = pipeline.store.kind(USER_EMBEDDINGS).latest()
    assert snapshot.startswith("20261014T200000Z-ebr_user_embeddings-"), snapshot
    manifest = pipeline.store.kind(USER_EMBEDDINGS).manifest(snapshot)
    assert manifest.parents["model_version"] == pipeline.store.kind(MODELS).latest()
    assert manifest.metrics["count"] == pipeline.cfg.world.count("n_users")
    # as of the logical date, inside the world
    assert manifest.params["as_of"] == int(USERS_DATE.timestamp())
    users_index = pipeline.store.kind("indexes/users")
    assert users_index.latest() == snapshot  # the index version carries the run's name too
    assert users_index.manifest(snapshot).parents["embedding_snapshot"] == snapshot


def test_ebr_story_index_publishes_story_and_creator_indexes_each_run(pipeline, stories_indexed):
    for run, states in zip(stories_indexed.runs, stories_indexed.states, strict=True):
        assert str(run.state) == "success", states
    first, second = (when.strftime("%Y%m%dT%H%M%SZ-ebr_story_index-") for when in STORY_DATES)
    for collection, snapshots in (("stories", STORY_EMBEDDINGS), ("creators", CREATOR_EMBEDDINGS)):
        index = pipeline.store.kind(f"indexes/{collection}")
        versions = index.complete_versions()
        assert [v[: len(first)] for v in versions] == [first, second], versions
        assert index.latest() == versions[-1]
        assert pipeline.store.kind(snapshots).latest() == versions[-1]
        manifest = index.manifest(versions[-1])
        assert manifest.metrics["recall_at_10"] >= pipeline.cfg.index.min_recall_at_10
        assert manifest.parents["model_version"] == pipeline.store.kind(MODELS).latest()


def test_a_rerun_of_the_same_run_reuses_its_versions_and_publishes_nothing_twice(pipeline, stories_indexed):
    from orchestration.embeddings import check_snapshots
    from orchestration.indexes import build_index, publish_index, validate_index
    from orchestration.runs import RunIdentity

    run = stories_indexed.runs[-1]
    identity = RunIdentity(run.dag_id, run.run_id, STORY_DATES[-1])
    index = pipeline.store.kind("indexes/stories")
    history_before = index.history()
    check_snapshots(
        pipeline.cfg,
        "stories",
        {"snapshot": identity.version, "model_version": pipeline.store.kind(MODELS).latest(), "as_of": ""},
    )
    built = build_index(pipeline.cfg, identity, "stories", identity.version)
    assert built["version"] == identity.version == index.latest()
    assert built["mode"] == "reused"
    published = publish_index(pipeline.cfg, identity, validate_index(pipeline.cfg, built))
    assert published["published"] is False and published["latest"] == identity.version
    assert index.history() == history_before


def test_ebr_rollback_moves_latest_back_and_records_the_reason(pipeline, stories_indexed):
    index = pipeline.store.kind("indexes/creators")
    older, newer = index.complete_versions()
    assert index.latest() == newer
    run = pipeline.dags["ebr_rollback"].test(
        run_conf={"collection": "creators", "version": older, "reason": "bad creator ranking"}
    )
    assert str(run.state) == "success", task_states(run)
    assert index.latest() == older
    move = index.history()[-1]
    assert (move.action, move.from_version, move.to_version) == ("rollback", newer, older)
    assert "bad creator ranking" in move.reason and move.run_id == run.run_id
    stories = pipeline.store.kind("indexes/stories")
    assert stories.latest() == stories.complete_versions()[-1]  # only the chosen collection moved


def test_ebr_rollback_to_a_version_that_does_not_exist_fails_in_its_first_task(pipeline, stories_indexed):
    index = pipeline.store.kind("indexes/stories")
    latest = index.latest()
    run = pipeline.dags["ebr_rollback"].test(
        run_conf={"collection": "stories", "version": "20261001T000000Z-no-such-run", "reason": "typo"}
    )
    states = task_states(run)
    assert str(run.state) == "failed"
    assert states == {"check_request": "failed", "roll_back": "upstream_failed"}
    assert index.latest() == latest


def test_ebr_rollback_refuses_a_malformed_version_before_any_task_runs(pipeline):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="version"):
        pipeline.dags["ebr_rollback"].test(
            run_conf={"collection": "stories", "version": "../LATEST", "reason": "sneaky"}
        )
    with pytest.raises(ParamValidationError, match="collection"):
        pipeline.dags["ebr_rollback"].test(
            run_conf={"collection": "movies", "version": "v1", "reason": "no such collection"}
        )


def test_ebr_retention_keeps_the_newest_and_whatever_latest_names(pipeline, stories_indexed):
    from orchestration.retention import RETAINED_KINDS

    pipeline.env.setenv("EBR_STORE__KEEP_VERSIONS", "1")
    before = {k: (pipeline.store.kind(k).complete_versions(), pipeline.store.kind(k).latest()) for k in RETAINED_KINDS}
    run = pipeline.dags["ebr_retention"].test(logical_date=datetime(2026, 10, 15, tzinfo=UTC))
    assert str(run.state) == "success", task_states(run)
    assert len(task_states(run)) == len(RETAINED_KINDS)
    deleted = 0
    for kind_name, (versions, latest) in before.items():
        expected = sorted({*versions[-1:], *([latest] if latest else [])})
        assert pipeline.store.kind(kind_name).complete_versions() == expected, kind_name
        deleted += len(versions) - len(expected)
    assert deleted >= 2  # the older story and creator snapshots at least
