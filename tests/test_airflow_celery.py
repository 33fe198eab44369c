"""Airflow on CeleryExecutor with Postgres and Redis: one DAG run through a real Celery worker.

The fixture starts what `make airflow-celery` starts (`orchestration.celery_airflow`):
PostgreSQL and Redis from Debian on 127.0.0.1 ports of their own, then Airflow's
api-server, scheduler and dag-processor with CeleryExecutor and one Celery worker. It
installs the Debian packages when they are absent and skips, saying why, only when they
cannot be installed. ebr_rollback (two tasks, an XCom between them) is triggered through
the REST API; its tasks must run in the Celery worker and move LATEST in the store.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from config.loopback import free_port
from orchestration.celery_airflow import CeleryAirflow, ServiceUnavailableError, ensure_debian_packages
from tests.airflow_support import OLDER, finished_run, running, store_with_two_story_indexes, unpause

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """indexes/stories with two complete versions, LATEST on the newer one."""
    return store_with_two_story_indexes(tmp_path_factory.mktemp("ebr"))


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, store):
    try:
        ensure_debian_packages()
    except ServiceUnavailableError as err:
        pytest.skip(f"PostgreSQL and Redis are needed and could not be installed: {err}")
    # As root, Postgres runs as `postgres`, which cannot enter pytest's root-only tmp folders.
    postgres_parent = Path(tempfile.mkdtemp(prefix="ebr-celery-postgres-"))
    postgres_parent.chmod(0o755)
    processes = CeleryAirflow(
        tmp_path_factory.mktemp("airflow-celery-home"),
        free_port(),
        postgres_port=free_port(),
        redis_port=free_port(),
        postgres_dir=postgres_parent / "data",
        concurrency=1,
        extra_env={"EBR_ROOT": store.uri},
    )
    try:
        with running(processes):
            yield processes
    finally:
        shutil.rmtree(postgres_parent, ignore_errors=True)
    assert processes.redis.process.poll() is not None and not (processes.postgres.data_dir / "postmaster.pid").exists()


def test_a_dag_run_goes_through_the_celery_worker(airflow, store):
    token = airflow.token()
    unpause(airflow, token, "ebr_rollback")
    conf = {"collection": "stories", "version": OLDER, "reason": "Celery test"}
    status, run = airflow.request(
        "POST", "/api/v2/dags/ebr_rollback/dagRuns", {"logical_date": None, "conf": conf}, token
    )
    assert status == 200, run
    url = f"/api/v2/dags/ebr_rollback/dagRuns/{run['dag_run_id']}"
    done = finished_run(airflow, token, "ebr_rollback", run["dag_run_id"], 240, interval=2)
    _, tasks = airflow.request("GET", f"{url}/taskInstances", token=token)
    assert done["state"] == "success", (tasks, airflow.logs())
    instances = tasks["task_instances"]
    assert {t["task_id"] for t in instances} == {"check_request", "roll_back"}
    assert {(t["state"], t["queue"]) for t in instances} == {("success", "default")}  # Celery's default queue
    # The Celery worker ran each task (its log names each workload it executed) ...
    executed = [
        line
        for line in (airflow.home / "celery.log").read_text(errors="replace").splitlines()
        if "Executing workload in Celery" in line
    ]
    for task_id in ("check_request", "roll_back"):
        assert any(f"dag_id=ebr_rollback/run_id={run['dag_run_id']}/task_id={task_id}/" in line for line in executed), (
            executed
        )
    # ... and the second task found what the first handed it (XCom, in Postgres).
    assert store.kind("indexes/stories").latest() == OLDER
