"""The DAG files: import and parse time, task graphs, schedules, assets, Params, the
`[ebr]` Airflow settings they are declared with, and the launchers that give Airflow its
settings. (The functions behind the tasks: test_dags_tasks.py; end-to-end runs:
test_dags_run.py; real Airflow processes: test_dags_airflow.py.)
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import date

import pytest

from artifacts import InvalidNameError
from artifacts.names import validate_version
from tests.airflow_support import DAG_IDS, DAGS_FOLDER, REPO, load_dags, process_airflow_home

HEAVY_MODULES = (
    "tensorflow",
    "apache_beam",
    "numpy",
    "pyarrow",
    "pandas",
    "hnswlib",
    "models",
    "warehouse",
    "index_builder.publish",
)

# Runs in a fresh interpreter: for each DAG file, import what the file imports first (the
# DAG processor does the same: [dag_processor] parsing_pre_import_modules), then time the
# file itself; report which heavy modules parsing pulled in.
PARSE_TIMER = r"""
import ast, importlib, json, runpy, sys, time
t0 = time.perf_counter()
import airflow.sdk
base = time.perf_counter() - t0
report = {"airflow_sdk_import_s": base, "files": {}}
for path in sys.argv[1:]:
    tree = ast.parse(open(path).read())
    modules = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and n.module != "__future__"]
    t = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    imports = time.perf_counter() - t
    t = time.perf_counter()
    runpy.run_path(path)
    report["files"][path] = {"imports_s": imports, "parse_s": time.perf_counter() - t}
