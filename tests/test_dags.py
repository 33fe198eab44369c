"""The DAG files: import and parse time, task graphs, schedules, assets, Params; and the
small pure functions of `orchestration` they rely on. (End-to-end runs: test_dags_run.py;
real Airflow processes: test_dags_airflow.py.)
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime

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
    assert sorted(reparsed["ebr_user_embeddings"].task_dict) == ["check_snapshot", "embed_users", "plan"]


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


# -- the functions behind the tasks ------------------------------------------------------


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
    for kind_name, version, model in (
        ("embeddings/users", "u1", "m1"),
        ("indexes/stories", "i1", "m1"),
        ("indexes/stories", "i2", "m2"),
        ("indexes/stories", "i3", "m2"),
        ("indexes/stories", "i4", "m2"),
    ):
        kind = store.kind(kind_name)
        with kind.new_version(version, parents={"model_version": model}) as writer:
            writer.add_bytes("part", version.encode())
        kind.publish(version, reason="test")
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
