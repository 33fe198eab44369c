"""Running the project's DAGs in tests: an Airflow home, a tiny pipeline, real processes.

Airflow reads its configuration when it is first imported, so a test process gets ONE
Airflow home (`process_airflow_home`), created on first use and migrated by the real
`airflow db migrate` command; the tests import Airflow only after that. The pipeline
configuration travels the way it does in production, through `EBR_*` variables in the
environment of whatever runs the tasks (and of the Beam job processes they start); the
DAG files, when parsed, see only Airflow's `[ebr]` settings (`load_dags`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from orchestration.local_airflow import airflow_environment, dag_settings_environment, migrate

REPO = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO / "dags"
DAG_IDS = ("ebr_train", "ebr_user_embeddings", "ebr_story_index", "ebr_rollback", "ebr_retention")

# A tiny world and a small, short training run: the whole pipeline in about a minute.
TINY_PIPELINE = {
    "EBR_WORLD__SIZE": "tiny",
    "EBR_TRAIN__EPOCHS": "2",
    "EBR_TRAIN__BATCH_SIZE": "256",
    "EBR_TRAIN__HOLDOUT_DAYS": "2",
    "EBR_TRAIN__EVAL_KS": "[10,100]",
    "EBR_TRAIN__MAX_EVAL_USERS": "200",
    # ~30 optimisation steps an epoch here: the default 200-step warm-up would outlast the run.
    "EBR_TRAIN__WARMUP_STEPS": "10",
    # A 2-epoch model on a tiny world, to test the plumbing: the gate reads recall@100 only
    # and decides on a small test set (tests/test_training.py tests the default gate).
    "EBR_GATE__METRICS": '["recall@100"]',
    "EBR_GATE__MIN_EVAL_POSITIVES": "100",
    # The baselines keep their configured settings: choosing them on a validation split
    # (tests/test_training.py's subject) would cost each training run here ~40 s.
    "EBR_TRAIN__TUNE_BASELINES": "false",
    "EBR_MODEL__MLP_WIDTH": "32",
    "EBR_MODEL__ID_EMBEDDING_DIM": "16",
    "EBR_MODEL__CROSS_PROJECTION_DIM": "8",
    "EBR_MODEL__RESNET_BLOCKS": "1",
    "EBR_MODEL__CROSS_LAYERS": "1",
    "EBR_EMBED__BUCKETS": "4",
    "EBR_EMBED__SHARDS": "2",
    "EBR_INDEX__VALIDATION_QUERIES": "200",
}


_HOME: Path | None = None


def process_airflow_home() -> Path:
    """This process's Airflow home: set in os.environ and migrated, once per process."""
    global _HOME
    if _HOME is None:
        if "airflow" in sys.modules:
            raise RuntimeError("Airflow was imported before its home was set; import it inside tests only")
        home = Path(tempfile.mkdtemp(prefix="ebr-airflow-"))
        atexit.register(shutil.rmtree, home, True)
        os.environ.update(airflow_environment(home))
        migrate(home, dict(os.environ))
        _HOME = home
    return _HOME


def load_dags(dag_settings: dict[str, str] | None = None) -> dict[str, Any]:
    """Every DAG of dags/, parsed the way the DAG processor does; fails on import errors.

    The parse sees the `[ebr]` Airflow settings `dag_settings` names ({"root": ...},
    as `AIRFLOW__EBR__<KEY>`), or, by default, those a launcher gives the DAG processor
    (`local_airflow.dag_settings_environment`: the root of the current `EBR_*`
    environment), and it must not build the pipeline's configuration: `load_config`
    raises while the files are parsed.
    """
    from unittest import mock

    from airflow.dag_processing.dagbag import DagBag

    import config
    import config.settings

    if dag_settings is None:
        variables = dag_settings_environment(os.environ)
    else:
        variables = {f"AIRFLOW__EBR__{key.upper()}": value for key, value in dag_settings.items()}

    def refuse(*args, **kwargs):
        raise AssertionError("a DAG file built the pipeline configuration (load_config) while it was parsed")

    with (
        mock.patch.dict(os.environ, variables),
        mock.patch.object(config, "load_config", refuse),
        mock.patch.object(config.settings, "load_config", refuse),
    ):
        bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise AssertionError(f"DAG import errors: {bag.import_errors}")
    return bag.dags


# Two complete story-index versions for the rollback DAG's tests, LATEST on the newer one
# (so `previous` is the older).
OLDER, NEWER = "20261014T220000Z-ebr_story_index-scheduled__a", "20261014T223000Z-ebr_story_index-scheduled__b"


def store_with_two_story_indexes(root: Path):
    """An ArtifactStore at `root` whose indexes/stories holds OLDER and NEWER, LATEST on NEWER."""
    from artifacts import ArtifactStore

    store = ArtifactStore.open(f"file://{root}")
    kind = store.kind("indexes/stories")
    for version in (OLDER, NEWER):
        with kind.new_version(version, parents={"model_version": "m1", "embedding_snapshot": version}) as writer:
            writer.add_bytes("index.hnsw", version.encode())
        kind.publish(version, reason="test setup")
    return store


# -- real Airflow processes (orchestration.local_airflow / celery_airflow) ----------------


@contextlib.contextmanager
def running(processes):
    """`processes` (a LocalAirflow or CeleryAirflow) started and answering for the block,
    stopped afterwards, every component checked gone."""
    try:
        processes.start()
        processes.wait_until_up()
        yield processes
    finally:
        processes.stop()
    assert all(p.poll() is not None for p in processes.processes)


def unpause(airflow, token: str, dag_id: str, timeout: float = 180) -> None:
    """Waits until the dag-processor has registered `dag_id`, then unpauses it."""
    from tests.polling import wait_for

    wait_for(
        lambda: airflow.request("GET", f"/api/v2/dags/{dag_id}", token=token)[0] == 200,
        f"the dag-processor did not register {dag_id}",
        timeout,
        interval=1,
        details=airflow.logs,
    )
    status, body = airflow.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token)
    assert status == 200 and body["is_paused"] is False, body


def finished_run(airflow, token: str, dag_id: str, run_id: str, timeout: float, interval: float = 1) -> dict:
    """The run's REST body once its state is success or failed."""
    from tests.polling import wait_for

    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"

    def finished():
        _, body = airflow.request("GET", url, token=token)
        return body if body["state"] in ("success", "failed") else None

    return wait_for(finished, f"the {dag_id} run did not finish", timeout, interval=interval, details=airflow.logs)
