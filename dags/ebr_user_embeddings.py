"""ebr_user_embeddings: user tower over every user, every few hours and on a new model.

plan -> embed_users (Beam, `beam_jobs/user_embeddings.py`) -> check_snapshot, then the
`users` index (for similar-user queries): build -> validate -> publish. The runner and
its options come from `embed.runner` / `embed.pipeline_options` (DirectRunner here,
Dataflow by configuration, read by the plan task when it runs). Logic:
`orchestration.embeddings`, `orchestration.indexes`.

Schedule: Airflow's `[ebr] user_embeddings_schedule` (default `0 */4 * * *`) or a new
model; `[ebr] build_user_index` (default true) leaves the index tasks out when false.
Parsing this file reads no pipeline configuration (`orchestration.dag_support`).
"""

from __future__ import annotations

import sys

from airflow.sdk import dag, task

from orchestration import dag_support as ds
from orchestration.beam_task_logs import BeamJobOperator
from orchestration.embeddings import job_file

ENTITY = "users"


@dag(
    dag_id="ebr_user_embeddings",
    schedule=ds.cron_or_new_model(ds.dag_settings().user_embeddings_schedule),
    start_date=ds.start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=ds.default_args(),
    tags=ds.TAGS,
    doc_md=__doc__,
)
def ebr_user_embeddings():
    @task(multiple_outputs=True)
    def plan(**context) -> dict:
        from config import load_config
        from orchestration.embeddings import plan_embedding_job
        from orchestration.runs import RunIdentity

        return plan_embedding_job(load_config(), RunIdentity.from_context(context), ENTITY)

    planned = plan()
    embed = BeamJobOperator(
        task_id="embed_users",
        py_file=job_file(ENTITY),
        py_interpreter=sys.executable,
        runner=planned["runner"],
        pipeline_options=planned["pipeline_options"],
        dataflow_config=planned["dataflow_config"],
    )

    @task(outlets=[ds.user_embeddings_asset()])
    def check_snapshot(snapshot: str, model_version: str, as_of: str) -> dict:
        from config import load_config
        from orchestration.embeddings import check_snapshots

        plan = {"snapshot": snapshot, "model_version": model_version, "as_of": as_of}
        return check_snapshots(load_config(), ENTITY, plan)

    checked = check_snapshot(planned["snapshot"], planned["model_version"], planned["as_of"])
    embed >> checked

    if ds.dag_settings().build_user_index:

        @task
        def build_index(snapshot: str, **context) -> dict:
            from config import load_config
            from orchestration.indexes import build_index
            from orchestration.runs import RunIdentity

            return build_index(load_config(), RunIdentity.from_context(context), "users", snapshot)

        @task
        def validate_index(built: dict) -> dict:
            from config import load_config
            from orchestration.indexes import validate_index

            return validate_index(load_config(), built)

        @task(outlets=[ds.index_asset("users")])
        def publish_index(validated: dict, **context) -> dict:
            from config import load_config
            from orchestration.indexes import publish_index
            from orchestration.runs import RunIdentity

            return publish_index(load_config(), RunIdentity.from_context(context), validated)

        built = build_index(planned["snapshot"])
        checked >> built
        publish_index(validate_index(built))


ebr_user_embeddings()
