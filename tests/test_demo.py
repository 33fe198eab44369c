"""`make demo` (orchestration/demo.py): where the DAGs run, what the console shows as they
run, and the next steps it ends with.

The progress tests feed `DagProgress` lines copied from a real `airflow dags test` log of
the demo (ebr_train and ebr_story_index on the small world); the slow test runs the
whole demo on the tiny world with two shard servers behind `ebr route` (`--shards 2`) and
reads its console. (Step 3's single `ebr serve` and sharded tier on their own:
test_demo_tier.py.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from orchestration.demo import DAG_ORDER, DagProgress, demo_airflow_home, demo_runs, next_steps, shorten

TRAIN_LOG = """\
2026-12-01T10:39:58.044964Z [info     ] Creating ORM DAG for ebr_train [airflow.dag_processing.collection] loc=collection.py:102
2026-12-01T10:40:15.786777Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a2 loc=task_instances.py:485 new_state=success rows_affected=1 ti_id=01a2
2026-12-01T10:40:15.875109Z [info     ] [DAG TEST] starting task_id=train_and_evaluate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-01T10:40:24.905313Z [info     ] split time: 340753 train events (115106 examples), 59247 test events [models.training] loc=training.py:331
E0000 00:00:1796121624.930479   30721 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
Epoch 1/4
2026-12-01T10:41:45.295894Z [info     ] epoch 1: validation top-100 accuracy 0.3332 [models.training] loc=training.py:718
112/112 - 75s - loss: 4.4286 - regularization_loss: 0.0000e+00 - total_loss: 4.4286 - 75s/epoch - 671ms/step
2026-12-01T10:46:05.078973Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a2 loc=task_instances.py:485 new_state=success rows_affected=1 ti_id=01a2
2026-12-01T10:46:05.091919Z [info     ] [DAG TEST] end task task_id=train_and_evaluate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-01T10:46:05.098270Z [info     ] [DAG TEST] starting task_id=gate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-01T10:46:05.200942Z [info     ] gate: promote: recall@10 0.1812, recall@100 0.5134, recall@500 0.7874, ndcg@10 0.1601 pass on 979 users and 4861 positives [orchestration.training] loc=training.py:82
2026-12-01T10:46:05.205941Z [info     ] Pushing xcom                   [task] loc=task_runner.py:2280 ti=RuntimeTaskInstance(id=UUID('01a2'))
2026-12-01T10:46:05.247315Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a2 loc=task_instances.py:485 new_state=success rows_affected=1 ti_id=01a2
2026-12-01T10:46:05.266833Z [info     ] [DAG TEST] end task task_id=gate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-01T10:46:05.300000Z [info     ] models/two_tower: LATEST None -> 20261022T000000Z-ebr_train-manual__2026-12-01T10-39-59.076125+00-00 (publish) [artifacts.store] loc=store.py:499
"""

SNAPSHOT = "20261021T220000Z-ebr_story_index-manual__2026-12-01T10-47-08.959219+00-00"
BEAM = "airflow.task.hooks.orchestration.beam_task_logs.LeveledBeamHook"
STORY_LOG = f"""\
2026-12-01T10:47:19.263745Z [info     ] [DAG TEST] starting task_id=embed_stories map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-01T10:47:26.299455Z [info     ] apache_beam.runners.direct.direct_runner: Falling back to DirectRunner [{BEAM}] loc=beam.py:148
2026-12-01T10:47:39.039016Z [warning  ] beam_jobs.driver: embeddings/stories: skipped: older [{BEAM}] loc=beam.py:148
2026-12-01T10:47:41.696746Z [info     ] embeddings/stories/{SNAPSHOT}: 4938 embeddings; LATEST moved from None to {SNAPSHOT} [{BEAM}] loc=beam.py:148
2026-12-01T10:47:41.725095Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a2 loc=task_instances.py:485 new_state=success rows_affected=1 ti_id=01a2
2026-12-01T10:47:41.742435Z [info     ] [DAG TEST] end task task_id=embed_stories map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-01T10:47:42.021051Z [info     ] [DAG TEST] starting task_id=index_stories.build map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-01T10:47:43.188978Z [info     ] indexes/stories/{SNAPSHOT}: full build, recall@10 0.9994: full build of 4938 items (no previous index); recall@10 0.9994 at ef=64 [orchestration.indexes] loc=indexes.py:41
2026-12-01T10:47:43.332603Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=01a2 loc=task_instances.py:485 new_state=failed rows_affected=1 ti_id=01a2
2026-12-01T10:47:43.340000Z [error    ] Task failed with exception     [task] loc=task_runner.py:1000
2026-12-01T10:47:43.358227Z [info     ] [DAG TEST] end task task_id=index_stories.build map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
"""


def feed(progress: DagProgress, text: str) -> list[str]:
    return [shown for line in text.splitlines(keepends=True) for shown in progress.feed(line)]


def test_the_demo_runs_each_dag_at_a_logical_date_inside_the_world():
    start = datetime(2026, 10, 1, tzinfo=UTC)
    runs = demo_runs(start, 21)
    assert (
        [dag for dag, _ in runs]
        == list(DAG_ORDER)
        == ["ebr_train", "ebr_user_embeddings", "ebr_story_index", "ebr_story_index"]
    )
    dates = [when for _, when in runs]
    assert dates[0] == datetime(2026, 10, 22, tzinfo=UTC)  # the daily run after the last event day
    assert all(start < when < dates[0] for when in dates[1:])  # inside the data: fresh stories exist
    assert (dates[3] - dates[2]).total_seconds() == 30 * 60  # the story index twice: an earlier one to roll back to


def test_the_console_shows_tasks_epochs_and_the_gate_decision():
    shown = feed(DagProgress(), TRAIN_LOG)
    assert shown == [
        "    [   18 s]   train_and_evaluate started",
        "    [   27 s]     split time: 340753 train events (115106 examples), 59247 test events",
        "    [  107 s]     epoch 1: validation top-100 accuracy 0.3332",
        "    [  107 s]     loss 4.4286 (75 s)",
        "    [  367 s]   train_and_evaluate success (349 s)",
        "    [  367 s]   gate started",
        "    [  367 s]     gate: promote: recall@10 0.1812, recall@100 0.5134, recall@500 0.7874, ndcg@10 0.1601 pass on 979 users and 4861 positives",
        "    [  367 s]   gate success (0 s)",
    ]  # Airflow's own chatter, CUDA lines and the store's INFO lines stay in the log file


def test_the_console_shows_beam_counts_recall_warnings_and_failures():
    asked = []

    def describe(kind, snapshot):
        asked.append((kind, snapshot))
        return f"{kind}: 4,938 embeddings from rows read events 160,099, stories 20,000; dead letters: none"

    progress = DagProgress(describe)
    shown = feed(progress, STORY_LOG)
    assert asked == [("embeddings/stories", SNAPSHOT)]
    assert shown == [
        "    [    0 s]   embed_stories started",
        "    [   20 s]     WARNING Beam: beam_jobs.driver: embeddings/stories: skipped: older",
        "    [   22 s]     Beam: embeddings/stories/20261021T220000Z-ebr_story_index…: 4938 embeddings; LATEST moved from None to 20261021T220000Z-ebr_story_index…",
        "    [   22 s]   embed_stories success (22 s)",
        "    [   22 s]     embeddings/stories: 4,938 embeddings from rows read events 160,099, stories 20,000; dead letters: none",
        "    [   23 s]   index_stories.build started",
        "    [   24 s]     indexes/stories/20261021T220000Z-ebr_story_index…: full build, recall@10 0.9994: full build of 4938 items (no previous index); recall@10 0.99…",
        "    [   24 s]     ERROR task: Task failed with exception",
        "    [   24 s]   index_stories.build failed (1 s)",
    ]  # times are the log's own, from its first line; the Beam runner's INFO lines stay in the log
    assert progress.failed_tasks == ["index_stories.build"]


def test_long_version_names_are_shortened_on_the_console_only():
    assert shorten(f"LATEST {SNAPSHOT}") == "LATEST 20261021T220000Z-ebr_story_index…"
    assert len(shorten("x" * 500)) == 160


def test_the_next_steps_are_commands_on_this_root():
    root = "file:///tmp/somewhere/demo"
    text = next_steps(root, "u00042", "s000123", port=8090)
    assert f".venv/bin/ebr --root {root} serve" in text
    assert ".venv/bin/ebr query user u00042 -k 10" in text
    assert ".venv/bin/ebr query similar stories s000123" in text
    assert f"make airflow DEMO_ROOT={root}" in text and str(demo_airflow_home(root)) == "/tmp/somewhere/demo-airflow"
    assert f".venv/bin/ebr --root {root} index rollback --collection stories --to previous --reason" in text
    assert 'ebr_rollback, Trigger, version "previous"' in text
    assert "127.0.0.1:8090" in text


def run_tiny_demo(root: str, *more: str) -> str:
    """The whole demo, `DEMO_SIZE=tiny` with the tests' short training; its console."""
    from tests.airflow_support import TINY_PIPELINE

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "EBR_"))}
    # The demo's own training settings, made tiny the way the DAG tests make them (the
    # demo's environment lets EBR_* through to the Airflow processes).
    env.update({k: v for k, v in TINY_PIPELINE.items() if k != "EBR_WORLD__SIZE"}, TF_USE_LEGACY_KERAS="1")
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.demo", "--root", root, "--size", "tiny", "--users", "1", *more],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
def test_make_demo_on_the_tiny_world_streams_progress_answers_through_the_router_and_stops_the_tier(tmp_path):
    """The whole demo on a root of its own, as `make demo DEMO_SHARDS=2`: the DAGs run
    through Airflow and publish 2-shard sets, the console streams their progress, the
    answers come through `ebr route` over two shard servers, nothing is left running, and
    it ends with the next steps. One run for both shapes of step 3 (a demo run takes
    minutes here): the DAGs are the same with `index.shards = 1`, which tests/test_dags_run.py
    runs, and the default single `ebr serve` is started and queried by test_demo_tier.py."""
    import httpx

    from artifacts import ArtifactStore

    root = f"file://{tmp_path}/demo"
    out = run_tiny_demo(root, "--shards", "2")
    for expected in (
        "train_and_evaluate started",
        "epoch 1: validation",
        "gate: promote",
        "embed_users success",
        "dead letters:",
        "recall@10",
        "index_stories.publish success",
        "Next steps",
        "index rollback --collection stories --to previous",
    ):
        assert expected in out, f"{expected!r} not in:\n{out}"
    assert out.count("ebr_story_index: success") == 2, out
    assert (tmp_path / "demo-airflow" / "airflow.db").exists()  # the home `make airflow DEMO_ROOT=...` opens
    assert "1. a fresh synthetic world (tiny) at " in out and "every index in 2 shards" in out
    store = ArtifactStore.open(root)
    for collection in ("stories", "creators", "users"):
        kind = store.kind(f"indexes/{collection}")
        assert kind.manifest(kind.latest()).params["shards"] == 2, collection
    urls = dict(re.findall(r"^  (shard-0-of-2|shard-1-of-2|route) +(http://127\.0\.0\.1:\d+)", out, re.M))
    assert sorted(urls) == ["route", "shard-0-of-2", "shard-1-of-2"], out
    served = re.search(r"served from index (\S+), user embeddings \S+; coverage 1 \(2 of 2 shards: (.*)\)", out)
    assert served, out
    assert served[2] == f"shard 0 by {urls['shard-0-of-2']}, shard 1 by {urls['shard-1-of-2']}"
    assert store.kind("indexes/stories").latest() == served[1]  # the newest set, pinned by the router
    assert "stopped 2 shard servers" in out
    for url in urls.values():  # the demo stopped every process it started
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
    assert f"--root {root} serve --shard 1/2 --port 8102 &" in out
    assert "query --url http://127.0.0.1:8091 user " in out


