"""What the Airflow DAGs in `dags/` run: one importable, tested function per task.

The DAG files only declare (schedules, assets, the task graph); each task builds the
configuration once (`config.load_config()`) and calls one function here with the run's
identity (`orchestration.runs.RunIdentity`). The functions take and return small plain
values (version names, URIs, counts), which is what XCom carries between tasks.

Modules: `runs` (run identity, version names, working folders), `training` (check inputs,
train, gate, publish the model), `embeddings` (plan a Beam embedding job, check its
snapshot), `indexes` (build, validate, publish an index), `rollback`, `retention`; and
`dag_support`, the parse-time side (schedules, assets, Params) that the DAG files use
(the only module that imports Airflow). Two launchers: `local_airflow` (`make airflow`)
and `demo` (`make demo`).
"""
