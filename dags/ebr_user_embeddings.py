"""ebr_user_embeddings: user tower over every user, every few hours and on a new model.

plan -> embed_users (Beam, `beam_jobs/user_embeddings.py`) -> check_snapshot, then
load_user_store (the router's Redis profile store gets the snapshot under its version,
when `router.user_store = "redis"`; skipped, with the reason in its log, with the
embedded default) and the `users` index (for similar-user queries): build -> validate ->
publish. The runner and its options come from `embed.runner` / `embed.pipeline_options`
(DirectRunner here, Dataflow by configuration, read by the plan task when it runs).
Logic: `orchestration.embeddings`, `orchestration.user_store`, `orchestration.indexes`;
the tasks shared with ebr_story_index: `orchestration.dag_tasks`.

Schedule: Airflow's `[ebr] user_embeddings_schedule` (default `0 */4 * * *`) or a new
model; `[ebr] build_user_index` (default true) leaves the index tasks out when false.
Parsing this file reads no pipeline configuration (`orchestration.dag_support`): the
load_user_store task is always there and decides when it runs.
"""

from __future__ import annotations

from airflow.sdk import task

from orchestration import dag_support as ds
from orchestration.dag_tasks import embedding_job, index_tasks

ENTITY = "users"


@task
def load_user_store(snapshot: str) -> dict:
    """The run's snapshot into the router's Redis profile store, or a skip when there is none."""
    from airflow.sdk.exceptions import AirflowSkipException

    from config import load_config
    from orchestration import user_store

    loaded = user_store.load_user_store(load_config(), snapshot)
    if not loaded["loaded"]:
        raise AirflowSkipException(loaded["detail"])
    return loaded


@ds.ebr_dag("ebr_user_embeddings", ds.cron_or_new_model(ds.dag_settings().user_embeddings_schedule), __doc__)
def ebr_user_embeddings():
    planned, checked = embedding_job(
        ENTITY, embed_task_id="embed_users", check_task_id="check_snapshot", check_outlets=[ds.user_embeddings_asset()]
    )
    checked >> load_user_store(planned["snapshot"])
    if ds.dag_settings().build_user_index:
        index_tasks(
            "users",
            planned["snapshot"],
            checked,
            outlets=[ds.index_asset("users")],
            task_ids=("build_index", "validate_index", "publish_index"),
        )


ebr_user_embeddings()
