"""ebr_story_index: fresh story and creator indexes, every 30 minutes and on a new model.

plan -> embed_stories (Beam, `beam_jobs/story_embeddings.py`: stories young enough to
be served, and creators in the same space) -> check_snapshots, then for `stories` and
`creators` each: build -> validate -> publish. The index builder validates recall before
it writes a version; validate re-checks the stored files; publish moves LATEST.
Logic: `orchestration.embeddings`, `orchestration.indexes`.

Schedule: Airflow's `[ebr] story_index_schedule` (default `*/30 * * * *`) or a new
model; parsing this file reads no pipeline configuration (`orchestration.dag_support`).
"""

from __future__ import annotations

import sys

from airflow.sdk import TaskGroup, dag, task

from orchestration import dag_support as ds
from orchestration.beam_task_logs import BeamJobOperator
from orchestration.embeddings import job_file

ENTITY = "stories"
INDEXED = ("stories", "creators")


@dag(
    dag_id="ebr_story_index",
    schedule=ds.cron_or_new_model(ds.dag_settings().story_index_schedule),
    start_date=ds.start_date(),
    catchup=False,
    max_active_runs=1,
    default_args=ds.default_args(),
    tags=ds.TAGS,
    doc_md=__doc__,
)
def ebr_story_index():
    @task(multiple_outputs=True)
    def plan(**context) -> dict:
        from config import load_config
        from orchestration.embeddings import plan_embedding_job
        from orchestration.runs import RunIdentity

        return plan_embedding_job(load_config(), RunIdentity.from_context(context), ENTITY)

    planned = plan()
    embed = BeamJobOperator(
        task_id="embed_stories",
        py_file=job_file(ENTITY),
        py_interpreter=sys.executable,
        runner=planned["runner"],
        pipeline_options=planned["pipeline_options"],
        dataflow_config=planned["dataflow_config"],
    )

    @task
    def check_snapshots(snapshot: str, model_version: str, as_of: str) -> dict:
        from config import load_config
        from orchestration.embeddings import check_snapshots

        plan = {"snapshot": snapshot, "model_version": model_version, "as_of": as_of}
        return check_snapshots(load_config(), ENTITY, plan)

    checked = check_snapshots(planned["snapshot"], planned["model_version"], planned["as_of"])
    embed >> checked

    @task
    def build(collection: str, snapshot: str, **context) -> dict:
        from config import load_config
        from orchestration.indexes import build_index
        from orchestration.runs import RunIdentity

        return build_index(load_config(), RunIdentity.from_context(context), collection, snapshot)

    @task
    def validate(built: dict) -> dict:
        from config import load_config
        from orchestration.indexes import validate_index

        return validate_index(load_config(), built)

    for collection in INDEXED:
        with TaskGroup(group_id=f"index_{collection}"):

            @task(outlets=[ds.index_asset(collection)])
            def publish(validated: dict, **context) -> dict:
                from config import load_config
                from orchestration.indexes import publish_index
                from orchestration.runs import RunIdentity

                return publish_index(load_config(), RunIdentity.from_context(context), validated)

            built = build(collection, planned["snapshot"])
            checked >> built
            publish(validate(built))


ebr_story_index()
