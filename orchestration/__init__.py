"""What the Airflow DAGs in `dags/` run: one importable, tested function per task.

The DAG files only declare (schedules, assets, the task graph); each task builds the
configuration once (`config.load_config()`) and calls one function here with the run's
identity (`orchestration.runs.RunIdentity`). The functions take and return small plain
values (version names, URIs, counts), which is what XCom carries between tasks.

Modules: `runs` (run identity, version names, working folders), `training` (check inputs,
train, gate, publish the model), `embeddings` (plan a Beam embedding job, check its
snapshot), `indexes` (build, validate, publish an index), `rollback`, `retention`; and
the parse-time side the DAG files use, which reads no pipeline configuration:
`dag_support` (the `[ebr]` Airflow settings, run policy, schedules, assets, Params) and
`dag_tasks` (the task blocks the two embedding DAGs share). Three launchers:
`local_airflow` (`make airflow`), `celery_airflow` (`make airflow-celery`) and `demo`
(`make demo`).
"""
