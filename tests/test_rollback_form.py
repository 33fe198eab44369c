"""ebr_rollback's form and first task (#16 item 3): `previous` by default, unique prefixes,
the recent versions suggested from a cheap listing at parse time (nothing on a missing,
empty or remote root, and no crash), short errors; and the publish task of the index DAGs
no longer labels a run's first publish "(rerun)"."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime

import pytest

from artifacts import ArtifactStore
from config import load_config
from orchestration.rollback import RollbackRequestError, check_rollback_request, recent_versions, rollback_form
from tests.airflow_support import load_dags, process_airflow_home

VERSIONS = (
    "20261015T000000Z-ebr_story_index-scheduled__2026-10-15T00-00-00-00-00",
    "20261015T003000Z-ebr_story_index-scheduled__2026-10-15T00-30-00-00-00",
    "20261016T000000Z-ebr_story_index-manual__2026-12-01T10-47-08.959219+00-00",
)


@pytest.fixture(scope="module", autouse=True)
def airflow_home():
    return process_airflow_home()


def populate(root: str, collection: str = "stories", names=VERSIONS) -> None:
    kind = ArtifactStore.open(root).kind(f"indexes/{collection}")
    for name in names:
        with kind.new_version(name, parents={"model_version": "m1"}) as v:
            v.add_bytes("index.hnsw", name.encode())
        kind.publish(name, reason="build")


def test_recent_versions_are_newest_first_with_latest_and_nothing_where_there_is_nothing(tmp_path):
    root = f"file://{tmp_path}/root"
    assert recent_versions(root, "stories") == ([], None)  # missing root
    (tmp_path / "root").mkdir()
    assert recent_versions(root, "stories") == ([], None)  # empty root
    populate(root)
    (tmp_path / "root" / "indexes" / "stories" / "20261017T000000Z-being-written").mkdir()  # no manifest: not offered
    assert recent_versions(root, "stories") == (list(reversed(VERSIONS)), VERSIONS[2])
    assert recent_versions(root, "stories", limit=1) == ([VERSIONS[2]], VERSIONS[2])
    assert recent_versions("gs://bucket/prefix", "stories") == ([], None)  # no network call at parse time
    assert recent_versions(root, "creators") == ([], None)


def test_the_form_defaults_to_previous_and_suggests_the_recent_versions(tmp_path):
    root = f"file://{tmp_path}/root"
    populate(root)
    populate(root, "users", names=("20261016T010000Z-ebr_user_embeddings-manual__x",))
    version = rollback_form(root)["version"]
    assert version.value == "previous"
    assert version.schema["examples"] == [
        "previous",
        *reversed(VERSIONS[-4:]),
        "20261016T010000Z-ebr_user_embeddings-manual__x",
    ]
    assert version.schema["values_display"][VERSIONS[2]] == f"{VERSIONS[2]} (LATEST of stories)"
    assert "previous" in version.description and "unique prefix" in version.description
    assert f"stories: {VERSIONS[2]} (LATEST), {VERSIONS[1]}" in version.description
    started = time.perf_counter()
    for _ in range(20):
        rollback_form(root)
    assert (time.perf_counter() - started) / 20 < 0.05  # cheap enough to run at every parse

    empty = rollback_form(f"file://{tmp_path}/nowhere")["version"]
    assert empty.value == "previous" and empty.schema["examples"] == ["previous"]
    assert "Newest when" not in empty.description


@pytest.mark.parametrize("where", ["populated", "missing", "remote"])
def test_the_rollback_dag_parses_on_any_root_and_its_form_accepts_previous_and_prefixes(tmp_path, monkeypatch, where):
    root = {
        "populated": f"file://{tmp_path}/root",
        "missing": f"file://{tmp_path}/missing",
        "remote": "gs://no-such-bucket/x",
    }[where]
    if where == "populated":
        populate(root)
    monkeypatch.setenv("EBR_ROOT", root)
    try:
        dag = load_dags()["ebr_rollback"]
    finally:
        monkeypatch.undo()
        load_dags()
    examples = dag.params.get_param("version").schema["examples"]
    assert examples == (["previous", *reversed(VERSIONS)] if where == "populated" else ["previous"])
    for version in ("previous", "20261015T0030", VERSIONS[0]):
        params = copy.deepcopy(dag.params)
        params.update({"collection": "stories", "version": version, "reason": "bad ranking"})
        assert params.validate()["version"] == version


def test_the_check_task_resolves_previous_and_prefixes_and_refuses_in_one_short_sentence(tmp_path):
    root = f"file://{tmp_path}/root"
    populate(root)
    cfg = load_config(overrides=[f"root={root}"], environ={})
    request = check_rollback_request(cfg, "stories", "previous", "bad ranking")
    assert (request["version"], request["current"]) == (VERSIONS[1], VERSIONS[2])
    assert check_rollback_request(cfg, "stories", "20261015T0000", "x y z")["version"] == VERSIONS[0]

    for version, message in (
        ("2026101", "matches 3 versions"),
        ("20261001T000000Z-no-such-run", "newest complete: " + VERSIONS[2]),
    ):
        with pytest.raises(RollbackRequestError) as err:
            check_rollback_request(cfg, "stories", version, "typo")
        text = str(err.value)
        assert text.startswith(f"cannot roll indexes/stories back to {version!r}: ") and message in text
        assert len(text) < 400, text
        assert text.index(VERSIONS[2]) < text.index(VERSIONS[1])  # newest first
    with pytest.raises(RollbackRequestError, match="no LATEST yet"):
        check_rollback_request(cfg, "creators", "previous", "nothing there")


def test_the_first_publish_of_an_index_dag_run_is_not_labelled_a_rerun(tmp_path):
    from artifacts.embedding_snapshots import publish_snapshot
    from benchmarks.synthetic_vectors import clustered_vectors, story_ids
    from orchestration.indexes import build_index, publish_index, validate_index
    from orchestration.runs import RunIdentity

    root = f"file://{tmp_path}/root"
    store = ArtifactStore.open(root)
    publish_snapshot(
        store.kind("embeddings/stories"),
        "snap1",
        story_ids(0, 500),
        clustered_vectors(500, 16, clusters=5),
        model_version="m1",
        as_of=0,
        reason="test",
    )
    cfg = load_config(overrides=[f"root={root}", "index.ef_construction=64"], environ={})
    run = RunIdentity("ebr_story_index", "scheduled__2026-10-15T00:00:00+00:00", datetime(2026, 10, 15, tzinfo=UTC))
    validated = validate_index(cfg, build_index(cfg, run, "stories", "snap1"))
    published = publish_index(cfg, run, validated)
    assert published["published"] is True and published["latest"] == run.version
    move = store.kind("indexes/stories").history()[-1]
    assert move.reason == "index of embeddings/stories/snap1 (full)" and move.run_id == run.run_id

    rerun = publish_index(cfg, run, validate_index(cfg, build_index(cfg, run, "stories", "snap1")))
    assert rerun["published"] is False and "already names" in rerun["detail"]
    assert len(store.kind("indexes/stories").history()) == 1
