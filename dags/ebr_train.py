"""ebr_train: daily two-tower training.

check_warehouse -> train_and_evaluate -> gate -> publish_model. The gate short-circuits
(publish is skipped) when the model is worse than popularity or clearly worse than the
published one; a published model is an event of the `ebr/models/two_tower` asset, which
starts ebr_user_embeddings and ebr_story_index. The logic is in `orchestration.training`.

Schedule: Airflow's `[ebr] train_schedule` (default `@daily`); parsing this file reads
no pipeline configuration (`orchestration.dag_support`): the tasks call `load_config()`.
"""

from __future__ import annotations

from airflow.sdk import task

from orchestration import dag_support as ds


@ds.ebr_dag("ebr_train", ds.cron(ds.dag_settings().train_schedule), __doc__)
def ebr_train():
    @task
    def check_warehouse() -> dict:
        from config import load_config
        from orchestration.training import check_warehouse

        return check_warehouse(load_config())

    @task
    def train_and_evaluate(warehouse: dict, **context) -> dict:  # runs after check_warehouse
        from config import load_config
        from orchestration.runs import RunIdentity
        from orchestration.training import train_model

        return train_model(load_config(), RunIdentity.from_context(context))

    @task.short_circuit
    def gate(trained: dict) -> dict | bool:
        from config import load_config
        from orchestration.training import gate_model

        decision = gate_model(load_config(), trained)
        return decision if decision["promote"] else False

    @task(outlets=[ds.model_asset()])
    def publish_model(trained: dict, decision: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from config import load_config
        from orchestration.runs import RunIdentity
        from orchestration.training import publish_trained_model

        published = publish_trained_model(load_config(), RunIdentity.from_context(context), trained, decision)
        if not published["announce"]:
            raise AirflowSkipException(published["detail"])  # no asset event: nothing new to serve
        context["outlet_events"][ds.model_asset()].extra = {"version": published["version"]}
        return published

    trained = train_and_evaluate(check_warehouse())
    publish_model(trained, gate(trained))


ebr_train()
