"""ebr_story_index: fresh story and creator indexes, every 30 minutes and on a new model.

plan -> embed_stories (Beam, `beam_jobs/story_embeddings.py`: stories young enough to
be served, and creators in the same space) -> check_snapshots, then for `stories` and
`creators` each: build -> validate -> publish. The index builder validates recall before
it writes a version; validate checks the stored files and measures recall again on
queries the builder never saw; publish moves LATEST.
Logic: `orchestration.embeddings`, `orchestration.indexes`; the tasks, shared with
ebr_user_embeddings: `orchestration.dag_tasks`.

Schedule: Airflow's `[ebr] story_index_schedule` (default `*/30 * * * *`) or a new
model; parsing this file reads no pipeline configuration (`orchestration.dag_support`).
"""

from __future__ import annotations

from airflow.sdk import TaskGroup

from orchestration import dag_support as ds
from orchestration.dag_tasks import embedding_job, index_tasks

ENTITY = "stories"
INDEXED = ("stories", "creators")


@ds.ebr_dag("ebr_story_index", ds.cron_or_new_model(ds.dag_settings().story_index_schedule), __doc__)
def ebr_story_index():
    planned, checked = embedding_job(
        ENTITY, embed_task_id="embed_stories", check_task_id="check_snapshots", check_outlets=[]
    )
    for collection in INDEXED:
        with TaskGroup(group_id=f"index_{collection}"):
            index_tasks(
                collection,
                planned["snapshot"],
                checked,
                outlets=[ds.index_asset(collection)],
                task_ids=("build", "validate", "publish"),
            )


ebr_story_index()
