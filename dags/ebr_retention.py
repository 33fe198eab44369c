"""ebr_retention: delete old versions of every artifact kind, on a schedule.

One mapped task per kind (models, embeddings, indexes) keeps the newest
`store.keep_versions` complete versions, whatever LATEST names and, of the story index
and the user embeddings, the pair a restarting service falls back to. Logic:
`orchestration.retention`.

Schedule: Airflow's `[ebr] retention_schedule` (default `@daily`); parsing this file
reads no pipeline configuration (`orchestration.dag_support`).
"""

from __future__ import annotations

from airflow.sdk import task

from orchestration import dag_support as ds
from orchestration.retention import RETAINED_KINDS


@ds.ebr_dag("ebr_retention", ds.cron(ds.dag_settings().retention_schedule), __doc__)
def ebr_retention():
    @task
    def retain(kind: str) -> dict:
        from config import load_config
        from orchestration.retention import retain_kind

        return retain_kind(load_config(), kind)

    retain.expand(kind=list(RETAINED_KINDS))


ebr_retention()