report["heavy"] = [m for m in json.loads(sys.argv[0] if False else '%s') if m in sys.modules]
print(json.dumps(report))
"""


@pytest.fixture(scope="module", autouse=True)
def airflow_home():
    """Every test here may import Airflow: give this process its own home first."""
    return process_airflow_home()


@pytest.fixture(scope="module")
def dags(airflow_home):
    return load_dags()


def test_every_dag_file_imports_cleanly_and_declares_one_dag(dags):
    assert sorted(dags) == sorted(DAG_IDS)
    files = sorted(p.name for p in DAGS_FOLDER.glob("*.py"))
    assert files == sorted(f"{d}.py" for d in DAG_IDS)
    for dag in dags.values():
        assert dag.fileloc.endswith(f"{dag.dag_id}.py")
        assert "ebr" in dag.tags and not dag.catchup and dag.doc_md


# Parsing a DAG file must not do real work (I/O against the root, training, a Beam
# graph): that is what the heavy-module check asserts. The time bound only catches the
# pathological case (a network call waiting for its timeout, a scan of a big root); it is
# far above the few milliseconds a file takes, because a timed assertion on a shared
# machine is noise: the first file, which also loads the settings once, was measured at
# 0.56 s under load in the suite. Airflow's own limit is dagbag_import_timeout (30 s).
PARSE_BUDGET_S = 5.0


def test_dag_files_parse_without_heavy_imports_or_real_work(dags):
    files = [str(DAGS_FOLDER / f"{d}.py") for d in DAG_IDS]
    code = PARSE_TIMER % json.dumps(list(HEAVY_MODULES))
    done = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    assert report["heavy"] == [], f"parsing the DAGs imported {report['heavy']}: move those imports into the tasks"
    for path, times in report["files"].items():
        assert times["parse_s"] < PARSE_BUDGET_S, f"{path} took {times['parse_s']:.2f} s to parse (its imports aside)"


def upstream(dag, task_id: str) -> set[str]:
    return set(dag.task_dict[task_id].upstream_task_ids)


def test_ebr_train_graph_schedule_and_model_asset(dags):
    from airflow.sdk import CronTriggerTimetable

    dag = dags["ebr_train"]
    assert isinstance(dag.timetable, CronTriggerTimetable) and dag.timetable.expression == "0 0 * * *"  # "@daily"
    assert upstream(dag, "check_warehouse") == set()
    assert upstream(dag, "train_and_evaluate") == {"check_warehouse"}
    assert upstream(dag, "gate") == {"train_and_evaluate"}
    assert upstream(dag, "publish_model") == {"train_and_evaluate", "gate"}
    assert type(dag.task_dict["gate"]).__name__ == "_ShortCircuitDecoratedOperator"
    (asset,) = dag.task_dict["publish_model"].outlets
    assert asset.name == "ebr/models/two_tower" and asset.uri.endswith("/models/two_tower")
    assert all(not dag.task_dict[t].outlets for t in dag.task_dict if t != "publish_model")


def test_embedding_dags_run_on_a_cron_and_on_every_new_model(dags):
    from airflow.sdk import AssetOrTimeSchedule

    for dag_id, cron in (("ebr_user_embeddings", "0 */4 * * *"), ("ebr_story_index", "*/30 * * * *")):
        timetable = dags[dag_id].timetable
        assert isinstance(timetable, AssetOrTimeSchedule)
        assert timetable.timetable.expression == cron
        assert timetable.asset_condition.name == "ebr/models/two_tower"
        assert timetable.asset_condition == dags["ebr_train"].task_dict["publish_model"].outlets[0]


def test_beam_jobs_start_through_the_beam_operator_with_the_planned_runner(dags):
    from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator

    from orchestration.embeddings import job_file

    jobs = (
        ("ebr_user_embeddings", "embed_users", "users", "user_embeddings.py"),
        ("ebr_story_index", "embed_stories", "stories", "story_embeddings.py"),
    )
    for dag_id, task_id, entity, script in jobs:
        embed = dags[dag_id].task_dict[task_id]
        assert isinstance(embed, BeamRunPythonPipelineOperator)
        assert embed.py_file == job_file(entity) == str(REPO / "beam_jobs" / script)
        assert embed.py_interpreter == sys.executable
        assert upstream(dags[dag_id], task_id) == {"plan"}  # runner and options are the plan's XComs
        assert "runner" in str(embed.runner) and "pipeline_options" in str(embed.pipeline_options)


def test_ebr_user_embeddings_graph(dags):
    dag = dags["ebr_user_embeddings"]
    assert upstream(dag, "check_snapshot") == {"plan", "embed_users"}
    assert upstream(dag, "build_index") == {"plan", "check_snapshot"}
    assert upstream(dag, "validate_index") == {"build_index"}
    assert upstream(dag, "publish_index") == {"validate_index"}
    assert [a.name for a in dag.task_dict["check_snapshot"].outlets] == ["ebr/embeddings/users"]
    assert [a.name for a in dag.task_dict["publish_index"].outlets] == ["ebr/indexes/users"]


def test_ebr_story_index_graph_indexes_stories_and_creators(dags):
    dag = dags["ebr_story_index"]
    assert upstream(dag, "check_snapshots") == {"plan", "embed_stories"}
    for collection in ("stories", "creators"):
        group = f"index_{collection}"
        assert upstream(dag, f"{group}.build") == {"plan", "check_snapshots"}
        assert upstream(dag, f"{group}.validate") == {f"{group}.build"}
        assert upstream(dag, f"{group}.publish") == {f"{group}.validate"}
        assert [a.name for a in dag.task_dict[f"{group}.publish"].outlets] == [f"ebr/indexes/{collection}"]


def test_ebr_rollback_is_manual_with_a_validated_form(dags):
    from airflow.sdk.exceptions import ParamValidationError

    from orchestration.indexes import COLLECTIONS

    dag = dags["ebr_rollback"]
    assert dag.timetable.can_be_scheduled is False  # schedule=None: manual only
    assert upstream(dag, "roll_back") == {"check_request"}
    assert dag.params.get_param("collection").schema["enum"] == list(COLLECTIONS)

    def form(values):  # what the trigger form and the REST API do with a run's conf
        params = copy.deepcopy(dag.params)
        params.update(values)
        return params.validate()

    good = {
        "collection": "users",
        "version": "20261014T220000Z-ebr_story_index-manual__x",
        "reason": "bad",
        "force": False,
    }
    assert form(good) == good
    assert form({k: v for k, v in good.items() if k != "version"})["version"] == "previous"  # the default
    for bad, field in (
        ({"collection": "movies"}, "collection"),
        ({"version": "../x"}, "version"),
        ({"version": "a" * 129}, "version"),
        ({"reason": ""}, "reason"),
        ({"force": "yes"}, "force"),
    ):
        with pytest.raises(ParamValidationError, match=field):
            form({**good, **bad})


@pytest.mark.parametrize(
    "name",
    [
        "20261014T220000Z-ebr_story_index-manual__2026-11-24T06-05-26.084870+00-00",
        "v1",
        "a.b_c+d-e",
        "../x",
        "a..b",
        ".hidden",
        "a/b",
        "",
        "x" * 129,
        "with space",
        "ü",
    ],
)
def test_the_form_pattern_for_versions_accepts_exactly_what_the_store_accepts(name):
    import re

    from orchestration.dag_support import VERSION_PATTERN

    try:
        validate_version(name)
        valid = True
    except InvalidNameError:
        valid = False
    assert bool(re.search(VERSION_PATTERN, name)) == valid or name in {"MANIFEST.json", "LATEST", "HISTORY.jsonl"}


def test_ebr_retention_maps_over_every_kind(dags):
    from orchestration.retention import RETAINED_KINDS

    dag = dags["ebr_retention"]
    assert dag.timetable.expression == "0 0 * * *"  # "@daily"
    retain = dag.task_dict["retain"]
    assert type(retain).__name__ == "DecoratedMappedOperator"
    assert retain.op_kwargs_expand_input.value["kind"] == list(RETAINED_KINDS)
    assert set(RETAINED_KINDS) == {
        "models/two_tower",
        "embeddings/users",
        "embeddings/stories",
        "embeddings/creators",
        "indexes/stories",
        "indexes/creators",
        "indexes/users",
    }


def test_schedules_the_dag_shape_and_the_asset_root_are_airflow_settings(dags, tmp_path):
    # [ebr] story_index_schedule, build_user_index and root, as AIRFLOW__EBR__* (Airflow's
    # configuration: airflow.cfg or its variables), the only settings a parse reads.
    reparsed = load_dags(
        {"story_index_schedule": "*/10 * * * *", "build_user_index": "false", "root": f"file://{tmp_path}"}
    )
    assert reparsed["ebr_story_index"].timetable.timetable.expression == "*/10 * * * *"
    assert reparsed["ebr_story_index"].timetable.asset_condition.uri == f"file://{tmp_path}/models/two_tower"
    user_tasks = sorted(reparsed["ebr_user_embeddings"].task_dict)
    assert user_tasks == ["check_snapshot", "embed_users", "load_user_store", "plan"]


def serialized(dags) -> dict[str, dict]:
    """Each DAG as the DAG processor hands it to the scheduler (JSON), file paths aside."""
    from airflow.serialization.serialized_objects import DagSerialization

    return {dag_id: json.loads(json.dumps(DagSerialization.to_dict(dag), default=str)) for dag_id, dag in dags.items()}


def test_parsing_reads_no_pipeline_environment_or_configuration_file(dags, monkeypatch, tmp_path):
    """The README's promise: the DAG files read no environment and no configuration file
    when parsed, so every Airflow process parses the same DAGs whatever its `EBR_*`
    variables say. load_dags makes `load_config` raise during every parse here."""
    from airflow.sdk import CronTriggerTimetable

    from orchestration.dag_support import DagSettings

    for name in [n for n in os.environ if n.startswith(("EBR_", "AIRFLOW__EBR__"))]:
        monkeypatch.delenv(name)
    unset = serialized(load_dags({}))

    monkeypatch.setenv("EBR_ROOT", f"file://{tmp_path}/elsewhere")
    monkeypatch.setenv("EBR_CONFIG", str(tmp_path / "no-such-file.toml"))  # load_config() would fail on it
    monkeypatch.setenv("EBR_ORCHESTRATION__TRAIN_SCHEDULE", "*/5 * * * *")  # once a setting; now refused
    monkeypatch.setenv("EBR_STORE__KEEP_VERSIONS", "2")
    changed = load_dags({})
    assert serialized(changed) == unset
    timetable = changed["ebr_train"].timetable
    assert isinstance(timetable, CronTriggerTimetable) and timetable.expression == "0 0 * * *"
    assert changed["ebr_train"].task_dict["publish_model"].outlets[0].uri == f"{DagSettings().root}/models/two_tower"


def test_the_dags_default_root_is_the_pipelines_default_root():
    from config import load_config
    from orchestration.dag_support import DagSettings

    assert DagSettings().root == load_config(environ={}).root


def test_the_launchers_give_the_dag_processor_the_tasks_root(tmp_path, monkeypatch):
    from orchestration.local_airflow import LocalAirflow

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "SequentialExecutor")  # the caller's Airflow settings stay out
    airflow = LocalAirflow(tmp_path / "home", 18080, {"EBR_ROOT": f"file://{tmp_path}/root"})
    assert airflow.env["AIRFLOW__EBR__ROOT"] == airflow.env["EBR_ROOT"] == f"file://{tmp_path}/root"
    assert airflow.env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    monkeypatch.setenv("AIRFLOW__EBR__STORY_INDEX_SCHEDULE", "*/10 * * * *")  # the DAGs' own settings pass through
    monkeypatch.setenv("AIRFLOW__EBR__ROOT", "gs://b/ebr")
    airflow = LocalAirflow(tmp_path / "home", 18080, {"EBR_ROOT": "gs://b/ebr"})
    assert airflow.env["AIRFLOW__EBR__STORY_INDEX_SCHEDULE"] == "*/10 * * * *"
    assert airflow.env["AIRFLOW__EBR__ROOT"] == "gs://b/ebr"


def test_the_launchers_watch_their_components_until_a_signal_or_an_exit(tmp_path, capsys):
    """`make airflow` and `make airflow-celery` share LocalAirflow.run_until_signalled:
    0 after SIGTERM, 1 with the logs when a component exits by itself; stopped either way."""
    import signal
    import threading

    from orchestration.local_airflow import LocalAirflow

    class Sleepers(LocalAirflow):
        COMPONENTS = (("scheduler", "--skip-serve-logs"), ("celery", "worker", "--without-gossip"))

        def __init__(self, home, seconds):
            super().__init__(home, 18080, {"EBR_ROOT": f"file://{tmp_path}/root"})
            self.seconds, self.stopped = seconds, False

        def start(self):
            self.processes = [subprocess.Popen(["sleep", str(s)], start_new_session=True) for s in self.seconds]

        def wait_until_up(self, timeout=180):
            pass

        def stop(self):
            self.stopped = True
            super().stop()

    exits = Sleepers(tmp_path / "a", (60, 0))
    assert exits.run_until_signalled("up", "stopping") == 1 and exits.stopped
    out = capsys.readouterr()
    assert out.out.splitlines() == ["up", "stopping"]
    assert "airflow celery worker exited with 0:" in out.err and "--- scheduler" in out.err
    assert all(p.poll() is not None for p in exits.processes)

    signalled = Sleepers(tmp_path / "b", (60, 60))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        assert signalled.run_until_signalled("up", "stopping") == 0 and signalled.stopped
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert all(p.poll() is not None for p in signalled.processes)


def test_a_malformed_dag_setting_is_refused_with_its_name(monkeypatch):
    from orchestration.dag_support import dag_settings

    monkeypatch.setenv("AIRFLOW__EBR__BUILD_USER_INDEX", "maybe")
    with pytest.raises(ValueError, match=r"\[ebr\] build_user_index = 'maybe' is invalid"):
        dag_settings()
    monkeypatch.setenv("AIRFLOW__EBR__BUILD_USER_INDEX", "False")
    monkeypatch.setenv("AIRFLOW__EBR__START_DATE", "2026-13-01")
    with pytest.raises(ValueError, match=r"\[ebr\] start_date = '2026-13-01' is invalid"):
        dag_settings()
    monkeypatch.setenv("AIRFLOW__EBR__START_DATE", "2026-02-03")
    assert dag_settings().start_date == date(2026, 2, 3) and dag_settings().build_user_index is False
