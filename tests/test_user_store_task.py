"""ebr_user_embeddings' load_user_store task (`orchestration.user_store`): the run's user
snapshot into the router's Redis profile store under its version, against a real
redis-server on loopback; skipped, with the reason, when the router keeps users in memory.

The task's own callable runs as Airflow runs it (its configuration from `EBR_*`), on a
real store whose snapshot `publish_snapshot` wrote; the DAG's shape is the parsed DAG's.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from artifacts import USER_EMBEDDINGS, ArtifactStore
from artifacts.embedding_snapshots import publish_snapshot
from tests.airflow_support import load_dags, process_airflow_home
from tests.gcs_support import free_port
from tests.router_support import redis_url  # noqa: F401 - fixture: a real redis-server

FIRST, SECOND = "20261014T200000Z-ebr_user_embeddings-scheduled__a", "20261015T000000Z-ebr_user_embeddings-scheduled__b"
DIM, N_USERS = 8, 30


@pytest.fixture(scope="module")
def dag():
    process_airflow_home()
    return load_dags()["ebr_user_embeddings"]


@pytest.fixture
def store(tmp_path, monkeypatch) -> ArtifactStore:
    """A root with two user snapshots (of models m1 and m2), and the tasks' EBR_* on it."""
    for name in [n for n in os.environ if n.startswith("EBR_")]:
        monkeypatch.delenv(name)
    store = ArtifactStore.open(f"file://{tmp_path}/root")
    rng = np.random.default_rng(0)
    for version, model in ((FIRST, "m1"), (SECOND, "m2")):
        vectors = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
        ids = np.asarray([f"u{i}" for i in range(N_USERS)], dtype=object)
        publish_snapshot(store.kind(USER_EMBEDDINGS), version, ids, vectors, model_version=model, as_of=0, reason="t")
    monkeypatch.setenv("EBR_ROOT", store.uri)
    return store


def run_task(dag, snapshot: str):
    """The task's callable, as its Airflow worker calls it."""
    return dag.task_dict["load_user_store"].python_callable(snapshot)


def test_the_task_follows_the_snapshot_check_in_every_configuration(dag):
    assert set(dag.task_dict["load_user_store"].upstream_task_ids) == {"plan", "check_snapshot"}
    assert not dag.task_dict["load_user_store"].downstream_task_ids
    assert not dag.task_dict["load_user_store"].outlets  # the snapshot's asset event is check_snapshot's


def test_the_task_loads_the_runs_snapshot_into_redis_under_its_version(dag, store, redis_url, monkeypatch):  # noqa: F811
    import redis

    from artifacts.embedding_snapshots import read_snapshot

    monkeypatch.setenv("EBR_ROUTER__USER_STORE", "redis")
    monkeypatch.setenv("EBR_ROUTER__REDIS_URL", redis_url)
    loaded = run_task(dag, FIRST)
    assert loaded["loaded"] and loaded["count"] == N_USERS and not loaded["reused"]
    assert loaded["meta_key"] == f"ebr:users:{FIRST}:meta" and loaded["model_version"] == "m1"
    snapshot = read_snapshot(store.kind(USER_EMBEDDINGS), FIRST)
    with redis.Redis.from_url(redis_url) as client:
        assert client.hgetall(f"ebr:users:{FIRST}:meta")[b"model_version"] == b"m1"
        for user_id, vector in zip(snapshot.ids, snapshot.vectors, strict=True):
            stored = np.frombuffer(client.get(f"ebr:users:{FIRST}:v:{user_id}"), dtype="<f4")
            np.testing.assert_array_equal(stored, vector)
        assert not client.keys(f"ebr:users:{SECOND}:*")  # only the run's snapshot

        # A rerun of the task finds the complete snapshot and writes nothing again.
        client.set(f"ebr:users:{FIRST}:v:u0", b"marker")
        again = run_task(dag, FIRST)
        assert again["reused"] and again["count"] == N_USERS
        assert client.get(f"ebr:users:{FIRST}:v:u0") == b"marker"

        # The next run's snapshot gets keys of its own beside the first, which a router may still serve.
        assert run_task(dag, SECOND)["model_version"] == "m2"
        assert client.hgetall(f"ebr:users:{SECOND}:meta")[b"model_version"] == b"m2"
        assert client.hgetall(f"ebr:users:{FIRST}:meta")[b"count"] == str(N_USERS).encode()
        assert len(client.keys(f"ebr:users:{SECOND}:v:*")) == N_USERS


def test_with_the_embedded_store_the_task_is_skipped_with_the_reason_in_its_log(dag, store, caplog):
    from airflow.sdk.exceptions import AirflowSkipException

    with caplog.at_level(logging.INFO, logger="orchestration.user_store"):
        with pytest.raises(AirflowSkipException, match='router.user_store is "memory"'):
            run_task(dag, FIRST)
    assert f'embeddings/users/{FIRST}: router.user_store is "memory"' in caplog.text


def test_an_unreachable_redis_fails_the_task_naming_its_url(dag, store, monkeypatch):
    from orchestration.user_store import UserStoreError

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setenv("EBR_ROUTER__USER_STORE", "redis")
    monkeypatch.setenv("EBR_ROUTER__REDIS_URL", url)
    with pytest.raises(UserStoreError, match=rf"{url} \(router.redis_url\).*make redis"):
        run_task(dag, FIRST)


def test_a_snapshot_that_is_not_complete_is_refused_before_redis_is_written(dag, store, redis_url, monkeypatch):  # noqa: F811
    from artifacts import UnknownVersionError

    monkeypatch.setenv("EBR_ROUTER__USER_STORE", "redis")
    monkeypatch.setenv("EBR_ROUTER__REDIS_URL", redis_url)
    with pytest.raises(UnknownVersionError):
        run_task(dag, "20261016T000000Z-ebr_user_embeddings-scheduled__missing")
