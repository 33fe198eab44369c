"""The real Airflow: api-server, scheduler and dag-processor on 127.0.0.1 with their own
AIRFLOW_HOME (SQLite), this project's dags/ (started the way `make airflow` starts them,
`orchestration.local_airflow`), and ebr_rollback triggered through the REST API (v2, JWT
from the simple auth manager) with parameters.
"""

from __future__ import annotations

import time

import pytest

from config.loopback import free_port
from orchestration.local_airflow import LocalAirflow
from tests.airflow_support import NEWER, OLDER, finished_run, running, store_with_two_story_indexes, unpause
from tests.polling import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """indexes/stories with two complete versions, LATEST on the newer one."""
    return store_with_two_story_indexes(tmp_path_factory.mktemp("ebr"))


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, store):
    with running(LocalAirflow(tmp_path_factory.mktemp("airflow-home"), free_port(), {"EBR_ROOT": store.uri})) as up:
        yield up


@pytest.fixture(scope="module")
def token(airflow):
    token = airflow.token()
    unpause(airflow, token, "ebr_rollback")
    return token


def trigger(airflow, token, conf):
    return airflow.request("POST", "/api/v2/dags/ebr_rollback/dagRuns", {"logical_date": None, "conf": conf}, token)


def test_the_rest_api_needs_a_token(airflow):
    status, _ = airflow.request("GET", "/api/v2/dags/ebr_rollback")
    assert status == 401


def test_rollback_triggered_through_the_rest_api_moves_latest(airflow, token, store):
    kind = store.kind("indexes/stories")
    assert kind.latest() == NEWER
    status, run = trigger(airflow, token, {"collection": "stories", "version": OLDER, "reason": "REST API test"})
    assert status == 200, run
    assert run["conf"]["version"] == OLDER

    started = time.monotonic()
    body = finished_run(airflow, token, "ebr_rollback", run["dag_run_id"], 300)
    assert body["state"] == "success", airflow.logs()
    print(f"rollback run finished in {time.monotonic() - started:.1f} s")
    assert kind.latest() == OLDER
    move = kind.history()[-1]
    assert (move.action, move.from_version, move.to_version, move.run_id) == (
        "rollback",
        NEWER,
        OLDER,
        run["dag_run_id"],
    )
    assert "REST API test" in move.reason
    _, tasks = airflow.request(
        "GET", f"/api/v2/dags/ebr_rollback/dagRuns/{run['dag_run_id']}/taskInstances", token=token
    )
    assert {t["task_id"]: t["state"] for t in tasks["task_instances"]} == {
        "check_request": "success",
        "roll_back": "success",
    }


def test_a_bad_parameter_is_refused_before_a_run_exists(airflow, token, store):
    _, before = airflow.request("GET", "/api/v2/dags/ebr_rollback/dagRuns", token=token)
    for conf, field in (
        ({"collection": "movies", "version": OLDER, "reason": "x" * 5}, "collection"),
        ({"collection": "stories", "version": "../../LATEST", "reason": "x" * 5}, "version"),
    ):
        status, body = trigger(airflow, token, conf)
        assert status == 400, body
        assert field in str(body), body
    _, after = airflow.request("GET", "/api/v2/dags/ebr_rollback/dagRuns", token=token)
    assert after["total_entries"] == before["total_entries"]


def test_a_published_model_triggers_both_embedding_dags(airflow, token):
    """The asset schedule with the real scheduler: an event of the model asset (what
    ebr_train's publish_model emits) creates an asset-triggered run of each embedding DAG."""
    consumers = ("ebr_user_embeddings", "ebr_story_index")
    for dag_id in consumers:
        unpause(airflow, token, dag_id)
    _, assets = airflow.request("GET", "/api/v2/assets?name_pattern=models/two_tower", token=token)
    (model,) = [a for a in assets["assets"] if a["name"] == "ebr/models/two_tower"]
    assert sorted(d["dag_id"] for d in model["scheduled_dags"]) == sorted(consumers)
    status, event = airflow.request(
        "POST", "/api/v2/assets/events", {"asset_id": model["id"], "extra": {"version": "test"}}, token
    )
    assert status == 200, event

    def triggered(dag_id):
        """The asset-triggered runs of `dag_id`, once there are any. Unpausing also lets the
        scheduler create the latest cron run; in this store it fails and waits out its retry
        delay, holding the one slot max_active_runs=1 allows, so it is marked failed here."""
        _, runs = airflow.request("GET", f"/api/v2/dags/{dag_id}/dagRuns", token=token)
        for run in runs["dag_runs"]:
            if run["run_type"] != "asset_triggered" and run["state"] in ("queued", "running"):
                url = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
                status, body = airflow.request("PATCH", url, {"state": "failed"}, token)
                assert status == 200, body
        return [run for run in runs["dag_runs"] if run["run_type"] == "asset_triggered"]

    for dag_id in consumers:
        (run,) = wait_for(
            lambda d=dag_id: triggered(d), f"no asset-triggered run of {dag_id}", 120, interval=1, details=airflow.logs
        )
        assert run["run_type"] == "asset_triggered"
    for dag_id in consumers:  # no model is published in this store: let the runs stop here
        airflow.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True}, token)