def test_make_airflow_opens_the_demos_home_with_its_saved_settings(tmp_path):
    """What `make airflow` (`local_airflow --demo-root`) gives the DAGs: the demo's root and
    the settings it saved in its Airflow home (here a tiny world's), not the shell's."""
    import json

    from orchestration.demo import SETTINGS_FILE, demo_settings
    from orchestration.local_airflow import demo_airflow

    root = f"file://{tmp_path}/demo"
    home = demo_airflow_home(root)
    home.mkdir()
    (home / SETTINGS_FILE).write_text(json.dumps(demo_settings(root, home, "tiny")))
    airflow = demo_airflow(root, 18080)
    assert airflow.home == home and airflow.base_url == "http://127.0.0.1:18080"
    assert airflow.env["EBR_ROOT"] == root and airflow.env["AIRFLOW_HOME"] == str(home)
    assert airflow.env["EBR_WORLD__SIZE"] == "tiny" and airflow.env["EBR_GATE__METRICS"] == '["recall@100"]'
    assert airflow.env["EBR_TRAIN__EPOCHS"] == "4"  # the demo's shorter training
    assert airflow.env["AIRFLOW__EBR__ROOT"] == root  # the DAGs' [ebr] root: their parse reads no EBR_*


def test_the_demos_airflow_gets_its_root_as_the_dags_airflow_setting(tmp_path):
    from orchestration.demo import demo_environment

    root = f"file://{tmp_path}/demo"
    env = demo_environment(root, demo_airflow_home(root), "tiny")
    assert env["AIRFLOW__EBR__ROOT"] == env["EBR_ROOT"] == root  # what the DAGs' assets name, what the tasks use


def test_a_sharded_demo_publishes_shard_sets_and_saves_that_for_make_airflow(tmp_path):
    from orchestration.demo import demo_environment, demo_settings

    root = f"file://{tmp_path}/demo"
    home = demo_airflow_home(root)
    assert demo_environment(root, home, "tiny", shards=2)["EBR_INDEX__SHARDS"] == "2"  # what the DAGs build
    assert demo_settings(root, home, "tiny", shards=2)["EBR_INDEX__SHARDS"] == "2"  # what `make airflow` reads
    assert demo_settings(root, home, "tiny")["EBR_INDEX__SHARDS"] == "1"  # the default: one `ebr serve`, as shipped


def test_the_demo_refuses_a_shard_count_below_one(capsys):
    from orchestration.demo import main

    with pytest.raises(SystemExit) as exit_:
        main(["--shards", "0"])
    assert exit_.value.code == 2 and "--shards: must be 1 or more, not 0" in capsys.readouterr().err
